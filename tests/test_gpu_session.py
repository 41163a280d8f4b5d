"""The GPU session command, rehearsed on the CPU so it cannot rot between GPU runs: every file, the budget, the
preflight; and the wheel preparation's offline parts (the node's package list, the dependency walk for the node's
Python, the stand-in wheels)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmarks import gpu_session, prepare_gpu_wheels
from benchmarks.gpu_session import Section, run_section

ROOT = Path(__file__).resolve().parents[1]
FILES = {"summary.md", "throughput.txt", "cuda_tests.txt", "estimate.txt", "dnabert2.txt"}
REHEARSAL = ["--device", "cpu", "--preset", "tiny", "--max-tokens", "64", "--micro-batch", "8", "--steps", "1",
             "--warmup", "1", "--workers", "0", "--trial-micro-batches", "2", "5"]


def check_every_file_is_headed(out: Path) -> dict[str, str]:
    texts = {path.name: path.read_text() for path in out.iterdir()}
    assert set(texts) == FILES
    for name, text in texts.items():
        lines = text.splitlines()
        assert lines[0].startswith("# dnabert GPU session"), name
        assert lines[1].startswith("# gpu: ") and "torch 2." in lines[2] and "hydra-core 1." in lines[2], name
    return texts


def test_every_cuda_only_test_runs_in_the_gpu_session():
    """A test that skips without CUDA only ever runs in the GPU session, so one missing from its list never runs."""
    skipped_without_cuda = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if line.startswith("@pytest.mark.skipif(not torch.cuda.is_available()"):
                following = next(text for text in lines[index + 1:] if text.startswith("def "))
                name = following.removeprefix("def ").split("(")[0]
                skipped_without_cuda.add(f"tests/{path.name}::{name}")
    assert skipped_without_cuda == set(gpu_session.CUDA_TESTS)


def test_the_shell_command_hands_its_arguments_to_the_driver():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "--budget-s" in result.stdout and "--trial-micro-batches" in result.stdout


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_section(tmp_path: Path):
    """The device command's driver with a tiny model: each section's subprocesses run for real, on the CPU."""
    assert gpu_session.main([*REHEARSAL, "--out", str(tmp_path), "--budget-s", "900"]) == 0
    texts = check_every_file_is_headed(tmp_path)
    summary = texts["summary.md"]
    assert "## Preflight\npassed" in summary
    assert summary.count("| done |") == 4
    throughput = texts["throughput.txt"]
    for row in ("(a) baseline", "(b) ours, Lightning", "(c) ours, raw", "(c) pack off (", "(c) masked-head off ("):
        assert row in throughput
    assert "(c) fused off" not in throughput and "(c) compile off" not in throughput  # not levers on a CPU
    assert "ours (Lightning) / baseline, real tokens/s:" in throughput
    skipped = f"{len(gpu_session.CUDA_TESTS)} skipped"
    assert skipped in texts["cuda_tests.txt"]  # every named GPU test exists (a stale name fails the section)
    figures = summary.split("## Figures")[1]  # summary.md alone is enough to fill BENCHMARKS.md
    for size in (2, 5):
        assert f"4 optimiser steps of {size} x 64-token rows on CPU" in texts["estimate.txt"]
        assert f"4 optimiser steps of {size} x 64-token rows on CPU" in figures
    assert "(c) ours, raw torch loop" in figures and "(c) pack off (" in figures and skipped in figures
    assert "DNABERT-2 tiny (vocab 4096), 8 windows of <= 64 tokens" in texts["dnabert2.txt"]
    assert "ours/baseline:" in texts["dnabert2.txt"] and "ours/baseline:" in figures.split("DNABERT-2 tiny")[1]


def test_without_multimolecule_the_dnabert2_section_times_ours_alone(tmp_path: Path, monkeypatch):
    """The baseline is an optional extra the prepared wheels lack: its absence must not fail the section."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "multimolecule" else find_spec(name, *rest))
    args = gpu_session.parse_args([*REHEARSAL, "--out", str(tmp_path)])
    (section,) = [section for section in gpu_session.sections(args, tmp_path) if section.file == "dnabert2.txt"]
    assert [command[command.index("--runs") + 1:] for command in section.commands] == [["ours"]]


def test_a_budget_too_small_skips_every_section_and_still_writes_every_file(tmp_path: Path):
    assert gpu_session.main([*REHEARSAL, "--out", str(tmp_path), "--budget-s", "0"]) == 0
    texts = check_every_file_is_headed(tmp_path)
    assert "## Preflight\npassed" in texts["summary.md"]
    assert texts["summary.md"].count("| skipped: 0 s left of the budget, needs") == 4
    for name in FILES - {"summary.md"}:
        assert "# not run: skipped: 0 s left of the budget" in texts[name]


def test_a_section_past_its_deadline_is_stopped_even_if_it_ignores_sigterm(tmp_path: Path):
    pid_file = tmp_path / "pid"
    stubborn = (f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    section = Section("stubborn", "stubborn.txt", [[sys.executable, "-c", stubborn],
                                                   [sys.executable, "-c", "print('second command')"]],
                      min_s=0, max_s=2)
    outcome = run_section(section, tmp_path, time.monotonic() + 2, "# head\n")
    assert outcome.status == "stopped at the budget"
    text = (tmp_path / "stubborn.txt").read_text()
    assert text.startswith("# head\n# section: stubborn\n") and "# stopped at the budget after" in text
    assert "second command" not in text
    if pid_file.exists():  # it started before the deadline (it does unless the machine is very busy): it is gone
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


def test_a_failed_preflight_names_the_missing_package_and_runs_nothing(tmp_path: Path, monkeypatch):
    requirements = prepare_gpu_wheels.project_requirements()
    monkeypatch.setattr(gpu_session, "project_requirements",
                        lambda: [*requirements, Requirement("dnabert-absent-package>=1")])
    monkeypatch.setattr(gpu_session, "DEFERRED_IMPORTS", (*gpu_session.DEFERRED_IMPORTS, "dnabert_absent_module"))
    assert gpu_session.main([*REHEARSAL, "--out", str(tmp_path), "--budget-s", "900"]) == 3
    texts = check_every_file_is_headed(tmp_path)
    assert "FAILED: nothing else was run" in texts["summary.md"]
    assert "dnabert-absent-package (needed by pyproject.toml): not installed" in texts["summary.md"]
    assert "import dnabert_absent_module: ModuleNotFoundError" in texts["summary.md"]
    assert all("# not run: the preflight failed" in texts[name] for name in FILES - {"summary.md"})


def test_the_dependency_walk_stops_at_the_node_and_follows_extras_and_the_node_s_python():
    resolved = {
        "wanted": {"version": "1.0", "requires_dist": ["on-node>=2", "helper[fast]", 'tomli; python_version < "3.11"',
                                                        'docs-tool; extra == "docs"']},
        "helper": {"version": "0.5", "requires_dist": ['speedup; extra == "fast"']},
        "speedup": {"version": "3.0", "requires_dist": []},
        "on-node": {"version": "2.1", "requires_dist": ["node-only-dep"]},
        "tomli": {"version": "2.0", "requires_dist": []},
    }
    node = {"on-node": "2.1"}
    roots = [Requirement("wanted==1.0")]
    assert prepare_gpu_wheels.missing_packages(roots, resolved, node) == {  # the example node: Python 3.12
        "wanted": "1.0", "helper": "0.5", "speedup": "3.0"}  # no tomli, no docs extra
    older = prepare_gpu_wheels.Target(python="3.10", arch="aarch64")
    assert prepare_gpu_wheels.missing_packages(roots, resolved, node, older) == {
        "wanted": "1.0", "helper": "0.5", "speedup": "3.0", "tomli": "2.0"}


def test_the_node_s_pip_list_is_read_as_its_packages(tmp_path: Path):
    """`pip list --format=freeze` from the node, with the odd lines pip freeze and people add."""
    listing = tmp_path / "node_packages.txt"
    listing.write_text("# saved on the node\nTorch==2.11.0\nlightning_utilities==0.15.3\nmy-tool @ file:///src/x\n"
                       "-e git+https://example.org/repo#egg=dev\nbare_name\n\n")
    assert prepare_gpu_wheels.node_packages(listing) == {
        "torch": "2.11.0", "lightning-utilities": "0.15.3", "my-tool": None, "bare-name": None}
    example = prepare_gpu_wheels.node_packages()  # the default list stays a usable example
    assert example["torch"] and "hydra-core" not in example


def test_the_target_gives_pip_the_node_s_python_and_platform():
    args = prepare_gpu_wheels.Target(python="3.11.9", arch="aarch64").pip_args()
    assert args[args.index("--python-version") + 1] == "3.11" and "cp311" in args
    platforms = {args[i + 1] for i, arg in enumerate(args) if arg == "--platform"}
    assert {"manylinux_2_17_aarch64", "manylinux2014_aarch64", "any"} <= platforms
    assert not any("x86_64" in platform for platform in platforms)
    markers = prepare_gpu_wheels.Target(python="3.11", arch="aarch64").markers()
    assert (markers["python_full_version"], markers["platform_machine"]) == ("3.11.0", "aarch64")


def test_only_the_wheel_the_node_takes_is_kept(tmp_path: Path):
    """A stale version, or a second wheel of a package (left by a run for another node), would stop the install."""
    names = {
        "biopython-1.88-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl": True,
        "biopython-1.88-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl": False,
        "pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl": True,
        "pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl": False,
        "multiprocess-0.70.19-py311-none-any.whl": False,  # installable on 3.12, but pip prefers py312
        "multiprocess-0.70.19-py312-none-any.whl": True,
        "wandb-0.31.0-py3-none-manylinux_2_28_x86_64.whl": True,
        "omegaconf-2.3.1-py3-none-any.whl": True,
        "omegaconf-2.3.0-py3-none-any.whl": False,  # stale version
        "tomli-2.0.0-py3-none-any.whl": False,  # not wanted
    }
    for name in names:
        (tmp_path / name).touch()
    wanted = {"biopython": "1.88", "pydantic-core": "2.50.5", "multiprocess": "0.70.19", "wandb": "0.31.0",
              "omegaconf": "2.3.1"}
    surplus = prepare_gpu_wheels.surplus_wheels(tmp_path, wanted, prepare_gpu_wheels.EXAMPLE_NODE)
    assert {path.name for path in surplus} == {name for name, kept in names.items() if not kept}
    older = prepare_gpu_wheels.Target(python="3.11")
    kept = set(names) - {path.name for path in prepare_gpu_wheels.surplus_wheels(tmp_path, wanted, older)}
    assert {name.split("-")[0] + "-" + name.split("-")[2] for name in kept if "-cp" in name or "-py31" in name} == {
        "biopython-cp311", "multiprocess-py311"}  # pydantic_core has no cp311 wheel here: removed


def test_node_stand_ins_satisfy_pip_offline(tmp_path: Path):
    """The completeness proof rests on pip taking a stand-in wheel for the installed package."""
    prepare_gpu_wheels.stand_in_wheel(tmp_path, "node-package", "2.11.0")
    assert {"node-package": "2.11.0"}.items() <= {
        name: item["version"] for name, item in prepare_gpu_wheels.dry_run(
            ["node-package>=2.4"], "--no-index", "--isolated", "--find-links", str(tmp_path)).items()}.items()
    with pytest.raises(SystemExit, match="node-package>=3"):
        prepare_gpu_wheels.dry_run(["node-package>=3"], "--no-index", "--isolated", "--find-links", str(tmp_path))
