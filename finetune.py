"""Fine-tune on labelled sequences: `python finetune.py pretrained=outputs/demo/default` (or `pretrained=none`).

Same conventions as train.py: Hydra overrides, run directories under paths.output_root, resume by rerunning, one
line and exit 2 for a user mistake. See docs/guide/finetuning.md, docs/guide/healthy-runs.md ("Did pretraining
help?") and configs/finetune.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dnabert.tools.cli import check_before_hydra, prepare_entry_point, run_reporting_user_errors

ROOT = Path(__file__).resolve().parent
prepare_entry_point(ROOT)


@hydra.main(version_base="1.3", config_path="configs", config_name="finetune")
def main(cfg: DictConfig) -> None:
    # Imported once the settings passed: Lightning's import takes seconds, which a bad setting or --help skips.
    from dnabert.run.finetuning import run_finetune

    run_reporting_user_errors(run_finetune, cfg)


if __name__ == "__main__":
    check_before_hydra(ROOT / "configs", "finetune", sys.argv[1:])
    main()
