"""`python finetune.py`: a composed Hydra config -> fine-tuning runs (one per seed) -> results.json, report, export.

The run directory holds one folder per seed (`seed_<n>/`: checkpoints, logs, predictions, results.json,
hf_model/); the run's own results.json and report.md put the seeds side by side with mean and sd. A seed whose
results.json exists is done; one with a checkpoint continues from it (same command, same run directory).

A backbone family plugs in through its ModelFamily object (dnabert.models.family): `resolve_backbone` (what
`pretrained=` names: family, architecture, weights, tokenizer), `build_encoder` (its module without the MLM head)
and `tokenizer_for` (its tokenisation, by the family's tokenizer kind). k-mer families use k-mers of their k;
BPE families (DNABERT-2) use the BPE tokenizer it was pretrained with (the run directory's or export
directory's tokenizer.json, or `tokenizer.file` for `pretrained=none`), whose special ids equal the k-mer ones, so
windowing, padding and the classifier are shared. The released DNABERT-2 tokenizer numbers them otherwise: it is
converted into the fine-tuning run directory (`<run dir>/tokenizer.json`, which exports then carry) and the
released weights are imported to fit it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from dnabert.data.labelled import (
    LabelledSet,
    LabelSpace,
    Tokenize,
    WindowedSet,
    collate_windows,
    kmer_tokenizer,
    label_space,
    read_labelled,
    split_rows,
    windowed_set,
)
from dnabert.data.tokenizers.bpe import TOKENIZER_FILE, BpeWindowTokenizer, usable_bpe
from dnabert.data.tokenizers.kmer import SUPPORTED_K, vocab_size
from dnabert.errors import DnabertError
from dnabert.models import DEFAULT_FAMILY, family_of_checkpoint, family_of_directory, get_family
from dnabert.models.interop import plain
from dnabert.run.adapters import (
    ADAPTER_DIR,
    adapter_settings,
    add_lora,
    lora_settings,
    merged,
    parameter_counts,
    save_adapter,
)
from dnabert.run.callbacks import StepProgressBar
from dnabert.run.checkpoints import checkpoint_step, find_resume_checkpoint, read_checkpoint
from dnabert.run.cluster import check_launch, cluster_callbacks
from dnabert.run.config import auto_precision, resolve_device_count
from dnabert.run.history import set_resume_step
from dnabert.run.run_claim import check_output_dir
from dnabert.run.saved_models import checkpoint_file, export_classifier, load_checkpoint, run_tokenizer
from dnabert.run.training import MODEL_LEVERS, build_loggers, quiet_lightning_logs, run_plugins
from dnabert.run.validate import validate_config
from dnabert.tasks.finetune import FineTuneModule, SequenceClassifier, predict
from dnabert.tasks.metrics import LOWER_IS_BETTER, selection_metric

log = logging.getLogger("dnabert")
SPLITS = ("train", "dev", "test")


# ------------------------------------------------------------------------------------------ backbone seam
@dataclass
class Backbone:
    """What `pretrained=` names: the model family (its `model.family` name), its k (k-mer families) or BPE
    tokenizer file, its config fields and (unless `none`) its weights."""

    family: str
    k: int | None
    config: dict[str, Any]
    weights: dict[str, torch.Tensor] | None
    source: str
    tokenizer: str | None = None

    def describe(self) -> dict[str, Any]:
        """What a fine-tuning checkpoint stores to rebuild the classifier (export, resume)."""
        return {"family": self.family, "k": self.k, "config": self.config, "source": self.source,
                "tokenizer": self.tokenizer}

    @property
    def positions(self) -> tuple[int, int | None]:
        """(default tokens per window, hard limit or None), the family's (ModelFamily.positions)."""
        return get_family(self.family).positions(self.config)

    def label(self) -> str:
        return f"{self.source} (k={self.k})" if self.k is not None else f"{self.source} (BPE {self.tokenizer})"


def resolve_backbone(pretrained: str | None, k: int | None, model_cfg: dict[str, Any],
                     tokenizer_file: str | None = None, work_dir: Path | None = None) -> Backbone:
    """`none` -> the configured architecture at random (a k-mer family: for k-mers of `k`, the config's
    tokenizer.k; a BPE family: with `tokenizer_file`, the BPE tokenizer.json); a run directory or .ckpt -> its model
    (a BPE family: and the run's tokenizer.json); a directory with config.json -> the family that recognises it
    (ModelFamily.recognises_directory; DNABERT-2: a MultiMolecule export or the original release, with its
    tokenizer.json), else transformers' BertForMaskedLM in the original DNABERT layout (released DNABERT weights,
    the fallback family). A BPE tokenizer with the published special ids is converted into `work_dir` (the
    fine-tuning run directory) and used from there; the imported weights fit it (dnabert.models.dnabert2.interop)."""
    if pretrained is None or str(pretrained).lower() == "none":
        name = model_cfg.get("family", DEFAULT_FAMILY)
        family = get_family(name)  # an unknown family is refused by name
        not_architecture = (*MODEL_LEVERS.values(), "init_from", "family")
        config = {key: value for key, value in model_cfg.items() if key not in not_architecture}
        if family.tokenizer == "bpe":
            if not tokenizer_file:
                raise DnabertError(f"pretrained=none with model.family={name} needs its BPE tokenizer: add "
                                   "tokenizer=bpe tokenizer.file=<tokenizer.json or its folder>.")
            tokenizer = BpeWindowTokenizer(usable_bpe(tokenizer_file, work_dir))
            config["vocab_size"] = tokenizer.vocab_size
            family.config_class().from_dict(config)  # checks the fields now, with the setting's name
            return Backbone(name, None, config, None, "none", str(tokenizer.file))
        if k is None:
            raise DnabertError(f"pretrained=none with model.family={name} reads k-mers: use tokenizer=kmer "
                               "(tokenizer.k=3..6), or a BPE family with tokenizer=bpe.")
        config["vocab_size"] = vocab_size(k)
        family.config_class().from_dict(config)  # checks the fields now, with the setting's name in the message
        return Backbone(name, k, config, None, "none")
    path = Path(pretrained)
    if path.is_file() or (path / "checkpoints" / "last.ckpt").is_file():
        model, checkpoint_k, card_config = load_checkpoint(path)
        name = family_of_checkpoint(plain(read_checkpoint(checkpoint_file(path), mmap=True)["hyper_parameters"]))
        if checkpoint_k is None:  # a BPE family: the tokenizer it was pretrained with
            tokenizer = BpeWindowTokenizer(run_tokenizer(path, card_config.get("train_config") or {}))
            return Backbone(name, None, model.config.to_dict(), model.state_dict(), str(path), str(tokenizer.file))
        return Backbone(name, checkpoint_k, model.config.to_dict(), model.state_dict(), str(path))
    config_json = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else None
    family = family_of_directory(config_json) if config_json is not None else None
    if family is None:
        raise DnabertError(f"pretrained={pretrained} is neither a run directory (with checkpoints/last.ckpt), a .ckpt "
                           "file, a transformers model directory (config.json) nor 'none'.")
    if family.tokenizer == "bpe":
        if not (path / TOKENIZER_FILE).is_file():
            raise DnabertError(f"pretrained={path} is a {family.label} model without its {TOKENIZER_FILE}; copy the "
                               "BPE tokenizer it was pretrained with into that folder (the release's tokenizer.json).")
        tokenizer = BpeWindowTokenizer(usable_bpe(path, work_dir))
        model = family.import_directory(path, None)
        return Backbone(family.name, None, model.config.to_dict(), model.state_dict(), str(path), str(tokenizer.file))
    hf_vocab = config_json.get("vocab_size")
    matching = [candidate for candidate in SUPPORTED_K if vocab_size(candidate) == hf_vocab]
    if not matching:
        raise DnabertError(f"pretrained={path}: vocabulary of {hf_vocab} rows is not a DNABERT k-mer vocabulary "
                           f"(4^k + 5 for k in {SUPPORTED_K}).")
    model = family.import_directory(path, matching[0])
    return Backbone(family.name, matching[0], model.config.to_dict(), model.state_dict(), str(path))


def window_positions(backbone: Backbone, requested: int | None) -> int:
    """Tokens per window ([CLS]/[SEP] included): `requested` (`max_positions`), else the backbone's default, never
    beyond its hard limit."""
    default_positions, position_limit = backbone.positions
    max_positions = int(requested or default_positions)
    if position_limit is not None and max_positions > position_limit:
        raise DnabertError(f"max_positions={max_positions} exceeds the backbone's {position_limit} positions; "
                           "lower it or leave it unset.")
    return max_positions


def build_encoder(backbone: Backbone) -> torch.nn.Module:
    """The family's encoder, randomly initialised (global RNG), without its MLM head (fine-tuning never uses it)."""
    return get_family(backbone.family).build_encoder(backbone.config)


def build_masked_lm(backbone: Backbone) -> torch.nn.Module:
    """The family's masked-LM model with the backbone's weights, MLM head included, in eval mode (zero-shot
    scoring, dnabert.run.variants). `pretrained=none` has no trained head to ask: refused."""
    if backbone.weights is None:
        raise DnabertError("a backbone of random weights (none) has no trained MLM head to score with; give a "
                           "pretraining run directory, a .ckpt or an exported model directory.")
    model = get_family(backbone.family).build(backbone.config)
    model.load_state_dict(backbone.weights, strict=True)
    return model.eval()


def load_weights(encoder: torch.nn.Module, backbone: Backbone) -> None:
    """Copy the pretrained encoder weights in (the MLM head's are left out, as the encoder has none)."""
    if backbone.weights is None:
        return
    weights = {key: value for key, value in backbone.weights.items() if not key.startswith("cls.")}
    encoder.load_state_dict(weights, strict=True)


def tokenizer_for(backbone: Backbone) -> Tokenize:
    """k-mers of the backbone's k, or the BPE tokenizer it was pretrained with."""
    if backbone.k is None:
        return BpeWindowTokenizer(backbone.tokenizer).sequence_ids
    return kmer_tokenizer(backbone.k)


def build_classifier(backbone: Backbone, num_outputs: int, seed: int, dropout: float,
                     adapter: dict[str, Any] | None = None) -> SequenceClassifier:
    """Random encoder and head from `seed`, then the pretrained weights: the head starts the same whatever the
    backbone, so `pretrained=none` and `pretrained=<run>` differ only in the encoder's initial weights. `adapter`
    (LoRA settings, dnabert.run.adapters) then wraps the encoder: only the adapter and the head train."""
    torch.manual_seed(seed)
    encoder = build_encoder(backbone)
    classifier = SequenceClassifier(encoder, num_outputs, dropout=dropout,
                                    initializer_range=backbone.config.get("initializer_range", 0.02))
    load_weights(encoder, backbone)
    if adapter is not None:
        add_lora(classifier, backbone.family, adapter)
    return classifier


# ------------------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    labels: LabelSpace
    splits: dict[str, WindowedSet]
    sources: dict[str, str]


def load_task(task_cfg: DictConfig, backbone: Backbone, max_positions: int) -> TaskData:
    """Read the task's files; a missing dev (test) split is a seeded part of train (task.dev_fraction /
    task.test_fraction of it), the same for every training seed."""
    columns = (task_cfg.sequence_column, task_cfg.label_column)
    train = read_labelled(task_cfg.train, backbone.k, *columns)
    given = {name: read_labelled(task_cfg[name], backbone.k, *columns) if task_cfg.get(name) else None
             for name in ("dev", "test")}
    fractions = [0.0 if given[name] is not None else float(task_cfg.get(f"{name}_fraction", 0.0))
                 for name in ("dev", "test")]
    dev_rows, test_rows, train_rows = split_rows(len(train), fractions, int(task_cfg.split_seed))
    parts: dict[str, LabelledSet] = {"train": train.subset(train_rows)}
    sources = {"train": f"{train.path} ({len(train_rows)} of {len(train)} rows)"}
    for name, rows in (("dev", dev_rows), ("test", test_rows)):
        if given[name] is not None:
            parts[name], sources[name] = given[name], str(given[name].path)
        elif len(rows):
            parts[name], sources[name] = train.subset(rows), f"{train.path} ({len(rows)} rows, split seed " \
                                                               f"{task_cfg.split_seed})"
    if "dev" not in parts:
        raise DnabertError("No dev split: give task.dev=<file> or a task.dev_fraction above 0.")
    labels = label_space(parts["train"], str(task_cfg.type))
    tokenize = tokenizer_for(backbone)
    splits = {name: windowed_set(part, labels.targets(part), tokenize, max_positions) for name, part in parts.items()}
    return TaskData(labels, splits, sources)


class TaskLoaders(L.LightningDataModule):
    """Train shuffled per (seed, epoch) and split over the ranks; dev in order, which Lightning shards under DDP
    (FineTuneModule puts the shards back together). The train sampler is built when the trainer asks for it, once
    the process group exists: Lightning leaves a DistributedSampler it is given as it is, so one built earlier for a
    single process would give every rank the whole split."""

    def __init__(self, data: TaskData, batch_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed, self.num_workers = data, batch_size, seed, num_workers

    def loader(self, split: str, sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.data.splits[split], batch_size=self.batch_size, sampler=sampler,
                                           collate_fn=collate_windows, num_workers=self.num_workers)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        train = self.data.splits["train"]
        return self.loader("train", torch.utils.data.DistributedSampler(
            train, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=True, seed=self.seed))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self.loader("dev")


# -------------------------------------------------------------------------------------------------- runs
def seeds_of(cfg: DictConfig) -> list[int]:
    """`seeds` (distinct, dnabert.run.validate checks), or the one `seed`."""
    return [int(seed) for seed in cfg.seeds] if cfg.get("seeds") else [int(cfg.seed)]


def evaluation_schedule(cfg: DictConfig, max_steps: int) -> dict[str, Any]:
    """The Trainer's dev schedule: every epoch, or every `eval_every_n_steps` optimiser steps across epochs (as the
    DNABERT-2 scripts' `--eval_steps`); at most every max_steps, so a short run still evaluates once."""
    every = cfg.get("eval_every_n_steps")
    if not every:
        return {"check_val_every_n_epoch": 1}
    return {"check_val_every_n_epoch": None, "val_check_interval": min(int(every), max_steps)}


def fine_tune_seed(cfg: DictConfig, backbone: Backbone, data: TaskData, seed: int, seed_dir: Path,
                   devices: int) -> dict[str, Any] | None:
    """Train one seed, evaluate its best-on-dev checkpoint on every split (on global rank 0; other ranks get {});
    None when training stopped before the end (preemption)."""
    selection = selection_metric(cfg.selection_metric, data.labels.task_type)
    L.seed_everything(seed, workers=True, verbose=False)
    classifier = build_classifier(backbone, data.labels.num_outputs, seed, float(cfg.dropout), lora_settings(cfg))
    optim = {**OmegaConf.to_container(cfg.optim, resolve=True), "warmup_steps": cfg.get("warmup_steps")}
    module = FineTuneModule(
        classifier, data.labels.task_type, optim, seed, selection,
        freeze_backbone=bool(cfg.freeze_backbone), backbone=backbone.describe(), labels=list(data.labels.names),
        adapter=adapter_settings(classifier),
    )
    task_loaders = TaskLoaders(data, int(cfg.batch_size), seed, int(cfg.num_workers))
    steps_per_epoch = math.ceil(len(data.splits["train"]) / (int(cfg.batch_size) * devices * cfg.trainer.num_nodes))
    max_steps = int(cfg.max_epochs) * steps_per_epoch
    if cfg.get("max_train_steps"):
        max_steps = min(max_steps, int(cfg.max_train_steps))
    best = ModelCheckpoint(
        dirpath=seed_dir / "checkpoints", filename="best-epoch-{epoch:02d}", auto_insert_metric_name=False,
        monitor=f"dev/{selection}", mode="min" if selection in LOWER_IS_BETTER else "max", save_top_k=1,
        save_last=True,
    )
    resume = find_resume_checkpoint(seed_dir / "checkpoints")
    loggers = build_loggers(cfg.logger, seed_dir)
    set_resume_step(loggers, checkpoint_step(resume) if resume else 0)  # a resumed seed keeps its earlier rows
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("val_every_n_steps", None)
    trainer_cfg.update(
        devices=devices, precision=auto_precision(str(cfg.trainer.precision), cfg.trainer.accelerator),
        # max_steps ends the run (max_epochs x steps per epoch, or max_train_steps): Lightning counts an epoch twice
        # when it resumes from the checkpoint that the end-of-epoch dev evaluation saved, and would stop early.
        max_epochs=-1, max_steps=max_steps, **evaluation_schedule(cfg, max_steps),
        use_distributed_sampler=True, default_root_dir=str(seed_dir),
        callbacks=[best, StepProgressBar(), *cluster_callbacks(str(seed_dir))],
        logger=loggers or False, plugins=run_plugins(cfg.trainer.num_nodes, devices),
    )
    trainer = instantiate(trainer_cfg, _convert_="all")
    trainer.fit(module, datamodule=task_loaders, ckpt_path=str(resume) if resume else None)
    if trainer.global_step < trainer.max_steps:
        log.info("Seed %d stopped at step %d of %d; run the same command again to continue.", seed,
                 trainer.global_step, trainer.max_steps)
        return None
    if not trainer.is_global_zero:
        return {}  # the next seed trains on every rank again
    best_path = Path(best.best_model_path)
    state = read_checkpoint(best_path)["state_dict"]
    module.load_state_dict(state)
    chosen = module.best_epoch()
    evaluated, predictions = {}, {}
    for name in data.splits:
        outputs, targets = predict(classifier, task_loaders.loader(name), module.device)
        evaluated[name] = module.split_scores(outputs, targets)
        predictions[f"{name}_outputs"], predictions[f"{name}_targets"] = outputs.numpy(), targets.numpy()
    np.savez_compressed(seed_dir / "predictions.npz", **predictions)
    result = {
        "seed": seed, "best_epoch": int(chosen["epoch"]), "best_checkpoint": best_path.name,
        "selection_metric": f"dev/{selection}", "metrics": evaluated, "dev_history": module.dev_history,
        "parameters": parameter_counts(classifier),
    }
    if module.hparams.adapter is not None:  # the adapter and head alone; hf_model/ gets them merged in
        result["adapter"] = str(save_adapter(classifier, seed_dir / ADAPTER_DIR, {
            "backbone": backbone.describe(), "task_type": data.labels.task_type, "labels": list(data.labels.names),
            "dropout": float(cfg.dropout)}))
        classifier = merged(classifier)
    if cfg.export:
        export_classifier(classifier, backbone.describe(), data.labels, seed_dir / "hf_model",
                          card_config={"task": OmegaConf.to_container(cfg.task, resolve=True), "seed": seed})
        result["export"] = str(seed_dir / "hf_model")
    (seed_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summarise_seeds(per_seed: list[dict[str, Any]]) -> tuple[dict, dict]:
    """Mean and sample sd (None for one seed) of every split's metrics over the seeds."""
    mean, sd = {}, {}
    for split in per_seed[0]["metrics"]:
        names = per_seed[0]["metrics"][split]
        values = {name: [result["metrics"][split][name] for result in per_seed] for name in names}
        mean[split] = {name: statistics.fmean(v) for name, v in values.items()}
        sd[split] = {name: statistics.stdev(v) if len(v) > 1 else None for name, v in values.items()}
    return mean, sd


def run_finetune(cfg: DictConfig) -> Path | None:
    """Fine-tune for every seed, then write results.json, report.md and plots/finetune.png in the run directory."""
    quiet_lightning_logs()
    validate_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    check_output_dir(run_dir)
    devices = resolve_device_count(cfg.trainer.accelerator, cfg.trainer.devices)
    check_launch(cfg.trainer, cfg.logger, devices, int(cfg.trainer.num_nodes))
    backbone = resolve_backbone(cfg.pretrained, OmegaConf.select(cfg, "tokenizer.k"),
                                OmegaConf.to_container(cfg.model, resolve=True),
                                OmegaConf.select(cfg, "tokenizer.file"), run_dir)
    max_positions = window_positions(backbone, cfg.max_positions)
    data = load_task(cfg.task, backbone, max_positions)
    seeds = seeds_of(cfg)
    trained = "a linear probe" if cfg.freeze_backbone else "all weights"
    if cfg.adapter != "none":
        trained = f"a LoRA adapter (r={cfg.lora.r}) and the head"
    log.info("fine-tune %s on task %s (%s, %d outputs; train %d, dev %d, test %d sequences), backbone %s, "
             "seeds %s; run directory %s", trained, cfg.task.name,
             data.labels.task_type, data.labels.num_outputs, *(len(data.splits.get(s, ())) for s in SPLITS),
             backbone.label(), seeds, run_dir)
    per_seed = []
    for seed in seeds:
        seed_dir = run_dir / f"seed_{seed}"
        done = seed_dir / "results.json"
        result = json.loads(done.read_text()) if done.is_file() else fine_tune_seed(cfg, backbone, data, seed,
                                                                                   seed_dir, devices)
        if result is None:
            return None
        per_seed.append(result)
    if not all(per_seed):  # not global rank 0: it writes the results
        return None
    mean, sd = summarise_seeds(per_seed)
    results = {
        "task": cfg.task.name, "task_type": data.labels.task_type, "labels": list(data.labels.names),
        "splits": data.sources, "pretrained": backbone.source, "family": backbone.family, "k": backbone.k,
        "freeze_backbone": bool(cfg.freeze_backbone), "adapter": lora_settings(cfg),
        "selection_metric": per_seed[0]["selection_metric"],
        "seeds": per_seed, "mean": mean, "sd": sd,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # Imported when the seeds are done: matplotlib adds about a second to every start otherwise.
    from dnabert.run.finetune_report import write_finetune_report

    paths = write_finetune_report(run_dir, results)
    lines = [f"Run directory: {run_dir}", f"  results: {run_dir / 'results.json'}"]
    lines += [f"  report: {path}" for path in paths]
    split = "test" if "test" in mean else "dev"
    metric = per_seed[0]["selection_metric"].split("/", 1)[1]
    spread = f" ± {sd[split][metric]:.4f}" if sd[split][metric] is not None else ""
    lines.append(f"  {split} {metric}: {mean[split][metric]:.4f}{spread} over {len(per_seed)} seed(s)")
    print("\n".join(lines), flush=True)
    return run_dir
