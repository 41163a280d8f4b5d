"""Run report: a synthetic CSVLogger metrics file in, a readable PNG and a report.md with the CSV's numbers out."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from dnabert.errors import DnabertError
from dnabert.run.report import Baseline, read_baseline, write_report

COLUMNS = ["epoch", "step", "lr", "mask_rate", "train/acc", "train/loss", "train/ppl", "train/sequences_seen",
           "train/tokens_per_s", "train/tokens_seen", "val/acc", "val/loss", "val/ppl"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The k-mer size in a run's .hydra/config.yaml (as Hydra saves it, unresolved): where training writes it now, where
# runs made before it moved into the tokenizer's settings have it, and a config with only the data's copy.
K_LAYOUTS = {
    "tokenizer.k": "tokenizer:\n  kind: kmer\n  k: {k}\n  vocab_size: ${{vocab_size:${{tokenizer.k}}}}\n"
                   "data:\n  k: ${{oc.select:tokenizer.k,6}}\n",
    "top-level k (older runs)": "k: {k}\ntokenizer:\n  kind: kmer\n  vocab_size: ${{vocab_size:${{k}}}}\n"
                                "data:\n  k: ${{k}}\n",
    "data.k only": "data:\n  k: {k}\n",
}


def write_run(run_dir: Path, train_losses: list[float], val_every: int = 10, k: int | None = 6,
              k_layout: str = "tokenizer.k") -> Path:
    """A run directory laid out as training writes it: sparse CSVLogger rows (train rows, then val rows)."""
    rows = []
    for step, loss in enumerate(train_losses):
        rows.append({"epoch": 0, "step": step, "lr": 4e-4 * min(1.0, (step + 1) / 10), "mask_rate": 0.15,
                     "train/loss": loss, "train/ppl": math.exp(loss), "train/acc": 1 / (1 + loss),
                     "train/tokens_seen": 384 * 20 * (step + 1), "train/sequences_seen": 20 * (step + 1),
                     "train/tokens_per_s": 1e5})
        if (step + 1) % val_every == 0:
            val = loss + 0.1
            rows.append({"epoch": 0, "step": step, "val/loss": val, "val/ppl": math.exp(val),
                         "val/acc": 1 / (1 + val)})
    csv_path = run_dir / "csv" / "metrics.csv"
    csv_path.parent.mkdir(parents=True)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if k is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n" + K_LAYOUTS[k_layout].format(k=k))
    return csv_path


def report_table(markdown: str) -> dict[str, str]:
    return {cells[1].strip(): cells[2].strip() for cells in (line.split("|") for line in markdown.splitlines())
            if len(cells) == 4}


def test_png_and_numbers_match_the_csv(tmp_path):
    uniform = 6 * math.log(4)
    losses = list(np.linspace(uniform, 1.5, 40))
    write_run(tmp_path, losses)
    png, markdown_path = write_report(tmp_path)
    assert png == tmp_path / "plots" / "curves.png"
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and 30_000 < len(data) < 2_000_000
    table = report_table(markdown_path.read_text())
    val_losses = [losses[step] + 0.1 for step in (9, 19, 29, 39)]
    assert table["optimiser steps"] == "40"
    assert table["tokens seen"] == f"{384 * 20 * 40:,}"
    assert table["sequences seen"] == "800"
    assert float(table["first val loss"]) == pytest.approx(val_losses[0], abs=1e-4)
    assert float(table["last val loss"]) == pytest.approx(val_losses[-1], abs=1e-4)
    assert table["best val loss"] == f"{val_losses[-1]:.4f} at step 39"
    assert float(table["final train loss"]) == pytest.approx(losses[-1], abs=1e-4)
    assert float(table["last val loss / uniform baseline"]) == pytest.approx(val_losses[-1] / uniform, abs=1e-3)
    assert "Verdict: healthy" in markdown_path.read_text()


@pytest.mark.parametrize(
    ("losses", "verdict"),
    [
        ([8.3, 8.3, 8.29, 8.3, 8.31, 8.3, 8.3, 8.3, 8.29, 8.3], "not learning"),
        ([8.3, 8.28, 8.25, 8.22, 8.2, 8.17, 8.15, 8.12, 8.1, 8.08], "early"),  # a real demo run at step 90
        ([8.3, 7.0, 6.0, 5.5, 5.0, 4.8, 4.6, 4.5, 4.4, 4.3], "learning, not there yet"),
        ([8.3, 6.0, 4.0, 3.0, float("nan"), float("nan"), 3.0, 3.0, 3.0, 3.0], "diverged"),
        ([8.3, 3.0, 2.0, 1.5, 1.4, 1.4, 1.4, 1.4, 1.4, 1.4], "healthy"),
    ],
)
def test_verdict_rules(tmp_path, losses, verdict):
    write_run(tmp_path, losses, val_every=1)
    markdown = write_report(tmp_path)[1].read_text()
    assert f"Verdict: {verdict}" in markdown


def test_diverged_names_the_step(tmp_path):
    write_run(tmp_path, [8.3, 6.0, float("nan"), 5.0], val_every=1)
    assert "at step 2" in write_report(tmp_path)[1].read_text()


def test_without_k_there_is_no_baseline(tmp_path):
    write_run(tmp_path, list(np.linspace(8.3, 4.0, 20)), k=None)
    markdown = write_report(tmp_path)[1].read_text()
    assert "unknown (no k" in markdown and "k unknown" in markdown


@pytest.mark.parametrize("layout", K_LAYOUTS)
def test_baseline_reads_k_where_runs_of_any_version_recorded_it(tmp_path, layout):
    """k=4, not the default 6: the uniform baseline is ln(4^4) whichever key the run's config holds it under."""
    write_run(tmp_path, list(np.linspace(5.5, 3.0, 20)), k=4, k_layout=layout)
    assert read_baseline(tmp_path) == (4, Baseline.for_kmers(4))
    assert "ln(4^4)" in write_report(tmp_path)[1].read_text()


def test_metrics_found_under_other_logger_layouts(tmp_path):
    csv_path = write_run(tmp_path, list(np.linspace(8.3, 3.0, 20)))
    moved = tmp_path / "logs" / "version_0" / "metrics.csv"
    moved.parent.mkdir(parents=True)
    csv_path.rename(moved)
    assert "optimiser steps | 20" in write_report(tmp_path)[1].read_text()


def test_run_without_metrics_names_the_file(tmp_path):
    with pytest.raises(DnabertError, match=r"csv/metrics\.csv"):
        write_report(tmp_path)
    with pytest.raises(DnabertError, match="does not exist"):
        write_report(tmp_path / "typo")


def test_reads_what_lightning_csv_logger_writes(tmp_path):
    """The real writer, not a hand-made CSV: sparse rows, column order and number formatting as Lightning does."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(30):
        loss = 8.3 * math.exp(-step / 8) + 1.4
        logger.log_metrics({"train/loss": loss, "lr": 1e-4, "mask_rate": 0.15,
                            "train/tokens_seen": 100.0 * (step + 1)}, step=step)
        if step % 10 == 9:
            logger.log_metrics({"val/loss": loss + 0.05, "val/acc": 0.3}, step=step)
    logger.save()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("k: 6\n")
    png, markdown_path = write_report(tmp_path)
    table = report_table(markdown_path.read_text())
    assert table["optimiser steps"] == "30" and table["tokens seen"] == "3,000"
    assert float(table["first val loss"]) == pytest.approx(8.3 * math.exp(-9 / 8) + 1.45, abs=1e-4)
    assert png.read_bytes()[:8] == PNG_SIGNATURE
