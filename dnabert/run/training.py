"""Turn a composed Hydra config into a running Trainer: derive, check, build, resume, fit.

Everything a user can get wrong is checked here, before any process is spawned or a GPU touched, and reported
as one DnabertError.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dnabert.data.bpe_training import ensure_bpe_tokenizer
from dnabert.data.tokenizers.bpe import BpeWindowTokenizer, install_bpe, read_bpe
from dnabert.errors import DnabertError
from dnabert.models import DEFAULT_FAMILY, get_family
from dnabert.models.components import count_parameters
from dnabert.run.callbacks import FinalStepCheckpoint, RunArtifacts, StepProgressBar, ThroughputLogger
from dnabert.run.checkpoints import AtomicCheckpointIO, checkpoint_step, find_resume_checkpoint
from dnabert.run.cluster import (
    check_checkpoint_fits,
    check_launch,
    cluster_callbacks,
    cluster_plugins,
    wandb_run_id,
)
from dnabert.run.config import (
    accumulation_steps,
    auto_precision,
    declared_device_count,
    mask_switch_step,
    resolve_device_count,
    runs_on_gpu,
)
from dnabert.run.estimate import estimate_from_config
from dnabert.run.history import MetricsHistory, set_resume_step
from dnabert.run.run_claim import check_output_dir
from dnabert.run.trial import TrialResult, run_trial
from dnabert.run.validate import validate_config
from dnabert.run.wandb_mode import settle_wandb_mode
from dnabert.tasks.pretrain import MaskedLMModule

log = logging.getLogger("dnabert")
# Performance switches in the model config group that are not architecture: module argument -> config key.
MODEL_LEVERS = {"compile_model": "compile", "attention": "attention", "head_on_masked_only": "head_on_masked_only"}

# Masking lives in the LightningModule's batch hooks on purpose (it needs the optimiser step): not a mistake.
warnings.filterwarnings("ignore", message=r"You have overridden `on_(before|after)_batch_transfer`")
# Lightning 2.6 on torch 2.13 warns about its own use of a torch API; nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# Under DDP, Lightning advises sync_dist=True for every epoch-level metric. Ours are whole-split values already: the
# validation totals are summed over ranks (MaskedLMModule), fine-tuning gathers the dev outputs (FineTuneModule),
# the probe runs on rank 0 alone. The advice would only mislead a reader of the log.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(.*sync_dist=True")


def quiet_lightning_logs() -> None:
    """Print each Lightning line once (through Hydra's handlers) and without its product advertisements."""
    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero_logger.addFilter(lambda record: not str(record.msg).startswith("💡 Tip"))


@dataclass(frozen=True)
class Plan:
    """The numbers derived from the config that decide how a run is laid out."""

    devices: int
    num_nodes: int
    accumulation: int
    precision: str
    switch_step: int
    run_dir: Path

    def describe(self, cfg: DictConfig) -> str:
        micro = cfg.data.micro_batch_size
        return (
            f"global batch {cfg.global_batch_size} = micro {micro} x accumulation {self.accumulation} x "
            f"devices {self.devices} x nodes {self.num_nodes}; precision {self.precision}; "
            f"{cfg.max_steps} steps, mask rate {cfg.masking.rate} -> {cfg.masking.final_rate} "
            f"from step {self.switch_step}; run directory {self.run_dir}"
        )


def make_plan(cfg: DictConfig) -> Plan:
    trainer_cfg = cfg.trainer
    # An estimate describes the configured cluster, not this machine: no availability check.
    count_devices = declared_device_count if cfg.estimate else resolve_device_count
    devices = count_devices(trainer_cfg.accelerator, trainer_cfg.devices)
    num_nodes = int(trainer_cfg.num_nodes)
    return Plan(
        devices=devices,
        num_nodes=num_nodes,
        accumulation=accumulation_steps(cfg.global_batch_size, cfg.data.micro_batch_size, devices, num_nodes),
        precision=auto_precision(str(trainer_cfg.precision), trainer_cfg.accelerator),
        switch_step=mask_switch_step(cfg.max_steps, cfg.masking.final_rate_steps),
        run_dir=Path(cfg.paths.output_dir),
    )


def uses_bpe(cfg: DictConfig) -> bool:
    """Whether the run tokenises with BPE (`tokenizer=bpe`) instead of overlapping k-mers."""
    kind = OmegaConf.select(cfg, "tokenizer.kind", default="kmer")
    if kind not in ("kmer", "bpe"):
        raise DnabertError(f"tokenizer.kind={kind!r} is unknown; use tokenizer=kmer or tokenizer=bpe.")
    return kind == "bpe"


def prepare_tokenizer(cfg: DictConfig, run_dir: Path) -> None:
    """For BPE with no `tokenizer.file`: train it from data.genomes on first use (cached by settings and genome
    identity, dnabert.data.tokenizers.bpe) and point `tokenizer.file` at it. The run directory keeps a copy
    (run_dir/tokenizer.json), which the export and any later use of the checkpoints need; a tokenizer.file with
    the published DNABERT-2 special ids is converted there and `tokenizer.file` points at the copy (model.init_from
    of the release imports its weights to fit it, dnabert.models.dnabert2.interop)."""
    if not uses_bpe(cfg):
        return
    if not cfg.tokenizer.file:
        sample_data = build_datamodule(cfg, with_tokenizer=False)
        if not hasattr(sample_data, "sources"):
            raise DnabertError("tokenizer=bpe trains on genomes (data.fasta or data.genomes); for another corpus "
                               "train one with `python -m dnabert.tools.bpe train` and set tokenizer.file.")
        path = ensure_bpe_tokenizer(sample_data, int(cfg.tokenizer.train_bp), int(cfg.tokenizer.vocab_size),
                                    cfg.paths.cache_dir, report=log.info)
        with open_dict(cfg):
            cfg.tokenizer.file = str(path)
    copy, converted = install_bpe(cfg.tokenizer.file, run_dir)  # every rank writes the same bytes
    if converted:  # the published DNABERT-2 special ids: the run tokenises with the converted copy
        log.info("tokenizer.file=%s has the published DNABERT-2 special ids; the run uses %s, converted to the "
                 "project's (other tokens keep their ids)", cfg.tokenizer.file, copy)
        with open_dict(cfg):
            cfg.tokenizer.file = str(copy)


def build_module(cfg: DictConfig, plan: Plan) -> MaskedLMModule:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    init_from = model_cfg.pop("init_from", None)
    family = model_cfg.pop("family", DEFAULT_FAMILY)
    tokenizer_vocab_size = None
    if uses_bpe(cfg):  # the file's real size; an estimate without the file uses the configured size
        file = cfg.tokenizer.file
        tokenizer_vocab_size = read_bpe(file)[1].get_vocab_size() if file else int(cfg.tokenizer.vocab_size)
    levers = {name: model_cfg.pop(key) for name, key in MODEL_LEVERS.items() if key in model_cfg}
    masking = OmegaConf.to_container(cfg.masking, resolve=True)
    masking["switch_step"] = plan.switch_step
    module = MaskedLMModule(
        k=cfg.data.k,  # tokenizer.k; BPE runs: data.k, the shortest window, which token masking does not read
        model_config=model_cfg,
        masking=masking,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        seed=cfg.seed,
        max_consecutive_nonfinite=cfg.max_consecutive_nonfinite,
        train_config=OmegaConf.to_container(cfg, resolve=True),
        packed=bool(cfg.data.get("pack_rows", False)),
        family=family,
        tokenizer_vocab_size=tokenizer_vocab_size,
        **levers,
    )
    if init_from:  # weights of a saved model directory; a resumed checkpoint overwrites them afterwards
        get_family(family).load_into(module.model, Path(init_from), module.k)
    return module


def describe_model(module: MaskedLMModule) -> str:
    """One line in place of Lightning's layer table: the shape that matters and the levers in use."""
    config = module.model.config
    family = get_family(module.family).label
    tokens = f"k={module.k}" if module.hparams.tokenizer_vocab_size is None else "BPE"
    return (
        f"model: {family} {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, FFN {config.intermediate_size}, vocabulary {config.vocab_size} "
        f"({tokens}): {count_parameters(module.model):,} parameters; packed rows "
        f"{'on' if module.packed else 'off'}, LM head on "
        f"{'masked positions only' if module.head_on_masked_only else 'all tokens'}, attention "
        f"{module.model.attention}, compile {'on' if module.hparams.compile_model else 'off'}"
    )


def build_datamodule(cfg: DictConfig, with_tokenizer: bool = True) -> L.LightningDataModule:
    """`data.fasta=...` is the one-genome shorthand; otherwise `data.genomes` lists them with weights. A corpus
    config with neither (data=sequences) is instantiated as it is. With BPE (and `with_tokenizer`), the windows
    are `tokenizer.window_bp` long and tokenised with `tokenizer.file` (see `prepare_tokenizer`)."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    bpe = {}
    if with_tokenizer and uses_bpe(cfg):
        bpe = {"tokenizer": BpeWindowTokenizer(cfg.tokenizer.file), "window_bp": int(cfg.tokenizer.window_bp)}
    if "fasta" not in data_cfg and "genomes" not in data_cfg:
        if bpe:
            raise DnabertError("tokenizer=bpe works on genomes (data.fasta or data.genomes), not on data=sequences.")
        return instantiate(data_cfg, _convert_="all")
    fasta = data_cfg.pop("fasta", None)
    if fasta:
        data_cfg["genomes"] = [{"name": Path(fasta).name.split(".")[0], "fasta": fasta, "weight": 1.0}]
    if not data_cfg.get("genomes"):
        raise DnabertError("No genome given: set data.fasta=/path/to/genome.fa (or data.genomes).")
    return instantiate(data_cfg, _convert_="all", **bpe)


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """An explicit `ckpt_path` wins; otherwise continue from the run directory's newest good checkpoint."""
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise DnabertError(f"ckpt_path={cfg.ckpt_path} does not exist. Point it at a .ckpt file.")
        return str(path)
    found = find_resume_checkpoint(run_dir / "checkpoints")
    if found is not None:
        log.info("Resuming from %s (same run name, same run directory).", found)
    return str(found) if found else None


def build_trainer(cfg: DictConfig, plan: Plan, resume_step: int = 0) -> L.Trainer:
    """`resume_step`: the step of the checkpoint this process continues from (0: a fresh start)."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += [StepProgressBar(), ThroughputLogger(), FinalStepCheckpoint(str(plan.run_dir)),
                  MetricsHistory(str(plan.run_dir)), RunArtifacts(str(plan.run_dir), export=cfg.export)]
    callbacks += cluster_callbacks(str(plan.run_dir))
    callbacks += probe_callbacks(cfg)
    loggers = build_loggers(cfg.logger)
    set_resume_step(loggers, resume_step)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    val_every = trainer_cfg.pop("val_every_n_steps")
    trainer_cfg.update(
        devices=plan.devices,
        precision=plan.precision,
        max_steps=cfg.max_steps,
        accumulate_grad_batches=plan.accumulation,
        # The stream is endless: validate every N optimiser steps, counted in micro-batches.
        val_check_interval=val_every * plan.accumulation,
        check_val_every_n_epoch=None,
        default_root_dir=str(plan.run_dir),
        callbacks=callbacks,
        logger=loggers or False,
        plugins=run_plugins(plan.num_nodes, plan.devices),
    )
    return instantiate(trainer_cfg, _convert_="all")


def build_loggers(logger_cfg: DictConfig | None, run_dir: Path | None = None) -> list:
    """The configured metric loggers; `run_dir` moves them (and the wandb run identity) to another folder, as
    fine-tuning does for each seed."""
    loggers = []
    for config in (logger_cfg or {}).values():
        if config is None:
            continue
        overrides = {}
        if run_dir is not None:
            overrides["save_dir"] = str(run_dir)
            if str(config.get("_target_", "")).endswith("WandbLogger"):
                overrides.update(id=wandb_run_id(str(run_dir)), name=f"{config.name}/{run_dir.name}")
        loggers.append(instantiate(config, **overrides))
    return loggers


def run_plugins(num_nodes: int, devices: int) -> list:
    """Atomic checkpoint writes and the cluster environment: every run's Trainer gets them."""
    return [AtomicCheckpointIO(), *cluster_plugins(num_nodes, devices)]


def probe_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The downstream probe when `probe.path` names a labelled file (the demo's bundled promoter task), and the
    variant probe when `probe.variants.vcf` names a VCF of labelled SNVs."""
    probe_cfg = cfg.get("probe")
    settings = OmegaConf.to_container(probe_cfg, resolve=True) if probe_cfg else {}
    variants = settings.pop("variants", None) or {}
    if not settings.get("path") and not variants.get("vcf"):
        return []
    # Imported for runs with a probe only: scikit-learn's import adds about a second to every start otherwise.
    from dnabert.run.probe import DownstreamProbe, VariantProbe

    bpe = uses_bpe(cfg)  # the run's BPE (prepare_tokenizer has set tokenizer.file), windows of its training length
    callbacks: list[L.Callback] = []
    if settings.get("path"):
        tokenizer = BpeWindowTokenizer(cfg.tokenizer.file) if bpe else None
        callbacks.append(DownstreamProbe(**settings, tokenize=tokenizer.sequence_ids, max_positions=int(
            cfg.data.max_tokens)) if bpe else DownstreamProbe(**settings, k=int(cfg.tokenizer.k)))
    if variants.get("vcf"):  # contexts of the run's window length, the positions the model trains on
        tokens = {"tokenizer_file": str(cfg.tokenizer.file)} if bpe else {"k": int(cfg.tokenizer.k)}
        callbacks.append(VariantProbe(**variants, seed=int(settings["seed"]), **tokens,
                                      max_positions=int(cfg.data.max_tokens)))
    return callbacks


def estimate_trial(cfg: DictConfig, plan: Plan) -> TrialResult | None:
    """`estimate_trial`: auto = measure on this machine's GPU when it has one; true = also on a CPU; false = never.

    The trial runs on one device of this machine (cuda:0, else the CPU), at the configured micro-batch."""
    setting = str(cfg.estimate_trial).lower()
    if setting not in ("auto", "true", "false"):
        raise DnabertError(f"estimate_trial={cfg.estimate_trial!r}: use auto, true or false.")
    accelerator = str(cfg.trainer.accelerator)
    use_gpu = runs_on_gpu(accelerator)
    if setting == "false" or (setting == "auto" and not use_gpu):
        return None
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    log.info("Estimate: a few optimiser steps on %s at micro-batch %d to measure memory and speed ...",
             device, cfg.data.micro_batch_size)
    return run_trial(
        build_module(cfg, plan), cfg.data.micro_batch_size, int(cfg.data.get("max_tokens", 512)), device,
        precision=auto_precision(str(cfg.trainer.precision), accelerator if use_gpu else "cpu"),
    )


def run(cfg: DictConfig) -> Path | None:
    """Train (or only estimate) as the config says; returns the run directory."""
    quiet_lightning_logs()
    validate_config(cfg)
    plan = make_plan(cfg)
    if cfg.estimate:
        print(estimate_from_config(cfg, plan.devices, plan.num_nodes, trial=estimate_trial(cfg, plan)))
        return None
    check_output_dir(plan.run_dir)
    settle_wandb_mode(cfg.logger, plan.run_dir)
    check_launch(cfg.trainer, cfg.logger, plan.devices, plan.num_nodes)
    first_local_rank = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if first_local_rank:
        log.info(plan.describe(cfg))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    prepare_tokenizer(cfg, plan.run_dir)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, plan)
    if first_local_rank:
        log.info(describe_model(module))
    ckpt_path = resolve_ckpt_path(cfg, plan.run_dir)
    if ckpt_path:
        check_checkpoint_fits(ckpt_path, module.k, cfg.model)
    trainer = build_trainer(cfg, plan, resume_step=checkpoint_step(ckpt_path) if ckpt_path else 0)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return plan.run_dir
