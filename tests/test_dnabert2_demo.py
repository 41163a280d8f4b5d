"""`python train.py experiment=dnabert2_demo` as docs/guide/dnabert2.md runs it: the figures it quotes, the report's
baseline, the export, and an exact resume from one of the demo's own checkpoints."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.training_runs import assert_same_weights, final_weights, metric_by_step

pytestmark = pytest.mark.slow

DEMO = ("experiment=dnabert2_demo",)


def run_demo(output_root: Path, cache_dir: Path, *overrides: str) -> str:
    """The demo in a fresh process; `cache_dir` holds the trained tokenizer (a module fixture runs before the
    per-test hermetic environment, so the cache is named here)."""
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *DEMO, f"paths.output_root={output_root}",
                             *overrides], capture_output=True, text=True, timeout=900, cwd=ROOT,
                            env={**os.environ, "DNABERT_CACHE_DIR": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The demo exactly as the guide runs it, only writing into a temporary folder (and the test's cache)."""
    output_root = tmp_path_factory.mktemp("dnabert2_demo")
    return run_demo(output_root, output_root / "cache"), output_root / "dnabert2_demo" / "default"


def guide_says(phrase: str) -> bool:
    return " ".join(phrase.split()) in " ".join((ROOT / "docs/guide/dnabert2.md").read_text().split())


def test_demo_prints_the_figures_the_guide_quotes(demo) -> None:
    """Deterministic on this torch (2.13.0, CPU): the figures, to the precision the guide prints them, are those it
    quotes, and those the experiment's config quotes. A change that moves them must update both."""
    output, run_dir = demo
    assert "Training a BPE tokenizer (vocabulary 4,096)" in output
    val_loss, probe_mcc = metric_by_step(run_dir, "val/loss"), metric_by_step(run_dir, "probe/mcc")
    assert sorted(val_loss) == [99, 199, 299]  # Lightning's CSV counts steps from 0
    first_loss, last_loss = f"{val_loss[99]:.2f}", f"{val_loss[299]:.2f}"
    first_mcc, last_mcc = f"{probe_mcc[min(probe_mcc)]:.2f}", f"{probe_mcc[max(probe_mcc)]:.2f}"
    assert (first_loss, last_loss, first_mcc, last_mcc) == ("7.06", "6.81", "0.11", "0.17"), (val_loss, probe_mcc)
    assert guide_says(f"held-out loss {first_loss} -> {last_loss} against ln V = 8.32, probe MCC {first_mcc} -> "
                      f"{last_mcc}")
    config = (ROOT / "configs/experiment/dnabert2_demo.yaml").read_text()
    assert re.search(rf"{first_loss} after 100 steps and {last_loss} after 300", " ".join(config.split("# ")))
    report = (run_dir / "report.md").read_text()
    # 4,096 tokens less the 5 specials, and the published end state a 4,096-token run is compared with
    assert f"| uniform baseline | {math.log(4091):.4f} (ln(4091)); DNABERT-2 authors' end state: loss" in report


def test_demo_exports_for_multimolecule(demo) -> None:
    _, run_dir = demo
    config = json.loads((run_dir / "hf_model" / "config.json").read_text())
    assert config["vocab_size"] == 4096 and (run_dir / "hf_model" / "tokenizer.json").is_file()


def test_resumed_from_a_demo_checkpoint_ends_the_same(demo, tmp_path: Path) -> None:
    """A second run started from the demo's step-200 checkpoint reuses the cached tokenizer and ends with the same
    weights and the same losses and learning rates from step 200 on."""
    _, full = demo
    step_200 = full / "checkpoints" / "step-0000200.ckpt"
    output = run_demo(tmp_path, full.parents[1] / "cache", "run_name=resumed", f"ckpt_path='{step_200}'",
                      "export=false")
    assert "(cached)" in output and "Training a BPE tokenizer" not in output
    assert "Training from step 200 " in output
    resumed = tmp_path / "dnabert2_demo" / "resumed"
    assert_same_weights(final_weights(resumed), final_weights(full))
    for metric in ("train/loss", "val/loss", "lr"):
        expected = {step: value for step, value in metric_by_step(full, metric).items() if step >= 200}
        assert metric_by_step(resumed, metric) == pytest.approx(expected, rel=1e-6, abs=1e-7), metric
