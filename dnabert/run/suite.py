"""`python suite.py`: one backbone fine-tuned on every dataset of a benchmark suite, several seeds each.

Each (dataset, seed) is one job: `dnabert.run.finetuning.run_finetune` on a config made from the suite's (the
dataset as the task, the recipe's preset, that one seed) in its own run directory
`<suite_dir>/<dataset>/seed_<n>/`. A job that ends with a collapsed fine-tune (dnabert.run.suite_stats) is rerun
with seed n + 1000, n + 2000, ... up to `max_retries` times; what happened is `<suite_dir>/<dataset>/pair_<n>.json`.

Rerunning the same command skips every pair whose record exists; an interrupted one continues from its last
checkpoint (run_finetune resumes a seed from `checkpoints/last.ckpt`). On one node the pairs run one after
another and the result card is written at the end; on SLURM, `-m hydra/launcher=slurm 'pair=range(0,N)'` makes
one job per pair (Hydra's submitit launcher) and the card is written when the sweep returns
(`SummariseAfterSweep`), or any time later by `python -m dnabert.tools.suite_summary <suite_dir>`, from the pairs
that are finished.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from dnabert.data.suites import dataset_files
from dnabert.errors import DnabertError
from dnabert.run.finetuning import run_finetune
from dnabert.run.suite_report import SUITE_FILE, write_json, write_suite_card
from dnabert.run.suite_stats import collapse_reason
from dnabert.run.validate import suite_selection, validate_config

log = logging.getLogger("dnabert")

RETRY_SEED_STEP = 1000  # a retry's seed: far from the configured ones, the same in every run of the suite
# A recipe block's keys and the finetune.py setting each one sets (and global_batch_size: batch_size, one device).
PRESET_SETTINGS = {"lr": "optim.lr", "max_positions": "max_positions", "max_epochs": "max_epochs",
                   "max_train_steps": "max_train_steps", "warmup_steps": "warmup_steps",
                   "eval_every_n_steps": "eval_every_n_steps", "selection_metric": "selection_metric"}


@dataclass(frozen=True)
class SuiteDataset:
    name: str
    group: str
    path: str
    metric: str


def all_datasets(cfg: DictConfig) -> list[SuiteDataset]:
    return [SuiteDataset(str(row.name), str(row.group), str(row.path), str(row.metric)) for row in cfg.suite.datasets]


def selected_datasets(cfg: DictConfig) -> list[SuiteDataset]:
    """The suite's datasets that `datasets=` (names) and `groups=` select (dnabert.run.validate.suite_selection)."""
    chosen = suite_selection(cfg)
    return [dataset for dataset in all_datasets(cfg) if dataset.name in chosen]


def suite_pairs(cfg: DictConfig) -> list[tuple[SuiteDataset, int]]:
    """Every (dataset, seed) job, in the order `pair=` counts them: dataset by dataset, seed by seed."""
    return [(dataset, int(seed)) for dataset in selected_datasets(cfg) for seed in cfg.seeds]


def preset(cfg: DictConfig, dataset: SuiteDataset) -> dict[str, Any]:
    """The finetune.py settings of the recipe's block for this dataset ({} for recipe=none)."""
    if cfg.recipe == "none":
        return {}
    for block in cfg.suite.recipes[cfg.recipe]:  # a recipe of this suite (dnabert.run.validate.known_recipe)
        if block.datasets == "all" or dataset.name in block.datasets:
            settings = {setting: block[key] for key, setting in PRESET_SETTINGS.items()}
            return {**settings, "batch_size": block.global_batch_size}  # one device per pair (validate.py)
    raise DnabertError(f"suite {cfg.suite.name}, recipe {cfg.recipe} has no preset for dataset {dataset.name}.")


def pair_config(cfg: DictConfig, dataset: SuiteDataset, files: dict[str, Path], run_seed: int,
                run_dir: Path) -> DictConfig:
    """finetune.py's config for one job: the suite's settings, the dataset as the task, the preset, one seed."""
    pair = copy.deepcopy(cfg)
    with open_dict(pair):
        pair.task = {"name": dataset.name, "train": str(files["train"]),
                     "dev": str(files["dev"]) if "dev" in files else None,
                     "test": str(files["test"]) if "test" in files else None,
                     "dev_fraction": float(cfg.suite.get("dev_fraction", 0.1)),
                     "test_fraction": float(cfg.suite.get("test_fraction", 0.0)),
                     "split_seed": 0, "type": "auto", "sequence_column": "sequence", "label_column": "label"}
        pair.seed, pair.seeds = run_seed, [run_seed]
        pair.pair = None  # the sweep's index counts the suite's pairs, not this one fine-tune's (validate.py)
        for key, value in preset(cfg, dataset).items():
            OmegaConf.update(pair, key, value)
        pair.paths.output_dir = str(run_dir)
    return pair


def pair_record_path(suite_dir: Path, dataset: str, seed: int) -> Path:
    return suite_dir / dataset / f"pair_{seed}.json"


def judge(run_dir: Path, run_seed: int) -> tuple[dict[str, Any], str | None]:
    """The job's results.json and why it collapsed (None: it did not)."""
    results = json.loads((run_dir / "results.json").read_text())
    seed_result = results["seeds"][0]
    predictions = np.load(run_dir / f"seed_{run_seed}" / "predictions.npz")
    return results, collapse_reason(results["task_type"], predictions["dev_outputs"], seed_result["metrics"]["dev"])


def run_pair(cfg: DictConfig, dataset: SuiteDataset, seed: int, files: dict[str, Path]) -> dict[str, Any] | None:
    """One (dataset, seed) job with its retries; its record, or None when training stopped early (preemption)."""
    suite_dir = Path(cfg.suite_dir)
    record_path = pair_record_path(suite_dir, dataset.name, seed)
    if record_path.is_file():
        log.info("suite: %s seed %d is done (%s); skipped", dataset.name, seed, record_path)
        return json.loads(record_path.read_text())
    attempts = []
    for attempt in range(int(cfg.max_retries) + 1):
        run_seed = seed + attempt * RETRY_SEED_STEP
        run_dir = suite_dir / dataset.name / f"seed_{run_seed}"
        if not (run_dir / "results.json").is_file():
            resumed = (run_dir / f"seed_{run_seed}" / "checkpoints" / "last.ckpt").is_file()
            log.info("suite: %s seed %d: %s fine-tune with seed %d in %s", dataset.name, seed,
                     "continuing the" if resumed else "starting a", run_seed, run_dir)
            if run_finetune(pair_config(cfg, dataset, files, run_seed, run_dir)) is None:
                return None
        results, reason = judge(run_dir, run_seed)
        attempts.append({"seed": run_seed, "run_dir": str(run_dir), "collapsed": reason,
                         "metrics": results["seeds"][0]["metrics"]})
        if reason is None:
            break
        retry = "" if attempt == int(cfg.max_retries) else f"; retrying with seed {run_seed + RETRY_SEED_STEP}"
        log.warning("suite: %s seed %d collapsed: %s%s", dataset.name, run_seed, reason, retry)
    record = {"dataset": dataset.name, "group": dataset.group, "seed": seed, "task_type": results["task_type"],
              "status": "collapsed" if attempts[-1]["collapsed"] else "ok", "attempts": attempts}
    write_json(record_path, record)
    return record


def describe_suite(cfg: DictConfig) -> dict[str, Any]:
    """What the summary needs besides the pair records: the datasets, their groups and metrics, the published
    scores, the backbone and the pairs asked for."""
    return {
        "suite": cfg.suite.name, "pretrained": str(cfg.pretrained), "recipe": cfg.recipe,
        "seeds": [int(seed) for seed in cfg.seeds], "max_retries": int(cfg.max_retries),
        "datasets": [{"name": d.name, "group": d.group, "metric": d.metric} for d in selected_datasets(cfg)],
        "published": OmegaConf.to_container(cfg.suite.published, resolve=True),
    }


def run_suite(cfg: DictConfig) -> Path:
    """Every selected pair (or the one `pair=` names), then the result card unless a sweep job or summarise=false."""
    validate_config(cfg)
    suite_dir = Path(cfg.suite_dir)
    pairs = suite_pairs(cfg)
    if cfg.pair is not None:  # one job of a sweep (validate_config checked the index)
        pairs = [pairs[cfg.pair]]
    write_json(suite_dir / SUITE_FILE, describe_suite(cfg))
    data_dir = Path(str(cfg.suite.data_dir)).expanduser()
    log.info("suite %s: %d pair(s), recipe %s, backbone %s; folder %s", cfg.suite.name, len(pairs), cfg.recipe,
             cfg.pretrained, suite_dir)
    for dataset, seed in pairs:
        files = dataset_files(str(cfg.suite.layout), data_dir / dataset.path, suite_dir / ".data" / dataset.name)
        if run_pair(cfg, dataset, seed, files) is None:
            log.info("suite: stopped during %s seed %d; run the same command again to continue.", dataset.name, seed)
            return suite_dir
    if cfg.pair is None and cfg.summarise:
        write_suite_card(suite_dir)
    return suite_dir


class SummariseAfterSweep(Callback):
    """Hydra callback: when a `-m` sweep of suite.py returns (every job finished or failed), the result card from
    the pairs that are finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        suite_dir = Path(config.suite_dir)
        if (suite_dir / SUITE_FILE).is_file():
            write_suite_card(suite_dir)
