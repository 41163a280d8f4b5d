"""Every figure this project measures only on a GPU, from one command that keeps to a time budget.

GPU time is often a short allocation on a node without internet, so one command does the whole session: check
first that everything imports (a missing package is named, not met as a traceback ten minutes in), then run the
sections in order of value, each only if its minimum still fits the budget and each stopped at its share of it,
and write what it has. Run it through benchmarks/gpu_session.sh (benchmarks/README.md, "GPU session"):

    bash benchmarks/gpu_session.sh --install-wheels                  # on the GPU node, about 7.5 minutes
    bash benchmarks/gpu_session.sh --device cpu --preset tiny --max-tokens 64 --micro-batch 8 --steps 1 \\
        --warmup 1 --workers 0 --trial-micro-batches 2 5             # CPU rehearsal (tests/test_gpu_session.py)

Sections, in order of value (each writes one file under --out, headed by the GPU, driver and package versions):
  throughput.txt  benchmarks.train_throughput: transformers baseline, ours through Lightning, ours raw, with real
                  tokens/s, padding share and MFU on real tokens; then the raw loop once per lever, that lever off
  cuda_tests.txt  the tests that run only on a GPU (masking on CUDA, the trial's memory, inductor compile)
  estimate.txt    train.py estimate=true for the paper recipe: the trial's peak memory at micro-batch 10 and 125
  dnabert2.txt    benchmarks.dnabert2_model: MultiMolecule's DNABERT-2 against ours (real tokens/s, MFU), then ours
                  compiled; runs on what the budget leaves after the sections above. Without the multimolecule
                  package (an optional extra, not among the prepared wheels) it times ours alone
summary.md holds the preflight, each section's status and time, and the lines with figures from each file.
Exit status: 0 when the preflight passed (sections cut by the budget are reported, not errors), 3 when it failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pkgutil
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks.prepare_gpu_wheels import applies, project_requirements

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_FASTA = ROOT / "data" / "genomes" / "human_chr22_20-21M.fa"
SUMMARY = "summary.md"
CLOSING_S = 5.0  # kept back from the budget for stopping a section and writing the files
STOP_GRACE_S = 3.0  # between SIGTERM and SIGKILL of a section stopped at its deadline
CUDA_TESTS = (
    "tests/test_masking.py::test_mask_batch_on_cuda",
    "tests/test_trial.py::test_gpu_trial_memory_is_within_the_estimate_s_range",
    "tests/test_gpu_paths.py::test_cuda_flex_attention_backward_equals_sdpa",  # FlexAttention has no CPU backward
    "tests/test_dnabert2_model.py::test_cuda_levers_together_match_float32_sdpa",  # flex + compile + bf16, ALiBi
    "tests/test_alibi.py::test_cuda_flex_one_window_rows_match_float32_sdpa",  # padded rows, no (B, H, T, T) bias
)
# Imported only when used (inside functions, by pyfaidx, by Hydra's launcher or Lightning's logger), so importing
# the dnabert modules does not reach them; train.py's own (hydra, omegaconf) and pytest for the tests section.
DEFERRED_IMPORTS = ("hydra", "omegaconf", "pytest", "datasets", "pyfaidx", "Bio.bgzf", "wandb", "submitit",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher")
DNABERT2_PRESETS = {"bert_base": "base"}  # --preset names the k-mer model; DNABERT-2's presets are tiny, small, base
VERSIONS_OF = ("torch", "triton", "lightning", "transformers", "tokenizers", "torchmetrics", "numpy", "hydra-core",
               "omegaconf", "datasets", "pyfaidx", "wandb", "biopython", "submitit", "hydra-submitit-launcher")


@dataclass
class Section:
    """Commands run one after another under one deadline; `min_s`: not started with less left, `max_s`: its cap."""

    name: str
    file: str
    commands: list[list[str]]
    min_s: float
    max_s: float
    figures: tuple[str, ...] = ()  # starts of the lines that hold its figures, gathered into summary.md
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    status: str  # done, failed (exit N), stopped at the budget, skipped, not run
    seconds: float = 0.0


def sections(args: argparse.Namespace, scratch: Path) -> list[Section]:
    """The session's work in order of value, sized for one H100/H200 (bf16, BERT-base; not yet timed on one).

    Default budget 460 s: about 30 s preflight, throughput <= 270 s (each compile of BERT-base is a minute or
    so; lever rows that do not fit are cut, the finished ones kept), tests <= 80 s, estimate <= 80 s; DNABERT-2
    (<= 90 s, at least 30 s) gets what the others leave."""
    python = sys.executable
    on_gpu = args.device == "cuda"
    throughput = [python, "-m", "benchmarks.train_throughput", "--device", args.device, "--preset", args.preset,
                  "--max-tokens", str(args.max_tokens), "--micro-batch", str(args.micro_batch), "--steps",
                  str(args.steps), "--warmup", str(args.warmup), "--workers", str(args.workers),
                  "--cache-dir", str(scratch / "windows"), "--each-lever-off", "raw"]
    # DNABERT-2's step (its own model and BPE windows): MultiMolecule's model against ours, then ours compiled
    dnabert2 = [python, "-m", "benchmarks.dnabert2_model", "--device", args.device,
                "--preset", DNABERT2_PRESETS.get(args.preset, args.preset)]
    if not on_gpu:  # the rehearsal's sizes; on the GPU the script's own (128 tokens, micro-batch 256, 20 steps)
        dnabert2 += ["--max-tokens", str(args.max_tokens), "--micro-batch", str(args.micro_batch), "--steps",
                     str(args.steps), "--warmup", str(args.warmup)]
    if importlib.util.find_spec("multimolecule") is None:  # the baseline is an optional extra the wheels lack
        dnabert2 += ["--runs", "ours"]
    dnabert2_commands = [dnabert2, [*dnabert2, "--runs", "ours", "--compile"]] if on_gpu else [dnabert2]
    estimate = [python, "train.py", "-m", "experiment=dnabert6_paper", f"data.fasta={BUNDLED_FASTA}", "estimate=true",
                "estimate_trial=true", f"model={args.preset}", f"data.max_tokens={args.max_tokens}",
                "data.micro_batch_size=" + ",".join(str(size) for size in args.trial_micro_batches),
                f"paths.output_root={scratch / 'runs'}", f"data.cache_dir={scratch / 'windows'}"]
    if not on_gpu:
        estimate.append("trainer=cpu")
    return [
        Section("throughput and levers", "throughput.txt", [throughput], min_s=120, max_s=270,
                figures=("# train throughput", "run ", "(a) ", "(b) ", "(c) ", "ours (Lightning)", "lost to", "paper")),
        Section("CUDA-only tests", "cuda_tests.txt",
                [[python, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS]], min_s=30, max_s=150,
                figures=("tests/", "SKIPPED", "FAILED", "ERROR", "=")),
        Section("estimate trial (peak memory)", "estimate.txt", [estimate], min_s=30, max_s=80,
                figures=("trial ", "memory (trial)", "wall time (trial)", "memory per GPU")),
        Section("DNABERT-2 step", "dnabert2.txt", dnabert2_commands, min_s=30, max_s=90,
                figures=("DNABERT-2 ", "| run ", "| baseline", "| ours", "ours/baseline")),
    ]


def header(args: argparse.Namespace, argv: list[str]) -> str:
    """GPU, driver and package versions, read without importing anything that could be missing."""
    smi = run_quietly(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    commit = run_quietly(["git", "rev-parse", "--short", "HEAD"]) or "not a git checkout"
    if commit != "not a git checkout" and run_quietly(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " with uncommitted changes"
    versions = ", ".join(f"{name} {installed_version(name) or 'not installed'}" for name in VERSIONS_OF)
    return (f"# dnabert GPU session, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, commit {commit}\n"
            f"# gpu: {smi or 'none (nvidia-smi absent or failed)'}\n"
            f"# python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {versions}\n"
            f"# arguments: {' '.join(argv) or '(defaults)'}; budget {args.budget_s:.0f} s\n")


def run_quietly(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet_requirements(requirements: list[Requirement], needed_by: str, seen: set[str], problems: list[str]) -> None:
    """Walk the installed dependency tree, noting absent distributions and versions outside a declared range."""
    environment = default_environment()
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        version = installed_version(name)
        if version is None:
            problems.append(f"{name} (needed by {needed_by}): not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{needed_by} needs {requirement}, found {version}")
        if name in seen:
            continue
        seen.add(name)
        dependencies = [Requirement(line) for line in metadata.requires(name) or []]
        applicable = [dep for dep in dependencies if applies(dep, set(requirement.extras), environment)]
        unmet_requirements(applicable, f"{name} {version}", seen, problems)


def import_problems() -> list[str]:
    """Import every dnabert module and what the project imports only when used; name what fails."""
    import dnabert

    names = [*DEFERRED_IMPORTS, *(info.name for info in pkgutil.walk_packages(dnabert.__path__, "dnabert."))]
    problems = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # an import can fail with any error (a version mismatch, a missing CUDA library)
            problems.append(f"import {name}: {type(err).__name__}: {err}")
    return problems


def preflight() -> tuple[list[str], list[str]]:
    """(fatal problems, warnings). Fatal: a distribution pyproject.toml names is absent, or an import fails.

    Deeper in the tree (the node's own packages, what they need) an absent package or a version outside a range
    is only reported: preinstalled environments often hold such mismatches harmlessly, and the imports decide
    whether the project runs.
    """
    found: list[str] = []
    unmet_requirements(project_requirements(), "pyproject.toml", set(), found)
    fatal = [problem for problem in found if problem.endswith("(needed by pyproject.toml): not installed")]
    return fatal + import_problems(), [problem for problem in found if problem not in fatal]


def run_section(section: Section, out: Path, deadline: float, head: str) -> Outcome:
    """Run the section's commands into its file; stop them (whole process group) at `deadline`."""
    start = time.monotonic()
    with open(out / section.file, "w") as log:
        log.write(f"{head}# section: {section.name}\n")
        for command in section.commands:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **section.env},
                                       start_new_session=True)
            try:
                code = process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                stop(process)
                outcome = Outcome("stopped at the budget", time.monotonic() - start)
                log.write(f"\n# {outcome.status} after {outcome.seconds:.0f} s: the lines above are all it wrote\n")
                return outcome
            if code:
                outcome = Outcome(f"failed (exit {code})", time.monotonic() - start)
                log.write(f"\n# {outcome.status} after {outcome.seconds:.0f} s\n")
                return outcome
        outcome = Outcome("done", time.monotonic() - start)
        log.write(f"\n# {outcome.status} in {outcome.seconds:.0f} s\n")
    return outcome


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the section's process group (data workers, compile workers too), then SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def write_unrun(section: Section, out: Path, head: str, reason: str) -> None:
    (out / section.file).write_text(f"{head}# section: {section.name}\n# not run: {reason}\n")


def write_summary(out: Path, head: str, problems: list[str], warnings: list[str],
                  outcomes: dict[str, tuple[Section, Outcome]], elapsed: float) -> str:
    lines = [head, "## Preflight", "passed" if not problems else "FAILED: nothing else was run", *problems]
    if warnings:
        lines += ["", "Unmet requirements below pyproject.toml's own (not fatal: the imports decide; say so if a "
                  "figure looks off):", *warnings]
    lines += ["", "## Sections (in order of value)", "", "| section | file | status | seconds |", "|---|---|---|---:|"]
    lines += [f"| {section.name} | {section.file} | {outcome.status} | {outcome.seconds:.0f} |"
              for section, outcome in outcomes.values()]
    lines += ["", f"total {elapsed:.0f} s", "", "## Figures (the lines that hold them, from each section's file)"]
    for section, _ in outcomes.values():
        figures = [line for line in (out / section.file).read_text().splitlines() if line.startswith(section.figures)]
        lines += ["", f"### {section.file}", "```", *figures, "```"]
    text = "\n".join(lines) + "\n"
    (out / SUMMARY).write_text(text)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_results")),
                        help="folder for the files (default: $OUT if set, else gpu_results/)")
    parser.add_argument("--budget-s", type=float, default=460,
                        help="wall time of the whole command, preflight included; sections that do not fit are "
                             "skipped, a running one is stopped")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--preset", default="bert_base", help="model size: bert_base (the paper), small, tiny")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=128, help="windows per micro-batch in the throughput runs")
    parser.add_argument("--steps", type=int, default=30, help="timed micro-batches per throughput run")
    parser.add_argument("--warmup", type=int, default=6, help="untimed micro-batches first (compile, workers)")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers in the throughput runs")
    parser.add_argument("--trial-micro-batches", type=int, nargs="+", default=[10, 125],
                        help="micro-batches of the estimate trial (the paper's 10, and 125)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s - CLOSING_S
    args.out.mkdir(parents=True, exist_ok=True)
    head = header(args, sys.argv[1:] if argv is None else argv)
    print(head, flush=True)
    try:
        problems, warnings = preflight()
    except Exception:  # the preflight itself must not cost the run its files
        problems, warnings = [f"preflight crashed:\n{traceback.format_exc()}"], []
    print("preflight:", "passed" if not problems else "FAILED", *problems, sep="\n", flush=True)
    outcomes: dict[str, tuple[Section, Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="dnabert_gpu_session_") as scratch:
        for section in sections(args, Path(scratch)):
            left = deadline - time.monotonic()
            if problems:
                outcome = Outcome("not run: preflight failed")
                write_unrun(section, args.out, head, "the preflight failed (summary.md)")
            elif left < section.min_s:
                outcome = Outcome(f"skipped: {max(left, 0):.0f} s left of the budget, needs {section.min_s:.0f}")
                write_unrun(section, args.out, head, outcome.status)
            else:
                print(f"== {section.name}: up to {min(left, section.max_s):.0f} s -> {section.file}", flush=True)
                outcome = run_section(section, args.out, time.monotonic() + min(left, section.max_s), head)
            outcomes[section.name] = (section, outcome)
            print(f"== {section.name}: {outcome.status}", flush=True)
    print(write_summary(args.out, head, problems, warnings, outcomes, time.monotonic() - start))
    return 3 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
