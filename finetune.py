"""Fine-tune on labelled sequences: `python finetune.py pretrained=outputs/demo/default` (or `pretrained=none`).

Same conventions as train.py: Hydra overrides, run directories under paths.output_root, resume by rerunning, one
line and exit 2 for a user mistake. See README, "Did pretraining help?", and configs/finetune.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# importing train also sets DNABERT_ROOT and registers the config resolvers
from train import check_folder_names, check_output_override, last_override, run_reporting_user_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="finetune")
def main(cfg: DictConfig) -> None:
    from dnabert.run.finetuning import run_finetune

    run_reporting_user_errors(run_finetune, cfg)


def check_pretrained_exists(argv: list[str]) -> None:
    """Hydra creates the run directory, named after `pretrained=`, before any of our code runs: a mistyped path
    would leave an empty folder behind its error, so a missing one is refused from the command line."""
    override = last_override(argv, ("pretrained",))
    value = override[1] if override else ""
    if value and value.lower() != "none" and "${" not in value and not Path(value).exists():
        print(f"dnabert: error: pretrained={value} does not exist; give a pretraining run directory, a .ckpt, "
              "a transformers or MultiMolecule model directory, or none.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_pretrained_exists(sys.argv[1:])
    check_output_override(sys.argv[1:])
    check_folder_names(sys.argv[1:])
    main()
