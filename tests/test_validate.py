"""Settings validated up front (dnabert.run.validate): one row per setting of every config group, each a bad
override and the fragment its one-line error must contain; shipped configs pass; a few rows through train.py for
exit code 2 and one line; a FASTA that changes mid-run still ends in a DnabertError."""

from __future__ import annotations

import functools
import gzip
import re
import shutil
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch._utils import ExceptionWrapper

from dnabert.data.datamodule import GenomeDataModule
from dnabert.data.genome import Genome, GenomeSource
from dnabert.errors import DnabertError, user_message
from dnabert.run.validate import SETTINGS, validate_config
from dnabert.tools.cli import validate_before_hydra
from tests.conftest import DEMO_FASTA, ROOT

PRETRAINING_GROUPS = ("data", "model", "tokenizer", "masking", "optim", "trainer", "logger", "callbacks", "paths",
                      "experiment")
GROUPS = (*PRETRAINING_GROUPS, "task", "suite")  # task: fine-tuning's own; suite: suite.py's
SEQUENCES = ("data=sequences", "data.path={CSV}")

# (overrides, fragment of the error). Group choices (data=sequences) are composed, the rest applied to the
# composed config as Hydra types them on the command line. {DIR} etc. are files made by the `files` fixture.
ROWS: list[tuple[tuple[str, ...], str]] = [
    # top level
    (("experiment_name=a/b",), "experiment_name='a/b' becomes a folder name"),
    (("run_name=../escape",), "run_name='../escape' becomes a folder name"),
    (("tokenizer.k=7",), "tokenizer.k=7 is not one of 3, 4, 5, 6; set tokenizer.k to a supported k-mer size"),
    (("k=4",), "k=4 is now tokenizer.k=4 (the k-mer size is a setting of the k-mer tokenizer); use tokenizer.k=4."),
    (("seed=-1",), "seed=-1 must be in [0, 4294967295]"),
    (("global_batch_size=0",), "global_batch_size=0 must be >= 1"),
    (("max_steps=0",), "max_steps=0 must be >= 1; set the number of optimiser steps"),
    (("ckpt_path={DIR}/missing.ckpt",), "missing.ckpt' does not exist; point it at a file"),
    (("estimate=maybe",), "estimate='maybe' is not true or false"),
    (("estimate_gpu=tpu9000",), "estimate_gpu='tpu9000' is not in the estimate's GPU table"),
    (("estimate_mfu=1.5",), "estimate_mfu=1.5 must be in (0, 1]"),
    (("estimate_trial=sometimes",), "estimate_trial='sometimes' is not one of auto"),
    (("export=1",), "export=1 is not true or false"),
    (("max_consecutive_nonfinite=0",), "max_consecutive_nonfinite=0 must be >= 1"),
    (("lock_run_dir=maybe",), "lock_run_dir='maybe' is not true or false; use lock_run_dir=true, or false"),
    # the downstream probe
    (("probe.path={DIR}/none.tsv",), "none.tsv' does not exist"),
    (("probe.max_sequences=2",), "probe.max_sequences=2 must be >= 4"),
    (("probe.test_fraction=1",), "probe.test_fraction=1 must be in (0, 1)"),
    (("probe.seed=-1",), "probe.seed=-1 must be in [0, 4294967295]"),
    (("probe.batch_size=0",), "probe.batch_size=0 must be >= 1"),
    (("probe.sequence_column=' '",), "probe.sequence_column=' ' is empty"),
    (("probe.label_column=",), "probe.label_column='' is empty"),
    (("probe.variants.vcf={DIR}/none.vcf",), "none.vcf' does not exist"),
    (("probe.variants.reference={NOT_FASTA}",), "does not start with a '>' header line"),
    (("probe.variants.label=",), "probe.variants.label='' is empty"),
    (("probe.variants.max_variants=2",), "probe.variants.max_variants=2 must be >= 4"),
    (("probe.variants.batch_size=0",), "probe.variants.batch_size=0 must be >= 1"),
    # paths
    (("paths.root_dir=",), "paths.root_dir='' is empty; point it at the dnabert checkout"),
    (("paths.output_root=' '",), "paths.output_root=' ' is empty"),
    (("paths.output_dir=",), "paths.output_dir='' is empty"),
    (("paths.cache_dir=",), "paths.cache_dir='' is empty"),
    # data: genomes
    (("data.fasta={DIR}",), "is a directory; point it at a FASTA file"),
    (("data.fasta={BINARY}",), "binary.fa' is not a text file"),
    (("data.fasta={DIR}/none.fa",), "none.fa' does not exist"),
    (("data.fasta={NOT_FASTA}",), "does not start with a '>' header line"),
    (("data.fasta={GZIP}",), "plain.fa.gz' is gzip-compressed but not with bgzip"),
    (("data.genomes=5",), "data.genomes=5 is not a list"),
    (("data.genomes=[]",), "No genome given: set data.fasta"),
    (("data=mixed_demo", "data.genomes.2.name="), "data.genomes[2].name='' is empty"),
    (("data=mixed_demo", "data.genomes.1.fasta={DIR}/lambda.fa"), "data.genomes[1].fasta="),
    (("data.genomes.0.weight=-1",), "data.genomes[0].weight=-1 must be >= 0"),
    (("+data.genomes.0.include=chr1",), "data.genomes[0].include='chr1' is not a list"),
    (("+data.genomes.0.exclude=[1]",), "must list contig names"),
    (("data.val_block_size=0",), "data.val_block_size=0 must be >= 1"),
    (("data.val_contigs=chr1",), "data.val_contigs='chr1' is not a list"),
    # data: tables of sequences
    (("data=sequences",), "data.path is null; set data.path="),
    (("data=sequences", "data.path={DIR}/none.csv"), "none.csv' does not exist"),
    ((*SEQUENCES, "data.format=xlsx"), "data.format='xlsx' is not one of parquet, csv"),
    ((*SEQUENCES, "data.sequence_column="), "data.sequence_column='' is empty"),
    ((*SEQUENCES, "data.val_path={DIR}/val.csv"), "val.csv' does not exist"),
    # data: every corpus
    (("data.k=5",), "data.k=5 differs from tokenizer.k=6"),
    (("experiment=dnabert2_demo", "data.k=2"), "data.k=2 is not one of 3, 4, 5, 6"),
    (("data.micro_batch_size=0",), "data.micro_batch_size=0 must be >= 1"),
    (("data.num_workers=-1",), "data.num_workers=-1 must be >= 0; use 0"),
    (("data.seed=-5",), "data.seed=-5 must be in"),
    (("data.length_rule=sideways",), "data.length_rule='sideways' is not one of original, fixed"),
    (("data.max_tokens=2",), "data.max_tokens=2 must be >= 3"),
    (("data.val_fraction=1",), "data.val_fraction=1 must be in [0, 1)"),
    (("data.split_seed=x",), "data.split_seed='x' is not a whole number"),
    (("data.val_max_windows=0",), "data.val_max_windows=0 must be >= 1"),
    (("data.reverse_complement=yes",), "data.reverse_complement='yes' is not true or false"),
    (("data.pack_rows=2",), "data.pack_rows=2 is not true or false"),
    (("data.pack_row_tokens=2",), "data.pack_row_tokens=2 must be >= 3"),
    (("data.cache_dir=",), "data.cache_dir='' is empty"),
    (("+data.batches_per_transfer=0",), "data.batches_per_transfer=0 must be >= 1"),
    (("+data.pad_to_multiple_of=0",), "data.pad_to_multiple_of=0 must be >= 1"),
    (("+data.pin_memory=maybe",), "data.pin_memory='maybe' is not true or false"),
    (("+data.rank=-1",), "data.rank=-1 must be >= 0"),
    (("+data.world_size=0",), "data.world_size=0 must be >= 1"),
    (("+data.start_position=-1",), "data.start_position=-1 must be >= 0"),
    # model
    (("model.vocab_size=69",), "model.vocab_size=69 does not fit tokenizer.k=6 (needs 4101)"),
    (("model.hidden_size=0",), "model.hidden_size=0 must be >= 1"),
    (("model.num_hidden_layers=0",), "model.num_hidden_layers=0 must be >= 1"),
    (("model.num_attention_heads=0",), "model.num_attention_heads=0 must be >= 1"),
    (("model.intermediate_size=-1",), "model.intermediate_size=-1 must be >= 1"),
    (("model.max_position_embeddings=0",), "model.max_position_embeddings=0 must be >= 1"),
    (("model.type_vocab_size=0",), "model.type_vocab_size=0 must be >= 1"),
    (("model.hidden_dropout_prob=1",), "model.hidden_dropout_prob=1 must be in [0, 1)"),
    (("model.attention_probs_dropout_prob=-0.1",), "model.attention_probs_dropout_prob=-0.1 must be in [0, 1)"),
    (("model.layer_norm_eps=0",), "model.layer_norm_eps=0 must be > 0"),
    (("model.initializer_range=0",), "model.initializer_range=0 must be > 0"),
    (("model.hidden_act=swishy",), "model.hidden_act='swishy' is unknown; use one of transformers' activations"),
    (("model.hidden_act=1",), "model.hidden_act=1 is not text"),
    (("model.init_from={DIR}/no_model",), "no_model' is missing; point it at a directory saved by save_pretrained"),
    (("model.compile=fast",), "model.compile='fast' is not true or false"),
    (("model.attention=flash",), "model.attention='flash' is not one of sdpa, flex"),
    (("model.head_on_masked_only=1",), "model.head_on_masked_only=1 is not true or false"),
    (("model.family=gpt",), "model.family='gpt' is unknown; pick the model code: dnabert, dnabert2, or "
                              "module.path:FAMILY"),
    (("model=dnabert2_tiny", "model.alibi_starting_size=0"), "model.alibi_starting_size=0 must be >= 1"),
    (("experiment=dnabert2_demo", "model.vocab_size=4101"),
     "model.vocab_size=4101 differs from tokenizer.vocab_size=4096; leave it at ${{tokenizer.vocab_size}}"),
    # tokenizer
    (("tokenizer.kind=wordpiece",), "tokenizer.kind='wordpiece' is not one of kmer, bpe"),
    (("experiment=dnabert2_demo", "tokenizer.vocab_size=8", "model.vocab_size=8"),
     "tokenizer.vocab_size=8 leaves no room beyond the special tokens and A/C/G/T"),
    (("experiment=dnabert2_demo", "tokenizer.file={DIR}/no_tokenizer.json"), "no_tokenizer.json' does not exist"),
    (("experiment=dnabert2_demo", "tokenizer.train_bp=0"), "tokenizer.train_bp=0 must be >= 1"),
    (("experiment=dnabert2_demo", "tokenizer.window_bp=0"), "tokenizer.window_bp=0 must be >= 1"),
    # masking
    (("masking.mode=random",), "masking.mode='random' is not one of whole_kmer, original"),
    (("masking.rate=0",), "masking.rate=0 must be in (0, 1)"),
    (("masking.final_rate=1",), "masking.final_rate=1 must be in (0, 1)"),
    (("masking.final_rate_steps=-1",), "masking.final_rate_steps=-1 must be >= 0"),
    # optim
    (("optim.lr=-1",), "optim.lr=-1 must be > 0; set the peak learning rate"),
    (("optim.betas=[0.9]",), "optim.betas=[0.9] must be two numbers in [0, 1)"),
    (("optim.eps=0",), "optim.eps=0 must be > 0"),
    (("optim.weight_decay=-0.1",), "optim.weight_decay=-0.1 must be >= 0"),
    (("optim.warmup_steps=-1",), "optim.warmup_steps=-1 must be >= 0"),
    (("optim.total_steps=0",), "optim.total_steps=0 must be >= 1"),
    (("optim.fused=maybe",), "optim.fused='maybe' is not true or false"),
    # trainer
    (("trainer.accelerator=quantum",), "trainer.accelerator='quantum' is not one of auto, gpu"),
    (("trainer.devices=0",), "trainer.devices=0 is not a device count"),
    (("trainer.num_nodes=0",), "trainer.num_nodes=0 must be >= 1"),
    (("trainer.strategy=teleport",), "trainer.strategy='teleport' is not a Lightning strategy"),
    (("trainer=gpu_multinode", "global_batch_size=256", "trainer.strategy.process_group_backend=ncl"),
     "trainer.strategy.process_group_backend='ncl' is not one of nccl, gloo"),
    (("trainer.precision=bf17",), "trainer.precision='bf17' is not one of auto"),
    (("trainer.gradient_clip_val=-1",), "trainer.gradient_clip_val=-1 must be >= 0"),
    (("trainer.log_every_n_steps=0",), "trainer.log_every_n_steps=0 must be >= 1"),
    (("trainer.val_every_n_steps=0",), "trainer.val_every_n_steps=0 must be >= 1"),
    (("trainer.num_sanity_val_steps=-2",), "trainer.num_sanity_val_steps=-2 must be >= -1"),
    (("trainer.enable_model_summary=2",), "trainer.enable_model_summary=2 is not true or false"),
    (("trainer.use_distributed_sampler=no",), "trainer.use_distributed_sampler='no' is not true or false"),
    # logger
    (("logger=wandb", "logger.wandb.project="), "logger.wandb.project='' is empty"),
    (("logger=wandb", "logger.wandb.offline=sometimes"), "logger.wandb.offline='sometimes' is not true or false"),
    (("logger=wandb", "logger.wandb.mode=onlin"), "logger.wandb.mode='onlin' is not one of online, offline"),
    (("logger=wandb", "logger.wandb.entity="), "logger.wandb.entity='' is empty"),
    (("logger=wandb", "logger.wandb.group="), "logger.wandb.group='' is empty"),
    (("logger=wandb", "logger.wandb.resume=restart"), "logger.wandb.resume='restart' is not one of allow"),
    (("logger=wandb", "logger.wandb.log_model=best"), "logger.wandb.log_model='best' is not one of False"),
    # callbacks
    (("callbacks.model_checkpoint.every_n_train_steps=-1",), "every_n_train_steps=-1 must be >= 0"),
    (("callbacks.model_checkpoint.save_top_k=-2",), "save_top_k=-2 must be >= -1"),
    (("callbacks.model_checkpoint.save_last=sometimes",), "save_last='sometimes' is not true or false"),
    (("callbacks.model_checkpoint.filename=",), "callbacks.model_checkpoint.filename='' is empty"),
    # settings that must agree
    (("global_batch_size=33",), "global_batch_size=33 is not a multiple of data.micro_batch_size (16)"),
    (("masking.final_rate_steps=1000",), "masking.final_rate_steps=1000 must lie between 0 and max_steps=800"),
    (("optim.total_steps=500",), "optim.total_steps=500 is below max_steps=800: the learning rate would be 0"),
    (("data.max_tokens=1024",), "data.max_tokens=1024 exceeds model.max_position_embeddings=512"),
    (("data.pack_rows=true", "data.pack_row_tokens=32"), "data.pack_row_tokens=32 is below data.max_tokens=64"),
    (("model.num_attention_heads=3",), "model.hidden_size=128 is not divisible by model.num_attention_heads=3"),
    (("model=small", "model.attention=flex"), "FlexAttention has no attention dropout"),
    (("data.pack_rows=true", "model.attention=flex"),
     "model.attention='flex' cannot train on a CPU (trainer.accelerator=cpu): torch's FlexAttention has no backward"),
    (("experiment=dnabert2_demo", "masking=whole_kmer", "masking.final_rate_steps=100"),
     "with tokenizer=bpe use masking=token"),
    (("probe.variants.vcf={CSV}",), "needs its reference: set probe.variants.reference"),
    (("+trainer.max_steps=5",), "trainer.max_steps is set by dnabert from max_steps"),
    (("+trainer.gradient_clip=1",), "trainer.gradient_clip is not a Lightning Trainer argument"),
]

# The same for finetune.py (configs/finetune.yaml, with pretrained=none unless the case sets it).
FINETUNE_ROWS: list[tuple[tuple[str, ...], str]] = [
    (("pretrained={DIR}/outputs/demo/defualt",), "defualt' does not exist; give a pretraining run directory, a .ckpt"),
    (("seeds=[1,1]",), "seeds=[1, 1] repeats a seed; give distinct seeds, e.g. seeds=[1,2,3]"),
    (("seeds=[]",), "seeds=[] lists no seed; give distinct seeds, e.g. seeds=[1,2,3]"),
    (("seeds=[1,-2]",), "seeds=[1, -2] must list whole-number seeds in [0, 4294967295]"),
    (("max_epochs=0",), "max_epochs=0 must be >= 1; e.g. max_epochs=3"),
    (("max_train_steps=0",), "max_train_steps=0 must be >= 1; or null (max_epochs decide)"),
    (("warmup_steps=-5",), "warmup_steps=-5 must be >= 0; or null (optim.warmup_fraction)"),
    (("eval_every_n_steps=0",), "eval_every_n_steps=0 must be >= 1; or null (every epoch)"),
    (("batch_size=0",), "batch_size=0 must be >= 1"),
    (("freeze_backbone=maybe",), "freeze_backbone='maybe' is not true or false"),
    (("dropout=1",), "dropout=1 must be in [0, 1)"),
    (("adapter=prefix",), "adapter='prefix' is not one of none, lora; use none (train all weights) or lora"),
    (("lora.r=0",), "lora.r=0 must be >= 1; the adapter's rank"),
    (("lora.alpha=0",), "lora.alpha=0 must be > 0"),
    (("lora.dropout=1",), "lora.dropout=1 must be in [0, 1)"),
    (("lora.dropout=-0.1",), "lora.dropout=-0.1 must be in [0, 1)"),
    (("lora.target_modules=query",), "lora.target_modules='query' is not a list (or null); list layer names"),
    (("lora.target_modules=[]",), "lora.target_modules=[] must list layer names"),
    (("max_positions=2",), "max_positions=2 must be >= 3"),
    (("selection_metric=auc",), "selection_metric='auc' is not one of accuracy, f1, mcc"),
    (("num_workers=-1",), "num_workers=-1 must be >= 0"),
    (("optim.lr=-1",), "optim.lr=-1 must be > 0; set the peak learning rate"),
    (("optim.warmup_fraction=1",), "optim.warmup_fraction=1 must be in [0, 1)"),
    (("tokenizer.k=2",), "tokenizer.k=2 is not one of 3, 4, 5, 6"),
    # tasks
    (("task.name=a/b",), "task.name='a/b' becomes a folder name"),
    (("task=file",), "task.train is not set (??? in the config); give it on the command line, task.train=..."),
    (("task.train={DIR}/none.tsv",), "none.tsv' does not exist; point it at a labelled file"),
    (("task.dev={DIR}",), "is a directory; point it at a labelled file"),
    (("task.test={DIR}/test.csv",), "test.csv' does not exist; point it at a labelled file"),
    (("task.dev_fraction=1",), "task.dev_fraction=1 must be in [0, 1)"),
    (("task.test_fraction=-0.1",), "task.test_fraction=-0.1 must be in [0, 1)"),
    (("task.split_seed=-1",), "task.split_seed=-1 must be in [0, 4294967295]"),
    (("task.type=binary",), "task.type='binary' is not one of auto, classification, regression"),
    (("task.sequence_column=",), "task.sequence_column='' is empty"),
    (("task.label_column=' '",), "task.label_column=' ' is empty"),
    # settings that must agree
    (("task.dev_fraction=0",), "No dev split: give task.dev=<file> or a task.dev_fraction above 0."),
    (("task.dev_fraction=0.5", "task.test_fraction=0.5"),
     "task.dev_fraction=0.5 + task.test_fraction=0.5 leave no training rows"),
    (("task.type=regression", "selection_metric=mcc"), "selection_metric='mcc' is not a regression metric"),
    (("adapter=lora", "freeze_backbone=true"), "adapter=lora with freeze_backbone=true: the adapter trains inside "
     "the encoder"),
]

# The same for suite.py (configs/suite.yaml, suite=gue with pretrained=none unless the case sets it).
SUITE_ROWS: list[tuple[tuple[str, ...], str]] = [
    (("seeds=[]",), "seeds=[] lists no seed; give distinct seeds"),
    (("suite_dir=' '",), "suite_dir=' ' is empty"),
    (("recipe=dnabert3",), "recipe='dnabert3' is not one of dnabert2, dnabert, none"),
    (("datasets=[1]",), "datasets=[1] must list names (text)"),
    (("groups=['']",), "groups=[''] must list names (text)"),
    (("max_retries=-1",), "max_retries=-1 must be >= 0"),
    (("pair=-1",), "pair=-1 must be >= 0"),
    (("summarise=maybe",), "summarise='maybe' is not true or false"),
    (("suite.name=a/b",), "suite.name='a/b' becomes a folder name"),
    (("suite.layout=zip",), "suite.layout='zip' is not one of gue, genomic_benchmarks, nt, files"),
    (("suite.data_dir={DIR}/GUE",), "GUE' does not exist; point it at an existing file or folder"),
    (("suite.dev_fraction=0",), "suite.dev_fraction=0 must be in (0, 1)"),
    (("suite.test_fraction=1",), "suite.test_fraction=1 must be in [0, 1)"),
    (("suite.datasets=7",), "suite.datasets=7 is not a list"),
    (("suite.datasets.0.name=a b",), "suite.datasets[0].name='a b' becomes a folder name"),
    (("suite.datasets.0.group=",), "suite.datasets[0].group='' is empty"),
    (("suite.datasets.0.path=",), "suite.datasets[0].path='' is empty"),
    (("suite.datasets.0.metric=auc",), "suite.datasets[0].metric='auc' is not one of accuracy"),
    *[row for recipe in ("dnabert2", "dnabert") for row in (
        ((f"suite.recipes.{recipe}=7",), f"suite.recipes.{recipe}=7 is not a list"),
        ((f"suite.recipes.{recipe}.0.datasets=some",), "must be all or a list of the suite's dataset names"),
        ((f"suite.recipes.{recipe}.0.lr=0",), f"suite.recipes.{recipe}[0].lr=0 must be > 0"),
        ((f"suite.recipes.{recipe}.0.global_batch_size=0",), "global_batch_size=0 must be >= 1"),
        ((f"suite.recipes.{recipe}.0.max_positions=2",), "max_positions=2 must be >= 3"),
        ((f"suite.recipes.{recipe}.0.max_epochs=0",), "max_epochs=0 must be >= 1"),
        ((f"suite.recipes.{recipe}.0.max_train_steps=0",), "max_train_steps=0 must be >= 1"),
        ((f"suite.recipes.{recipe}.0.warmup_steps=-1",), "warmup_steps=-1 must be >= 0"),
        ((f"suite.recipes.{recipe}.0.eval_every_n_steps=0",), "eval_every_n_steps=0 must be >= 1"),
    )],
    (("datasets=[H3,H5]",), "datasets=['H5'] not in suite gue; choose from H3, H3K14ac"),
    (("groups=[emp]", "datasets=[tf_0]"), "select no dataset of suite gue together; loosen one of them"),
    (("datasets=[H3]", "seeds=[1,2]", "pair=2"), "pair=2: suite gue has 2 pairs with these settings"),
    (("trainer.devices=2",), "suite.py trains each (dataset, seed) on one device, not 2"),
    (("suite.published.source=",), "suite.published.source='' is empty"),
    (("suite.published.scale=0",), "suite.published.scale=0 must be > 0"),
    (("suite.published.models={{DNABERT-2: {{H3: high}}}}",), "entry 'DNABERT-2' must map dataset names to numbers"),
    (("suite.published.models={{DNABERT-2: {{H3: 0.7, H5: 0.5}}}}",),
     "entry 'DNABERT-2' names H5, not datasets of suite.datasets"),
    (("suite.recipes.dnabert2.0.selection_metric=auc",), "selection_metric='auc' is not one of accuracy, f1, mcc"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Bad inputs a user might pass: a directory, a binary file, a text file that is not FASTA; a good table."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "binary.fa").write_bytes(bytes(range(256)) * 8)
    (folder / "notes.fa").write_text("sample sheet\nACGT\n")
    (folder / "reads.csv").write_text("sequence\nACGTACGTACGTAAACCCGGGTTT\n")
    (folder / "plain.fa.gz").write_bytes(gzip.compress(b">chr1\nACGT\n"))
    return {"DIR": str(folder), "BINARY": str(folder / "binary.fa"), "NOT_FASTA": str(folder / "notes.fa"),
            "CSV": str(folder / "reads.csv"), "GZIP": str(folder / "plain.fa.gz")}


@functools.cache
def composed(config_name: str, *group_choices: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(group_choices))


def config_with(*overrides: str, entry: str = "train") -> DictConfig:
    """What `python train.py <overrides>` (entry="finetune": finetune.py) composes: group choices through Hydra,
    values typed by Hydra's parser."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    groups = [o.input_line for o in parsed if o.key_or_group in GROUPS]
    cfg = composed(entry, *groups).copy()
    for override in parsed:
        if override.key_or_group not in GROUPS:
            OmegaConf.update(cfg, override.key_or_group, override.value(), force_add=True)
    return cfg


@pytest.mark.parametrize(("overrides", "fragment"), ROWS, ids=[" ".join(overrides) for overrides, _ in ROWS])
def test_each_bad_setting_is_one_clear_error(files, overrides: tuple[str, ...], fragment: str) -> None:
    cfg = config_with(*(override.format(**files) for override in overrides))
    with pytest.raises(DnabertError) as caught:
        validate_config(cfg)
    message = str(caught.value)
    assert fragment.format(**files) in message
    assert "\n" not in message


@pytest.mark.parametrize(("overrides", "fragment"), FINETUNE_ROWS,
                         ids=[" ".join(overrides) for overrides, _ in FINETUNE_ROWS])
def test_each_bad_finetune_setting_is_one_clear_error(files, overrides: tuple[str, ...], fragment: str) -> None:
    cfg = config_with("pretrained=none", *(override.format(**files) for override in overrides), entry="finetune")
    with pytest.raises(DnabertError) as caught:
        validate_config(cfg)
    message = str(caught.value)
    assert fragment.format(**files) in message
    assert "\n" not in message


@pytest.mark.parametrize(("overrides", "fragment"), SUITE_ROWS,
                         ids=[" ".join(overrides) for overrides, _ in SUITE_ROWS])
def test_each_bad_suite_setting_is_one_clear_error(files, overrides: tuple[str, ...], fragment: str) -> None:
    cfg = config_with("suite=gue", f"suite.data_dir={files['DIR']}", "pretrained=none",
                      *(override.format(**files) for override in overrides), entry="suite")
    with pytest.raises(DnabertError) as caught:
        validate_config(cfg)
    message = str(caught.value)
    assert fragment.format(**files) in message
    assert "\n" not in message


def as_row_key(key: str) -> str:
    """The row a concrete key falls under: list entries and recipe names become `*` (suite.recipes.*.*.lr)."""
    return re.sub(r"^suite\.recipes\.\w+", "suite.recipes.*", re.sub(r"\.\d+(?=\.|$)", ".*", key))


def test_every_row_of_the_schema_has_a_bad_case() -> None:
    tried = {as_row_key(o.split("=")[0].lstrip("+")) for overrides, _ in ROWS + FINETUNE_ROWS + SUITE_ROWS
             for o in overrides}
    assert [setting.key for setting in SETTINGS if setting.key not in tried] == []


# Values of the shipped configs that are not user settings: Hydra's instantiation keys, the derived values shown
# by --cfg job, and the loggers' placement inside the run directory (the report reads csv/ there).
NOT_SETTINGS = re.compile(r"(.*\._target_|.*\._convert_|derived\..*|logger\.\w+\.(save_dir|name|version|id)"
                          r"|logger\.wandb\.config\..*|callbacks\.model_checkpoint\.(dirpath|monitor|mode"
                          r"|auto_insert_metric_name))")
GROUP_OPTIONS = sorted(
    f"{folder.name}={option.stem}" for folder in (ROOT / "configs").iterdir()
    if folder.is_dir() and folder.name in PRETRAINING_GROUPS for option in folder.glob("*.yaml")
)
# Settings each option needs besides its own to form a runnable config (a file to read, a batch that divides).
NEEDS = {"data=grch38": ("data.fasta=DEMO",), "data=genomes": ("data.fasta=DEMO",),
         "experiment=dnabert2_paper": ("data.fasta=DEMO",), "tokenizer=bpe": ("masking=token",),
         "data=sequences": ("data.path=CSV",),
         "trainer=gpu_multinode": ("global_batch_size=256",)} | {
    f"experiment=dnabert{k}_paper": ("data.fasta=DEMO",) for k in (3, 4, 5, 6)}


def leaf_keys(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    keys = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else [("*", v) for v in node]
    for key, value in items:
        full = f"{prefix}{key}"
        holds_settings = isinstance(value, DictConfig) or (
            isinstance(value, ListConfig) and len(value) and isinstance(value[0], DictConfig))
        keys += leaf_keys(value, f"{full}.") if holds_settings else [full]
    return keys


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_shipped_configs_are_valid_and_every_value_has_a_row(files, monkeypatch, option: str) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 16)  # as on the GPU node that the gpu configs are for
    needs = [need.replace("DEMO", str(DEMO_FASTA)).replace("CSV", files["CSV"]) for need in NEEDS.get(option, ())]
    cfg = config_with(option, *needs)
    validate_config(cfg)
    rows = {setting.key for setting in SETTINGS}
    uncovered = [key for key in leaf_keys(cfg) if key not in rows and not NOT_SETTINGS.fullmatch(key)]
    assert uncovered == [], f"add rows to dnabert.run.validate.SETTINGS for {uncovered}"


FINETUNE_OPTIONS = sorted(f"task={option.stem}" for option in (ROOT / "configs" / "task").glob("*.yaml"))


SUITE_OPTIONS = sorted(f"suite={option.stem}" for option in (ROOT / "configs" / "suite").glob("*.yaml"))
# The published scores are data (model -> dataset -> score), checked as one value.
SUITE_DATA = re.compile(r"suite\.published\.models\..*")


@pytest.mark.parametrize("option", SUITE_OPTIONS)
def test_shipped_suite_configs_are_valid_and_every_value_has_a_row(files, option: str) -> None:
    cfg = config_with(option, "pretrained=none", f"suite.data_dir={files['DIR']}", entry="suite")
    validate_config(cfg)
    rows = {setting.key for setting in SETTINGS}
    uncovered = [as_row_key(key) for key in leaf_keys(cfg)]
    uncovered = [key for key in uncovered if key not in rows and not NOT_SETTINGS.fullmatch(key)
                 and not SUITE_DATA.fullmatch(key)]
    assert uncovered == [], f"add rows to dnabert.run.validate.SETTINGS for {uncovered}"


@pytest.mark.parametrize("option", FINETUNE_OPTIONS)
def test_shipped_finetune_configs_are_valid_and_every_value_has_a_row(files, option: str) -> None:
    cfg = config_with(option, "pretrained=none", f"task.train={files['CSV']}", entry="finetune")
    validate_config(cfg)
    rows = {setting.key for setting in SETTINGS}
    uncovered = [key for key in leaf_keys(cfg) if key not in rows and not NOT_SETTINGS.fullmatch(key)]
    assert uncovered == [], f"add rows to dnabert.run.validate.SETTINGS for {uncovered}"


def test_estimate_reads_no_files() -> None:
    """An estimate describes a cluster run; the genome need not exist on this machine."""
    validate_config(config_with("experiment=dnabert6_paper", "estimate=true"))
    with pytest.raises(DnabertError, match=r"data.fasta is not set \(\?\?\? in the config\)"):
        validate_config(config_with("experiment=dnabert6_paper"))


def test_flex_estimate_is_accepted_without_a_trial_on_this_cpu() -> None:
    """An estimate of a FlexAttention GPU run trains nothing here (a login node); its trial on a CPU would."""
    flex = ("experiment=dnabert6_paper", f"data.fasta={DEMO_FASTA}", "model.attention=flex",
            "model.attention_probs_dropout_prob=0")
    validate_config(config_with(*flex, "estimate=true"))
    if not torch.cuda.is_available():
        with pytest.raises(DnabertError, match="model.attention='flex' cannot train on a CPU"):
            validate_config(config_with(*flex, "estimate=true", "estimate_trial=true"))


def run_train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize(("entry", "spelling"), [("train.py", "k=4"), ("train.py", "+k=4"), ("finetune.py", "k=4")])
def test_old_k_is_refused_with_its_new_name(tmp_path, entry: str, spelling: str) -> None:
    """k moved into the k-mer tokenizer's settings: the old spelling (Hydra: "Key 'k' is not in struct", or with +
    a key nothing reads) is one line naming tokenizer.k, before Hydra makes a run folder, from both entry points."""
    result = subprocess.run([sys.executable, str(ROOT / entry), spelling, f"paths.output_root={tmp_path / 'out'}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dnabert: error: k=4 is now tokenizer.k=4 (the k-mer size is a setting of the k-mer tokenizer); use "
        "tokenizer.k=4."]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_rows_exit_2_with_one_line(tmp_path) -> None:
    """Through the real entry point: before, bf17 was Lightning's ValueError under Hydra (exit 1) in a run folder
    left behind, a FASTA with a record name twice ended in pyfaidx's ValueError (found when the data is opened, not
    up front), Hydra made the folder of a run name with '..' before any check, and FlexAttention on a CPU trained
    into torch's NotImplementedError at the first backward."""
    duplicated = tmp_path / "twice.fa"
    duplicated.write_text(">chr1\n" + "ACGT" * 30 + "\n>chr1\n" + "TTGCA" * 30 + "\n")
    cases = [
        (["trainer.precision=bf17"], "trainer.precision='bf17' is not one of auto"),
        ([f"data.fasta={duplicated}", "data.num_workers=0"], f"FASTA file {duplicated} has two records named"),
        (["run_name=../escape"], "run_name='../escape' becomes a folder name"),
        (["data.pack_rows=true", "model.attention=flex", "model.attention_probs_dropout_prob=0"],
         "model.attention='flex' cannot train on a CPU"),
    ]
    for overrides, fragment in cases:
        result = run_train(*overrides, f"paths.output_root={tmp_path / 'out'}", "export=false")
        assert result.returncode == 2, result.stderr[-3000:]
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("dnabert: error: ") and fragment in last_line, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert result.stderr.count("dnabert: error:") == 1
        if overrides == ["trainer.precision=bf17"]:  # refused before Hydra made the run folder
            assert not (tmp_path / "out").exists()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["demo"]  # Hydra made no outputs/escape


def test_fasta_errors_found_when_opened(tmp_path) -> None:
    """What only reading the file reveals, for callers of Genome.open that skip the up-front check."""
    cases = {
        "twice.fa": (b">a\nACGTACGT\n>a\nACGTACGT\n", "has two records named \"a\""),
        "binary.fa": (b">a\nACGT\xff\xfe\x00ACGT\n", "is not text"),
    }
    for name, (content, fragment) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DnabertError, match=re.escape(fragment)):
            Genome.open(GenomeSource(name, tmp_path / name), k=3, cache_dir=tmp_path / "cache")
    with pytest.raises(DnabertError, match="is a directory"):
        Genome.open(GenomeSource("folder", tmp_path), k=3, cache_dir=tmp_path / "cache")


def test_fasta_damaged_mid_run_is_a_dnabert_error_in_one_line(tmp_path) -> None:
    """A check that cannot be made up front: the FASTA changes under a running data stream. Before, the non-A/C/G/T
    codes became out-of-vocabulary ids. In a DataLoader worker torch re-raises the error with the worker's
    traceback as its message; what train.py prints is still the one line."""
    fasta = tmp_path / "genome.fa"
    shutil.copy(DEMO_FASTA, fasta)
    data = GenomeDataModule([{"name": "g", "fasta": str(fasta)}], k=6, micro_batch_size=4, num_workers=0,
                            max_tokens=64, val_fraction=0.0, cache_dir=tmp_path / "cache", pin_memory=False)
    data.setup()
    with fasta.open("r+b") as handle:  # same size, same line layout: every base after the header becomes N
        header = handle.readline()
        body = handle.read()
        handle.seek(len(header))
        handle.write(re.sub(rb"[ACGTacgt]", b"N", body))
    with pytest.raises(DnabertError) as caught:
        next(iter(data.train_dataloader()))
    message = str(caught.value)
    assert message.startswith("genome 'g' (") and str(fasta) in message and "changed or was damaged" in message
    try:
        raise caught.value
    except DnabertError:
        from_worker = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DnabertError) as reraised:
        from_worker.reraise()
    assert "Traceback" in str(reraised.value) and user_message(reraised.value) == message


@pytest.mark.parametrize(("config_name", "overrides", "message"), [
    ("train", ["model.hiden_size=3"], "model.hiden_size is not a setting of configs/train.yaml with the chosen config "
     "groups; check its spelling (`--cfg job` prints every setting)."),
    ("train", ["experiment=dnabert2_demo", "tokenizer.k=4"], "tokenizer.k is not a setting of configs/train.yaml"),
    ("train", ["masking=centre"], "masking=centre names no file in configs/masking/; choose one of original, token, "
     "whole_kmer."),
    ("finetune", ["pretrained=none", "tsk=x"], "tsk is not a setting of configs/finetune.yaml"),
])
def test_misspelt_settings_and_unknown_options_are_one_line_before_hydra(config_name, overrides, message,
                                                                        capsys) -> None:
    """Hydra's own words for these end in exit 1 and advise `+key=value`, which adds a key nothing reads."""
    with pytest.raises(SystemExit) as exit_info:
        validate_before_hydra(ROOT / "configs", config_name, overrides)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dnabert: error: {message}")
