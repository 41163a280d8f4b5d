"""Fine-tune one backbone on a whole benchmark suite: `python suite.py suite=gue suite.data_dir=<GUE folder>
pretrained=<backbone>` (GUE, Genomic Benchmarks, the NT tasks, or the bundled `suite=promoter_demo`).

Every (dataset, seed) is one finetune.py run with the authors' preset (`recipe=dnabert2|dnabert`); rerunning
skips finished pairs; `-m hydra/launcher=slurm 'pair=range(0,N)'` runs one SLURM job per pair. The result card
(results.json, results.md, results.png) puts mean +- sd over seeds beside the published scores. See
docs/guide/benchmark-suites.md and configs/suite.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dnabert.tools.cli import check_before_hydra, prepare_entry_point, run_reporting_user_errors

ROOT = Path(__file__).resolve().parent
prepare_entry_point(ROOT)


@hydra.main(version_base="1.3", config_path="configs", config_name="suite")
def main(cfg: DictConfig) -> None:
    # Imported once the settings passed: Lightning's import takes seconds, which a bad setting or --help skips.
    from dnabert.run.suite import run_suite

    run_reporting_user_errors(run_suite, cfg)


if __name__ == "__main__":
    check_before_hydra(ROOT / "configs", "suite", sys.argv[1:])
    main()
