"""The README's main job: `python train.py` on the bundled genome, end to end, as a user runs it."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForMaskedLM, BertTokenizer

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def metric_series(metrics_csv: Path, name: str) -> list[tuple[int, float]]:
    with open(metrics_csv) as handle:
        return [(int(row["step"]), float(row[name])) for row in csv.DictReader(handle) if row.get(name)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """The demo exactly as the README runs it, only writing into a temporary folder."""
    output_root = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"paths.output_root={output_root}"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    return result, output_root / "demo" / "default"


def test_demo_writes_everything_it_promises(demo_run) -> None:
    result, run_dir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    for relative in (".hydra/config.yaml", "train.log", "csv/metrics.csv", "checkpoints/last.ckpt",
                     "plots/curves.png", "report.md", "hf_model/config.json", "hf_model/vocab.txt"):
        assert (run_dir / relative).is_file(), relative
    assert str(run_dir) in result.stdout + result.stderr  # it says where everything went
    assert "global batch 32 = micro 16 x accumulation 2 x devices 1 x nodes 1" in result.stdout + result.stderr
    assert "(k=6): 1,008,389 parameters; packed rows off" in result.stdout + result.stderr
    assert "FLOPs" not in result.stdout + result.stderr  # not Lightning's layer table with its column of zeros


def test_progress_written_to_a_file_is_plain_lines(demo_run) -> None:
    """Output to a pipe or a SLURM log gets whole lines, not a tqdm bar redrawn with carriage returns."""
    result, _ = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout + result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert progress[0].startswith("step 1/800 (0%) | train/loss=")
    assert progress[-1].startswith("step 800/800 (100%) | ") and "val/loss=" in progress[-1]
    assert progress[-1].endswith("0:00:00 left")


def test_demo_held_out_loss_falls_well_below_the_uniform_baseline(demo_run) -> None:
    result, run_dir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    val_loss = metric_series(run_dir / "csv" / "metrics.csv", "val/loss")
    # Lightning's CSV counts steps from 0: the evaluation after 100 updates is logged at step 99.
    assert [step for step, _ in val_loss] == list(range(99, 800, 100))
    uniform = 6 * math.log(4)
    assert val_loss[-1][1] < 0.9 * uniform, val_loss
    assert val_loss[-1][1] < val_loss[0][1] - 0.5, val_loss
    rates = dict(metric_series(run_dir / "csv" / "metrics.csv", "mask_rate"))
    assert rates[max(s for s in rates if s < 700)] == pytest.approx(0.15)
    assert rates[max(rates)] == pytest.approx(0.20)
    # Sequences seen are summed exactly: every optimiser step consumes one global batch of 32.
    for step, seen in metric_series(run_dir / "csv" / "metrics.csv", "train/sequences_seen"):
        assert seen == (step + 1) * 32


def guide_says(phrase: str) -> bool:
    """Whether the user guide's page on healthy runs holds the phrase, line breaks and spacing aside."""
    return " ".join(phrase.split()) in " ".join((ROOT / "docs/guide/healthy-runs.md").read_text().split())


def test_demo_prints_the_figures_the_guide_quotes(demo_run) -> None:
    """The demo is deterministic on this torch (2.13.0, CPU): its figures, to the precision the guide prints them,
    are those docs/guide/healthy-runs.md quotes. A change that moves them must update both."""
    result, run_dir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = run_dir / "csv" / "metrics.csv"
    val_loss, val_acc, probe_mcc = (metric_series(metrics, name) for name in ("val/loss", "val/acc", "probe/mcc"))
    first_loss, last_loss = f"{val_loss[0][1]:.2f}", f"{val_loss[-1][1]:.2f}"
    assert (first_loss, last_loss) == ("8.02", "7.30"), val_loss
    assert f"{val_loss[-1][1] / (6 * math.log(4)):.2f}" == "0.88"
    assert f"{100 * val_acc[-1][1]:.0f}" == "11", val_acc
    assert (f"{probe_mcc[0][1]:.2f}", f"{probe_mcc[-1][1]:.2f}") == ("0.30", "0.37"), probe_mcc
    assert f"{metric_series(metrics, 'probe/auroc')[-1][1]:.2f}" == "0.76"
    assert guide_says(f"The held-out loss falls from {first_loss} after 100 steps to {last_loss} after 800 (0.88")
    assert guide_says("Accuracy on masked tokens rises to about 11%")
    assert guide_says("rises from MCC 0.30 to 0.37")
    assert guide_says("The demo's frozen-embedding probe reaches AUROC 0.76.")
    verdict = "learning, not there yet: the loss is falling but still above ln(4^k)/2"
    assert verdict in (run_dir / "report.md").read_text() and guide_says(f'For this run: "{verdict}"')
    assert re.search(r"falls from ln\(4\^6\)=8\.32 to 7\.30 ", (ROOT / "configs/experiment/demo.yaml").read_text())


def test_demo_export_loads_in_transformers(demo_run) -> None:
    result, run_dir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    model = BertForMaskedLM.from_pretrained(run_dir / "hf_model").eval()
    tokenizer = BertTokenizer.from_pretrained(run_dir / "hf_model")
    encoded = tokenizer("ATCGGA TCGGAT CGGATC", return_tensors="pt")
    assert encoded["input_ids"][0, 1].item() == 5 + int("012330", 4)  # ATCGGA in ATCG digit order
    with torch.no_grad():
        assert model(**encoded).logits.shape == (1, 5, 4101)


def test_same_command_again_resumes_instead_of_restarting(demo_run) -> None:
    result, run_dir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    again = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"paths.output_root={run_dir.parents[1]}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stdout + again.stderr
    assert "last.ckpt" in again.stdout + again.stderr
