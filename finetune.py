"""Fine-tune on labelled sequences: `python finetune.py pretrained=outputs/demo/default` (or `pretrained=none`).

Same conventions as train.py: Hydra overrides, run directories under paths.output_root, resume by rerunning, one
line and exit 2 for a user mistake. See README, "Did pretraining help?", and configs/finetune.yaml.
"""

from __future__ import annotations

import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from train import check_folder_names, check_output_override, user_error  # also sets DNABERT_ROOT, the resolvers


@hydra.main(version_base="1.3", config_path="configs", config_name="finetune")
def main(cfg: DictConfig) -> None:
    from dnabert.errors import DnabertError, user_message
    from dnabert.run.finetuning import run_finetune

    try:
        run_finetune(cfg)
    except (DnabertError, OmegaConfBaseException, InstantiationException) as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"dnabert: error: {user_message(problem)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_output_override(sys.argv[1:])
    check_folder_names(sys.argv[1:])
    main()
