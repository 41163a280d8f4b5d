"""Fine-tune on labelled sequences: `python finetune.py pretrained=outputs/demo/default` (or `pretrained=none`).

Same conventions as train.py: Hydra overrides, run directories under paths.output_root, resume by rerunning, one
line and exit 2 for a user mistake. See docs/guide/finetuning.md, docs/guide/healthy-runs.md ("Did pretraining
help?") and configs/finetune.yaml.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

# importing train also sets DNABERT_ROOT and registers the config resolvers
from train import check_folder_names, check_output_override, run_reporting_user_errors, validate_before_hydra


@hydra.main(version_base="1.3", config_path="configs", config_name="finetune")
def main(cfg: DictConfig) -> None:
    from dnabert.run.finetuning import run_finetune

    run_reporting_user_errors(run_finetune, cfg)


if __name__ == "__main__":
    validate_before_hydra("finetune", sys.argv[1:])
    check_output_override(sys.argv[1:])
    check_folder_names(sys.argv[1:])
    main()
