"""A family defined outside dnabert (tests/third_family.py), named on the command line as `model.family=
tests.third_family:FAMILY`, goes through pretraining, exact resume, the probe, fine-tuning, export and the estimate
with no change to dnabert/: the ModelFamily object is all the package asks of a family."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dnabert.models import get_family
from dnabert.models.components import count_parameters
from dnabert.models.interop import plain_state_dict, prefix_renamed
from dnabert.run.checkpoints import write_logged_through
from dnabert.run.saved_models import CLASSIFIER_RENAMES, load_checkpoint, load_classifier_checkpoint
from tests.conftest import ROOT
from tests.third_family import FAMILY, WEIGHTS, ConvForMaskedLM
from tests.training_runs import TINY, TRAIN_PY, assert_same_weights, final_weights, metric_by_step, run_dir, train

THIRD = f"model.family={FAMILY.name}"
PROM_CORE = ROOT / "data" / "tasks" / "prom_core.tsv"


def small_task(folder: Path, rows: int) -> Path:
    """The first `rows` sequences of each class of the bundled promoter task."""
    lines = PROM_CORE.read_text().splitlines()
    by_label: dict[str, list[str]] = {}
    for line in lines[1:]:
        by_label.setdefault(line.rsplit("\t", 1)[1], []).append(line)
    path = folder / "task.tsv"
    path.write_text("\n".join([lines[0], *(row for rows_ in by_label.values() for row in rows_[:rows // 2])]) + "\n")
    return path


def run_command(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(output root, run directory, output) of 12 steps with the probe on and the end-of-run export."""
    output_root = tmp_path_factory.mktemp("third")
    probe_task = small_task(output_root, 40)
    output = train(output_root, "full", THIRD, "export=true", f"probe.path={probe_task}")
    return output_root, run_dir(output_root, "full"), output


def test_pretraining_logs_the_family_and_the_probe(pretrained: tuple[Path, Path, str]) -> None:
    _, directory, output = pretrained
    assert "model: gated convolution 1 layers, hidden 32" in output
    probe = metric_by_step(directory, "probe/mcc")
    assert len(probe) == 2  # one per validation: after steps 6 and 12
    assert all(-1.0 <= value <= 1.0 for value in probe.values())


def test_the_end_of_run_export_is_the_family_s_and_imports_back(pretrained: tuple[Path, Path, str]) -> None:
    _, directory, _ = pretrained
    model, k, _ = load_checkpoint(directory)
    assert isinstance(model, ConvForMaskedLM) and k == 6
    assert json.loads((directory / "hf_model" / "config.json").read_text())["model_type"] == "conv_dna"
    imported = FAMILY.import_directory(directory / "hf_model", k)
    assert_same_weights(plain_state_dict(imported), plain_state_dict(model), atol=0)
    cli_export = directory.parent / "cli_export"
    run_command("-m", "dnabert.tools.export", str(directory), str(cli_export))
    assert (cli_export / WEIGHTS).read_bytes() == (directory / "hf_model" / WEIGHTS).read_bytes()


def test_a_killed_run_resumes_to_the_same_weights(pretrained: tuple[Path, Path, str]) -> None:
    """The run directory as it was at step 8 (later checkpoints removed), started again, ends where the
    uninterrupted run ended."""
    output_root, directory, _ = pretrained
    resumed = run_dir(output_root, "resumed")
    shutil.copytree(directory, resumed, ignore=shutil.ignore_patterns("hf_model", "run.lock"))
    for name in ("last.ckpt", "step-0000012.ckpt"):
        (resumed / "checkpoints" / name).unlink()
    write_logged_through(resumed / "checkpoints", 8)
    output = train(output_root, "resumed", THIRD)
    assert "Resuming from" in output and "step-0000008.ckpt" in output
    assert_same_weights(final_weights(resumed), final_weights(directory))


def test_fine_tuning_exports_the_family_s_classifier(pretrained: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, directory, _ = pretrained
    task = small_task(tmp_path, 64)
    run_command(str(ROOT / "finetune.py"), f"pretrained={directory}", "task=file", f"task.train={task}",
                "task.dev_fraction=0.25", "max_epochs=1", "batch_size=16", f"paths.output_root={tmp_path}",
                "run_name=third")
    results = json.loads((tmp_path / "finetune_custom" / "third" / "results.json").read_text())
    assert results["family"] == FAMILY.name and results["k"] == 6
    assert 0.0 <= results["mean"]["dev"]["accuracy"] <= 1.0
    seed_dir = tmp_path / "finetune_custom" / "third" / "seed_42"
    classifier, backbone, labels = load_classifier_checkpoint(next((seed_dir / "checkpoints").glob("best-*.ckpt")))
    exported = load_file(seed_dir / "hf_model" / WEIGHTS)
    # The classifier's own parameters under transformers' names (pooler.* -> bert.pooler.*), as every family gets them
    expected = {prefix_renamed(key, CLASSIFIER_RENAMES): value for key, value in plain_state_dict(classifier).items()}
    assert any(key.startswith("bert.pooler.") for key in exported)
    assert_same_weights(exported, expected, atol=0)
    assert json.loads((seed_dir / "hf_model" / "config.json").read_text())["num_labels"] == labels.num_outputs == 2
    assert "ConvDNA k=6, fine-tuned" in (seed_dir / "hf_model" / "README.md").read_text()


def test_the_estimate_counts_the_family_s_parameters(tmp_path: Path) -> None:
    output = run_command(str(TRAIN_PY), *TINY, THIRD, "estimate=true", f"paths.output_root={tmp_path}")
    estimated = int(re.search(r"parameters\s+([\d,]+)", output).group(1).replace(",", ""))
    config = {"vocab_size": 4**6 + 5, "hidden_size": 32, "intermediate_size": 64}
    assert estimated == count_parameters(get_family(FAMILY.name).build(config)) == count_parameters(
        ConvForMaskedLM(FAMILY.config_class().from_dict(config)))
