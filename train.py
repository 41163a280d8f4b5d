"""The one entry point: `python train.py` runs the demo; `python train.py experiment=dnabert6_paper ...` the paper.

Any setting can be overridden on the command line (Hydra); see docs/guide/configuration.md and configs/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dnabert.tools.cli import check_before_hydra, prepare_entry_point, run_reporting_user_errors

ROOT = Path(__file__).resolve().parent
prepare_entry_point(ROOT)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    # Imported once the settings passed: Lightning's import takes seconds, which a bad setting or --help skips.
    from dnabert.run.training import run

    run_reporting_user_errors(run, cfg)


if __name__ == "__main__":
    check_before_hydra(ROOT / "configs", "train", sys.argv[1:])
    main()
