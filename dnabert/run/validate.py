"""Every user-settable value of the composed config, checked before anything starts, in one table.

Why: a mistyped setting used to end deep inside a library (Lightning's precision ValueError under Hydra's "Error
executing job", torch's "Invalid learning rate"), misreported by a later check (max_steps=0 as a problem of
masking.final_rate_steps), or, worst, in a dataloader worker after the ranks had started. `validate_config` runs
in train.py and finetune.py on the composed config before Hydra makes the run directory, and again first in
`dnabert.run.training.run` and `dnabert.run.finetuning.run_finetune`, before the data, the model or any DDP rank
exists; it raises one DnabertError that names the first bad setting and its fix.

How to extend: a row of `SETTINGS` says what one setting may hold (type, range, choices, or a `check` for
anything else); a row applies only where its key is present in the composed config, so pretraining
(configs/train.yaml) and fine-tuning (configs/finetune.yaml, task.*) share one table, and a config group or entry
point added later plugs in by adding rows. tests/test_validate.py fails for any value of any shipped config group
that no row covers. Settings that must agree with each other are
`AGREEMENTS`, checked after every single setting is known to be sane.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import lightning as L
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue, OmegaConfBaseException

from dnabert.data.datamodule import check_pack_row_tokens
from dnabert.data.labelled import TASK_TYPES
from dnabert.data.masking import MASKING_MODES
from dnabert.data.sources import FORMATS
from dnabert.data.suites import LAYOUTS
from dnabert.data.tokenizers.kmer import SUPPORTED_K, vocab_size
from dnabert.data.tokenizers.special import NUM_SPECIAL_TOKENS
from dnabert.data.windows import LENGTH_RULES
from dnabert.errors import DnabertError
from dnabert.models import DEFAULT_FAMILY, FAMILIES, get_family
from dnabert.models.components import ATTENTION_BACKENDS, check_attention_backend
from dnabert.run.config import (
    accumulation_steps,
    declared_device_count,
    mask_switch_step,
    resolve_device_count,
    runs_on_gpu,
)
from dnabert.run.estimate import GPU_PEAK_FLOPS, peak_flops_for
from dnabert.tasks.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, SELECTION_METRICS, selection_metric

# What is wrong with a value ("is empty"), with its own fix after "; " where the row's would not fit ("is not
# readable; fix its permissions"), or None when the value is fine.
Check = Callable[[Any, DictConfig], str | None]

INT = (int,)
NUMBER = (int, float)
BOOL = (bool,)
TEXT = (str,)
LIST = (list,)
KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", list: "a list",
              dict: "a group of settings"}
_ABSENT = object()


@dataclass(frozen=True)
class Range:
    """An interval of numbers, printed the way the message shows it (">= 1", "in [0, 1)")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number_text(number: float | None) -> str:
    return str(int(number)) if number is not None and float(number).is_integer() else str(number)


POSITIVE = Range(0, low_open=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1, high_open=True)
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)
SEED = Range(0, 2**32 - 1)  # what Lightning's seed_everything and numpy accept


@dataclass(frozen=True)
class Setting:
    """What one setting may hold. `key` is dotted; `*` stands for every entry of a list ("data.genomes.*.fasta").

    `fix` says what to set instead and ends every message about this row except a `check`'s own. `on_disk` rows
    look at files; they are skipped where no data is read (estimate=true)."""

    key: str
    kind: tuple[type, ...]
    fix: str
    within: Range | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    check: Check | None = None
    on_disk: bool = False

    def problem(self, value: Any, cfg: DictConfig) -> str | None:
        """What is wrong with `value` (without the setting's name), or None."""
        if value is None:
            return None if self.optional else f"is null; {self.fix}"
        if not _is_kind(value, self.kind):
            kinds = " or ".join(KIND_NAMES[kind] for kind in self.kind)
            return f"is not {kinds}{' (or null)' if self.optional else ''}; {self.fix}"
        if self.within is not None and value not in self.within:
            return f"must be {self.within}; {self.fix}"
        if self.choices is not None and value not in self.choices:
            return f"is not one of {', '.join(dict.fromkeys(map(str, self.choices)))}; {self.fix}"
        problem = self.check(value, cfg) if self.check else None
        return f"{problem}; {self.fix}" if problem and "; " not in problem else problem


def _is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    """bool is never a number here: `optim.lr=true` is a mistake, not 1.0."""
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


# ------------------------------------------------------------------------------------------------ checks
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,199}")
GZIP_MAGIC = b"\x1f\x8b"


def folder_name(value: str, cfg: DictConfig) -> str | None:
    """Names that become one folder of the run directory (outputs/<experiment_name>/<run_name>)."""
    if NAME_PATTERN.fullmatch(value):
        return None
    return ("becomes a folder name: use letters, digits and . _ - + = , @, starting with a letter or digit (no '/', "
            "no spaces), at most 200 characters")


def _file_problem(path: Path, what: str) -> str | None:
    if not path.exists():
        return f"does not exist; point it at {what}"
    if path.is_dir():
        return f"is a directory; point it at {what} inside it"
    if not os.access(path, os.R_OK):
        return "is not readable; fix its permissions (chmod a+r) or point it at a readable copy"
    return None


def fasta_file(value: str, cfg: DictConfig) -> str | None:
    """A FASTA starts with a '>' header (or is bgzip/gzip-compressed); anything else would end inside pyfaidx."""
    path = Path(value).expanduser()
    problem = _file_problem(path, "a FASTA file (.fa, or .fa.gz compressed with bgzip)")
    if problem:
        return problem
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(GZIP_MAGIC):
        if head[3] & 4 and head[12:14] == b"BC":  # BGZF: gzip with an extra field "BC" holding the block size
            return None
        return (f"is gzip-compressed but not with bgzip, so it cannot be read at random positions; re-compress it "
                f"(`zcat {path.name} | bgzip > new.fa.gz`) or decompress it")
    if head.lstrip().startswith(b">"):
        return None
    if not head.strip():
        return "is empty; point it at a FASTA file with '>' header lines"
    try:
        head.decode("ascii")
    except UnicodeDecodeError:
        return "is not a text file (nor gzip-compressed); point it at a FASTA file (.fa, or .fa.gz from bgzip)"
    return "does not start with a '>' header line, so it is not a FASTA file; point it at a FASTA file"


def fasta_files(value: str | list, cfg: DictConfig) -> str | None:
    """A genome's `fasta` is one file or a list of files (assembled per chromosome)."""
    for path in [value] if isinstance(value, str) else value:
        problem = fasta_file(path, cfg) if isinstance(path, str) else "must list paths of FASTA files"
        if problem:
            return problem if isinstance(value, str) else f"entry {path!r} {problem}"
    return None


def existing_path(value: str, cfg: DictConfig) -> str | None:
    return None if Path(value).expanduser().exists() else "does not exist; point it at an existing file or folder"


def existing_file(value: str, cfg: DictConfig) -> str | None:
    return _file_problem(Path(value).expanduser(), "a file")


def labelled_file(value: str, cfg: DictConfig) -> str | None:
    return _file_problem(Path(value).expanduser(), "a labelled file (DNABERT's tsv, or a csv/tsv/parquet/json table)")


def existing_directory(value: str, cfg: DictConfig) -> str | None:
    path = Path(value).expanduser()
    if path.is_dir():
        return None
    return f"is {'a file' if path.exists() else 'missing'}; point it at a directory saved by save_pretrained"


def backbone(value: str, cfg: DictConfig) -> str | None:
    """Fine-tuning's `pretrained`: a path (what it holds is read when the run starts) or none."""
    return None if value.lower() == "none" or Path(value).exists() else "does not exist"


def not_blank(value: str, cfg: DictConfig) -> str | None:
    return "is empty" if not value.strip() else None


def fraction_pair(value: list, cfg: DictConfig) -> str | None:
    if len(value) == 2 and all(_is_kind(beta, NUMBER) and beta in PROBABILITY for beta in value):
        return None
    return "must be two numbers in [0, 1) (Adam's beta1, beta2); e.g. optim.betas=[0.9,0.98]"


def names_list(value: list, cfg: DictConfig) -> str | None:
    if all(isinstance(name, str) and name for name in value):
        return None
    return "must list contig names (text), e.g. [chrX,chrY]"


def layer_names(value: list, cfg: DictConfig) -> str | None:
    return None if value and all(isinstance(name, str) and name for name in value) else "must list layer names"


def distinct_seeds(value: list, cfg: DictConfig) -> str | None:
    if not value:  # an empty list would train nothing (a suite: a card over no run)
        return "lists no seed"
    if not all(_is_kind(seed, INT) and seed in SEED for seed in value):
        return f"must list whole-number seeds {SEED}"
    return "repeats a seed" if len(set(value)) != len(value) else None


def device_count(value: Any, cfg: DictConfig) -> str | None:
    if value in ("auto", -1) or (_is_kind(value, INT) and value >= 1):
        return None
    return "is not a device count; give the devices per node (e.g. trainer.devices=8) or auto"


def strategy(value: Any, cfg: DictConfig) -> str | None:
    if isinstance(value, dict):
        return None if "_target_" in value else "has no _target_; name the Lightning strategy class to build"
    choices = ["auto", *StrategyRegistry.available_strategies()]
    if value in choices:
        return None
    return f"is not a Lightning strategy; use auto, ddp, ... ({', '.join(choices[:6])}, ...)"


def known_family(value: str, cfg: DictConfig) -> str | None:
    """A registered family, or an importable `module.path:FAMILY` (dnabert.models.get_family)."""
    try:
        get_family(value)
    except DnabertError as err:
        return f"cannot be imported ({err.__cause__})" if err.__cause__ else "is unknown"
    return None


def gpu_name(value: str, cfg: DictConfig) -> str | None:
    try:
        peak_flops_for(value)
    except DnabertError:
        return f"is not in the estimate's GPU table ({', '.join(GPU_PEAK_FLOPS)}); name one of those, or null"
    return None


def fits_k(value: int, cfg: DictConfig) -> str | None:
    k = cfg.tokenizer.k
    needed = vocab_size(k)
    if value == needed:
        return None
    return f"does not fit tokenizer.k={k} (needs {needed}); leave it at ${{vocab_size:${{tokenizer.k}}}}"


def uses_bpe(cfg: DictConfig) -> bool:
    return OmegaConf.select(cfg, "tokenizer.kind", default="kmer") == "bpe"


def fits_tokenizer(value: int, cfg: DictConfig) -> str | None:
    """k-mers: the vocabulary of k; BPE: the configured tokenizer size (the trained file's is checked at start)."""
    if not uses_bpe(cfg):
        return fits_k(value, cfg)
    wanted = OmegaConf.select(cfg, "tokenizer.vocab_size")
    if value == wanted:
        return None
    return f"differs from tokenizer.vocab_size={wanted}; leave it at ${{tokenizer.vocab_size}}"


def tokenizer_size(value: int, cfg: DictConfig) -> str | None:
    """k-mers: fixed by k; BPE: room for the special tokens and the four nucleotides, at least."""
    if not uses_bpe(cfg):
        return fits_k(value, cfg)
    return None if value > NUM_SPECIAL_TOKENS + 4 else "leaves no room beyond the special tokens and A/C/G/T"


def same_as_k(value: int, cfg: DictConfig) -> str | None:
    """k-mer runs read windows with the tokenizer's k; BPE runs (no tokenizer.k) keep windows of at least data.k bp,
    which the window code checks like a k-mer size."""
    k = OmegaConf.select(cfg, "tokenizer.k", default=None)
    if k is None:
        return None if value in SUPPORTED_K else f"is not one of {', '.join(map(str, SUPPORTED_K))}"
    return None if value == k else f"differs from tokenizer.k={k}"


def _precisions() -> tuple[Any, ...]:
    """Lightning's accepted precision values, plus our "auto" (dnabert.run.config.auto_precision)."""
    return ("auto", *(value for literal in get_args(_PRECISION_INPUT) for value in get_args(literal)))


def text_list(value: list, cfg: DictConfig) -> str | None:
    return None if all(isinstance(name, str) and name for name in value) else "must list names (text)"


def recipe_datasets(value: str | list, cfg: DictConfig) -> str | None:
    if value == "all" or (isinstance(value, list) and not text_list(value, cfg)):
        return None
    return "must be all or a list of the suite's dataset names"


def published_scores(value: dict, cfg: DictConfig) -> str | None:
    """model -> {dataset: score}; a dataset name the suite lacks (a typo) would drop its score from the card."""
    rows = OmegaConf.select(cfg, "suite.datasets", default=None) or []
    names = {str(row.get("name")) for row in rows if isinstance(row, DictConfig)}
    for model, scores in value.items():
        if not isinstance(scores, dict) or not all(_is_kind(v, NUMBER) for v in scores.values()):
            return f"entry {model!r} must map dataset names to numbers"
        unknown = sorted(set(scores) - names)
        if unknown:
            return f"entry {model!r} names {', '.join(unknown)}, not datasets of suite.datasets"
    return None


def known_recipe(value: str, cfg: DictConfig) -> str | None:
    """A preset of the suite's config (suite.recipes: the authors' names), or none (finetune.py's settings)."""
    choices = [*OmegaConf.select(cfg, "suite.recipes", default={}), "none"]
    return None if value in choices else f"is not one of {', '.join(choices)}"


def suite_recipe_rows() -> tuple[Setting, ...]:
    """The rows of every recipe's preset blocks (configs/suite/*.yaml, suite.recipes.<recipe>: a list of blocks)."""
    key = "suite.recipes.*"
    return (
        Setting(key, LIST, "list preset blocks {datasets, lr, global_batch_size, ...}"),
        Setting(f"{key}.*.datasets", (str, list), "e.g. datasets: [H3, H4] or all", check=recipe_datasets),
        Setting(f"{key}.*.lr", NUMBER, "e.g. lr: 3.0e-5", within=POSITIVE),
        Setting(f"{key}.*.global_batch_size", INT, "e.g. global_batch_size: 32", within=AT_LEAST_1),
        Setting(f"{key}.*.max_positions", INT, "or null (the backbone's)", optional=True, within=Range(3)),
        Setting(f"{key}.*.max_epochs", INT, "e.g. max_epochs: 3", within=AT_LEAST_1),
        Setting(f"{key}.*.max_train_steps", INT, "or null", optional=True, within=AT_LEAST_1),
        Setting(f"{key}.*.warmup_steps", INT, "or null (optim.warmup_fraction)", optional=True, within=NON_NEGATIVE),
        Setting(f"{key}.*.eval_every_n_steps", INT, "or null (every epoch)", optional=True, within=AT_LEAST_1),
        Setting(f"{key}.*.selection_metric", TEXT, "the dev metric that picks the checkpoint, e.g. loss, or null (mcc)",
                optional=True, choices=SELECTION_METRICS),
    )


# ------------------------------------------------------------------------------------------------ the table
_TO_FASTA = "point it at a FASTA file, e.g. data.fasta=/data/GRCh38.fa"
SETTINGS: tuple[Setting, ...] = (
    # top level (configs/train.yaml); fine-tuning (suites) names its experiment after task.name (suite.name), first
    Setting("task.name", TEXT, "name the task, e.g. task.name=promoters", check=folder_name),
    Setting("suite.name", TEXT, "name the suite (suite.py names its experiment after it)", check=folder_name),
    Setting("experiment_name", TEXT, "pick an experiment (experiment=demo) or set experiment_name", check=folder_name),
    Setting("run_name", TEXT, "e.g. run_name=lr4e-4", check=folder_name),
    Setting("suite_dir", TEXT, "point it at a writable folder (suite.py's paths.output_dir derives from it)",
            check=not_blank),
    # before the rows whose defaults derive from it (model.vocab_size, data.k)
    Setting("tokenizer.k", INT, "set tokenizer.k to a supported k-mer size", choices=SUPPORTED_K),
    Setting("seed", INT, "e.g. seed=42", within=SEED),
    Setting("global_batch_size", INT, "set the sequences per optimiser step, e.g. global_batch_size=2000",
            within=AT_LEAST_1),
    Setting("max_steps", INT, "set the number of optimiser steps, e.g. max_steps=120000", within=AT_LEAST_1),
    Setting("ckpt_path", TEXT, "point it at a .ckpt file, or null to continue from the run directory",
            optional=True, check=existing_file, on_disk=True),
    Setting("estimate", BOOL, "use estimate=true or estimate=false"),
    Setting("estimate_gpu", TEXT, "e.g. estimate_gpu=h100", optional=True, check=gpu_name),
    Setting("estimate_mfu", NUMBER, "e.g. estimate_mfu=0.45", within=Range(0, 1, low_open=True)),
    Setting("estimate_trial", (str, bool), "use auto, true or false", choices=("auto", True, False)),
    Setting("export", BOOL, "use export=true or export=false"),
    Setting("max_consecutive_nonfinite", INT, "e.g. max_consecutive_nonfinite=20", within=AT_LEAST_1),
    Setting("lock_run_dir", BOOL, "use lock_run_dir=true, or false where the file system has no working locks"),
    # paths (configs/paths/default.yaml): other groups interpolate them
    Setting("paths.root_dir", TEXT, "point it at the dnabert checkout", check=not_blank),
    Setting("paths.output_root", TEXT, "point it at a writable folder", check=not_blank),
    Setting("paths.output_dir", TEXT, "point it at a writable folder", check=not_blank),
    Setting("paths.cache_dir", TEXT, "point it at a writable folder", check=not_blank),
    # the downstream probe (dnabert/run/probe.py)
    Setting("probe.path", TEXT, "point it at a labelled file, or null for no probe", optional=True,
            check=existing_file, on_disk=True),
    Setting("probe.max_sequences", INT, "e.g. probe.max_sequences=1000", within=Range(4)),
    Setting("probe.test_fraction", NUMBER, "e.g. probe.test_fraction=0.5", within=OPEN_FRACTION),
    Setting("probe.seed", INT, "e.g. probe.seed=0", within=SEED),
    Setting("probe.batch_size", INT, "e.g. probe.batch_size=256", within=AT_LEAST_1),
    Setting("probe.sequence_column", TEXT, "name the column holding the sequences", check=not_blank),
    Setting("probe.label_column", TEXT, "name the column holding the labels", check=not_blank),
    Setting("probe.variants.vcf", TEXT, "point it at a VCF of labelled SNVs, or null for no variant probe",
            optional=True, check=existing_file, on_disk=True),
    Setting("probe.variants.reference", TEXT, "point it at the FASTA the VCF refers to", optional=True,
            check=fasta_file, on_disk=True),
    Setting("probe.variants.label", TEXT, "name the INFO key holding 1 or 0", check=not_blank),
    Setting("probe.variants.max_variants", INT, "e.g. probe.variants.max_variants=1000", within=Range(4)),
    Setting("probe.variants.batch_size", INT, "e.g. probe.variants.batch_size=64", within=AT_LEAST_1),
    # data: genomes (configs/data/demo.yaml, grch38.yaml, mixed_demo.yaml)
    Setting("data.fasta", TEXT, _TO_FASTA, optional=True, check=fasta_file, on_disk=True),
    Setting("data.genomes", LIST, "list genomes as {name, fasta, weight}, or set data.fasta"),
    Setting("data.genomes.*.name", TEXT, "give every genome a name", check=not_blank),
    Setting("data.genomes.*.fasta", (str, list), _TO_FASTA, check=fasta_files, on_disk=True),
    Setting("data.genomes.*.weight", NUMBER, "give every genome a weight >= 0 (its share of the stream)",
            within=NON_NEGATIVE),
    Setting("data.genomes.*.include", LIST, "list contig names to keep, or null", optional=True, check=names_list),
    Setting("data.genomes.*.exclude", LIST, "list contig names to drop, or null", optional=True, check=names_list),
    Setting("data.val_block_size", INT, "e.g. data.val_block_size=100000 (bp)", within=AT_LEAST_1),
    Setting("data.val_contigs", LIST, "list contig names to hold out, or []", check=names_list),
    # data: tables of sequences (configs/data/sequences.yaml)
    Setting("data.path", TEXT, "set data.path=/path/to/sequences.parquet (csv, json, ...)", check=existing_path,
            on_disk=True),
    Setting("data.format", TEXT, "or null to tell it from the extension", optional=True, choices=FORMATS),
    Setting("data.sequence_column", TEXT, "name the column holding the sequences", check=not_blank),
    Setting("data.val_path", TEXT, "point it at a validation file, or null", optional=True, check=existing_path,
            on_disk=True),
    # data: what every corpus shares
    Setting("data.k", INT, "leave data.k at ${oc.select:tokenizer.k,6}", check=same_as_k),
    Setting("data.micro_batch_size", INT, "e.g. data.micro_batch_size=10", within=AT_LEAST_1),
    Setting("data.num_workers", INT, "use 0 (read in the main process) or more worker processes",
            within=NON_NEGATIVE),
    Setting("data.seed", INT, "leave data.seed at ${seed}", within=SEED),
    Setting("data.length_rule", TEXT, "pick the window length rule", choices=LENGTH_RULES),
    Setting("data.max_tokens", INT, "e.g. data.max_tokens=512 ([CLS] + k-mers + [SEP])", within=Range(3)),
    Setting("data.val_fraction", NUMBER, "the share held out for validation, e.g. data.val_fraction=0.01",
            within=PROBABILITY),
    Setting("data.split_seed", INT, "e.g. data.split_seed=0", within=SEED),
    Setting("data.val_max_windows", INT, "e.g. data.val_max_windows=2000", within=AT_LEAST_1),
    Setting("data.reverse_complement", BOOL, "use true or false"),
    Setting("data.pack_rows", BOOL, "use true or false"),
    Setting("data.pack_row_tokens", INT, "or null (= data.max_tokens)", optional=True, within=Range(3)),
    Setting("data.cache_dir", TEXT, "point it at a writable folder", check=not_blank),
    Setting("data.batches_per_transfer", INT, "e.g. data.batches_per_transfer=8", within=AT_LEAST_1),
    Setting("data.pad_to_multiple_of", INT, "e.g. data.pad_to_multiple_of=8", within=AT_LEAST_1),
    Setting("data.pin_memory", BOOL, "use true or false"),
    Setting("data.rank", INT, "or null (from the trainer)", optional=True, within=NON_NEGATIVE),
    Setting("data.world_size", INT, "or null (from the trainer)", optional=True, within=AT_LEAST_1),
    Setting("data.start_position", INT, "or null (from the checkpoint)", optional=True, within=NON_NEGATIVE),
    # model (configs/model/*.yaml)
    Setting("model.family", TEXT, f"pick the model code: {', '.join(FAMILIES)}, or module.path:FAMILY",
            check=known_family),
    Setting("model.vocab_size", INT, "leave it at ${tokenizer.vocab_size}", check=fits_tokenizer),
    Setting("model.alibi_starting_size", INT, "leave it at 512 (DNABERT-2's)", within=AT_LEAST_1),
    Setting("model.hidden_size", INT, "e.g. model.hidden_size=768", within=AT_LEAST_1),
    Setting("model.num_hidden_layers", INT, "e.g. model.num_hidden_layers=12", within=AT_LEAST_1),
    Setting("model.num_attention_heads", INT, "e.g. model.num_attention_heads=12", within=AT_LEAST_1),
    Setting("model.intermediate_size", INT, "e.g. model.intermediate_size=3072", within=AT_LEAST_1),
    Setting("model.max_position_embeddings", INT, "e.g. model.max_position_embeddings=512", within=AT_LEAST_1),
    Setting("model.type_vocab_size", INT, "leave it at 2 (BERT's layout)", within=AT_LEAST_1),
    Setting("model.hidden_dropout_prob", NUMBER, "e.g. model.hidden_dropout_prob=0.1", within=PROBABILITY),
    Setting("model.attention_probs_dropout_prob", NUMBER, "e.g. model.attention_probs_dropout_prob=0.1",
            within=PROBABILITY),
    Setting("model.layer_norm_eps", NUMBER, "e.g. model.layer_norm_eps=1e-12", within=POSITIVE),
    Setting("model.initializer_range", NUMBER, "e.g. model.initializer_range=0.02", within=POSITIVE),
    Setting("model.hidden_act", TEXT, "use one of transformers' activations such as gelu, gelu_new or relu"),
    Setting("model.init_from", TEXT, "or null to start from random weights", optional=True,
            check=existing_directory, on_disk=True),
    Setting("model.compile", BOOL, "use true or false"),
    Setting("model.attention", TEXT, "pick the attention kernel", choices=ATTENTION_BACKENDS),
    Setting("model.head_on_masked_only", BOOL, "use true or false"),
    # tokenizer (configs/tokenizer/*.yaml)
    Setting("tokenizer.kind", TEXT, "use tokenizer=kmer or tokenizer=bpe", choices=("kmer", "bpe")),
    Setting("tokenizer.vocab_size", INT, "e.g. tokenizer.vocab_size=4096 (BPE)", check=tokenizer_size),
    Setting("tokenizer.file", TEXT, "or null to train one on first use", optional=True, check=existing_path,
            on_disk=True),
    Setting("tokenizer.train_bp", INT, "e.g. tokenizer.train_bp=100000000", within=AT_LEAST_1),
    Setting("tokenizer.window_bp", INT, "e.g. tokenizer.window_bp=700 (fills 128 tokens)", within=AT_LEAST_1),
    # masking (configs/masking/*.yaml)
    Setting("masking.mode", TEXT, "pick the masking scheme", choices=MASKING_MODES),
    Setting("masking.rate", NUMBER, "e.g. masking.rate=0.15", within=OPEN_FRACTION),
    Setting("masking.final_rate", NUMBER, "e.g. masking.final_rate=0.20", within=OPEN_FRACTION),
    Setting("masking.final_rate_steps", INT, "the last N steps use final_rate; 0: never switch",
            within=NON_NEGATIVE),
    # optim (configs/optim/adamw.yaml)
    Setting("optim.lr", NUMBER, "set the peak learning rate, e.g. optim.lr=4e-4", within=POSITIVE),
    Setting("optim.betas", LIST, "e.g. optim.betas=[0.9,0.98]", check=fraction_pair),
    Setting("optim.eps", NUMBER, "e.g. optim.eps=1e-6", within=POSITIVE),
    Setting("optim.weight_decay", NUMBER, "e.g. optim.weight_decay=0.01", within=NON_NEGATIVE),
    Setting("optim.warmup_steps", INT, "e.g. optim.warmup_steps=10000", within=NON_NEGATIVE),
    Setting("optim.total_steps", INT, "or null (= max_steps)", optional=True, within=AT_LEAST_1),
    Setting("optim.fused", BOOL, "use true or false"),
    # fine-tuning (configs/finetune.yaml; finetune.py shares seed, export, run names, model, tokenizer, optim,
    # trainer, logger and paths with pretraining)
    Setting("pretrained", TEXT, "give a pretraining run directory, a .ckpt, a transformers or MultiMolecule model "
            "directory, or none", optional=True, check=backbone, on_disk=True),
    Setting("seeds", LIST, "give distinct seeds, e.g. seeds=[1,2,3], or null (one run with seed)", optional=True,
            check=distinct_seeds),
    Setting("max_epochs", INT, "e.g. max_epochs=3", within=AT_LEAST_1),
    Setting("max_train_steps", INT, "or null (max_epochs decide)", optional=True, within=AT_LEAST_1),
    Setting("warmup_steps", INT, "or null (optim.warmup_fraction)", optional=True, within=NON_NEGATIVE),
    Setting("eval_every_n_steps", INT, "or null (every epoch)", optional=True, within=AT_LEAST_1),
    Setting("batch_size", INT, "sequences per optimiser step per device, e.g. batch_size=32", within=AT_LEAST_1),
    Setting("freeze_backbone", BOOL, "use true (a linear probe) or false"),
    Setting("adapter", TEXT, "use none (train all weights) or lora (a LoRA adapter and the head)",
            choices=("none", "lora")),
    Setting("lora.r", INT, "the adapter's rank, e.g. lora.r=8", within=AT_LEAST_1),
    Setting("lora.alpha", NUMBER, "the update's scale is alpha / r, e.g. lora.alpha=16", within=POSITIVE),
    Setting("lora.dropout", NUMBER, "e.g. lora.dropout=0.05", within=PROBABILITY),
    Setting("lora.target_modules", LIST, "list layer names, e.g. lora.target_modules=[query,value], or null (the "
            "family's default)", optional=True, check=layer_names),
    Setting("dropout", NUMBER, "e.g. dropout=0.1", within=PROBABILITY),
    Setting("max_positions", INT, "tokens per window incl. [CLS]/[SEP], or null (the backbone's)", optional=True,
            within=Range(3)),
    Setting("selection_metric", TEXT, "or null (mcc, spearman for regression)", optional=True,
            choices=SELECTION_METRICS),
    Setting("num_workers", INT, "use 0 (read in the main process) or more worker processes", within=NON_NEGATIVE),
    Setting("optim.warmup_fraction", NUMBER, "the share of the steps that warm up, e.g. optim.warmup_fraction=0.1",
            within=PROBABILITY),
    # fine-tuning tasks (configs/task/*.yaml; task.name is at the top)
    Setting("task.train", TEXT, "set task.train=/path/to/train.tsv", check=labelled_file, on_disk=True),
    Setting("task.dev", TEXT, "or null (a part of task.train)", optional=True, check=labelled_file, on_disk=True),
    Setting("task.test", TEXT, "or null (a part of task.train)", optional=True, check=labelled_file, on_disk=True),
    Setting("task.dev_fraction", NUMBER, "the share of task.train held out for dev, e.g. task.dev_fraction=0.1",
            within=PROBABILITY),
    Setting("task.test_fraction", NUMBER, "the share of task.train held out for test; 0: none", within=PROBABILITY),
    Setting("task.split_seed", INT, "e.g. task.split_seed=0", within=SEED),
    Setting("task.type", TEXT, "auto tells regression from non-integer labels", choices=TASK_TYPES),
    Setting("task.sequence_column", TEXT, "name the column holding the sequences", check=not_blank),
    Setting("task.label_column", TEXT, "name the column holding the labels", check=not_blank),
    # benchmark suites (configs/suite.yaml, configs/suite/*.yaml)
    Setting("recipe", TEXT, "pick whose fine-tuning preset (suite.recipes), or none", check=known_recipe),
    Setting("datasets", LIST, "e.g. datasets=[prom_300_all], or null (all)", optional=True, check=text_list),
    Setting("groups", LIST, "e.g. groups=[prom_core], or null (all)", optional=True, check=text_list),
    Setting("max_retries", INT, "reruns of a collapsed seed, e.g. max_retries=2", within=NON_NEGATIVE),
    Setting("pair", INT, "one job's index, e.g. pair=0, or null (every pair)", optional=True, within=NON_NEGATIVE),
    Setting("summarise", BOOL, "use true or false"),
    Setting("suite.layout", TEXT, "how the suite's files are laid out", choices=LAYOUTS),
    Setting("suite.data_dir", TEXT, "point it at the suite's folder (python -m dnabert.tools.fetch_suite)",
            check=existing_path, on_disk=True),
    Setting("suite.dev_fraction", NUMBER, "the share of train held out for dev where no dev file exists",
            within=OPEN_FRACTION),
    Setting("suite.test_fraction", NUMBER, "the share of train held out for test where no test file exists",
            within=PROBABILITY),
    Setting("suite.datasets", LIST, "list the datasets as {name, group, path, metric}"),
    Setting("suite.datasets.*.name", TEXT, "name every dataset", check=folder_name),
    Setting("suite.datasets.*.group", TEXT, "give every dataset a group", check=not_blank),
    Setting("suite.datasets.*.path", TEXT, "give every dataset its path under suite.data_dir", check=not_blank),
    Setting("suite.datasets.*.metric", TEXT, "the headline metric",
            choices=(*CLASSIFICATION_METRICS, *REGRESSION_METRICS)),
    *suite_recipe_rows(),
    Setting("suite.published.source", TEXT, "name where the published scores come from, or null", optional=True,
            check=not_blank),
    Setting("suite.published.scale", NUMBER, "100 for scores given in percent, else 1", within=POSITIVE),
    Setting("suite.published.models", (dict,), "map model names to {dataset: score}", check=published_scores),
    # trainer (configs/trainer/*.yaml)
    Setting("trainer.accelerator", TEXT, "use cpu, gpu or auto",
            choices=("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))),
    Setting("trainer.devices", (int, str), "e.g. trainer.devices=8", check=device_count),
    Setting("trainer.num_nodes", INT, "set it to the number of nodes, e.g. trainer.num_nodes=2", within=AT_LEAST_1),
    Setting("trainer.strategy", (str, dict), "use auto or ddp", check=strategy),
    Setting("trainer.strategy.process_group_backend", TEXT, "use nccl between GPUs, gloo on CPUs",
            choices=("nccl", "gloo", "mpi", "ucc", "xccl")),
    Setting("trainer.precision", (str, int), "use auto, 32-true, bf16-mixed or 16-mixed", choices=_precisions()),
    Setting("trainer.gradient_clip_val", NUMBER, "or null (no clipping)", optional=True, within=NON_NEGATIVE),
    Setting("trainer.log_every_n_steps", INT, "e.g. trainer.log_every_n_steps=50", within=AT_LEAST_1),
    Setting("trainer.val_every_n_steps", INT, "e.g. trainer.val_every_n_steps=2000", within=AT_LEAST_1),
    Setting("trainer.num_sanity_val_steps", INT, "use 0 (none), N batches, or -1 (all)", within=Range(-1)),
    Setting("trainer.enable_model_summary", BOOL, "use true or false"),
    Setting("trainer.use_distributed_sampler", BOOL, "leave it false: the data stream shards itself"),
    # logger (configs/logger/*.yaml)
    Setting("logger.wandb.project", TEXT, "name the wandb project (or set WANDB_PROJECT)", check=not_blank),
    Setting("logger.wandb.offline", BOOL, "use true (write locally, `wandb sync` later) or false"),
    Setting("logger.wandb.mode", TEXT, "null: online when the server is reachable, else offline; online: insist",
            optional=True, choices=("online", "offline", "disabled")),
    Setting("logger.wandb.entity", TEXT, "name the wandb team or user (or set WANDB_ENTITY), or null", optional=True,
            check=not_blank),
    Setting("logger.wandb.group", TEXT, "e.g. logger.wandb.group=${experiment_name}", check=not_blank),
    Setting("logger.wandb.resume", TEXT, "leave it at allow: a requeued run continues its wandb run",
            choices=("allow", "must", "never", "auto")),
    Setting("logger.wandb.log_model", (bool, str), "use false, true or all", choices=(False, True, "all")),
    # callbacks (configs/callbacks/default.yaml)
    Setting("callbacks.model_checkpoint.every_n_train_steps", INT, "save every N optimiser steps; 0: only at the end",
            within=NON_NEGATIVE),
    Setting("callbacks.model_checkpoint.save_top_k", INT, "keep the newest N checkpoints; -1: all", within=Range(-1)),
    Setting("callbacks.model_checkpoint.save_last", BOOL, "leave it true: a requeued run resumes from last.ckpt"),
    Setting("callbacks.model_checkpoint.filename", TEXT, "e.g. step-{step:07d}", check=not_blank),
)


# ------------------------------------------------------------------------------------------------ moved settings
# Settings that have a new name: old name -> (new name, why it moved). A config or command line that still uses the
# old name is refused with the new one; otherwise it would set a key that nothing reads, or fail in Hydra's words.
MOVED_SETTINGS: dict[str, tuple[str, str]] = {
    "k": ("tokenizer.k", "the k-mer size is a setting of the k-mer tokenizer"),
}


def moved_setting_message(key: str, value: Any) -> str:
    """E.g. "k=4 is now tokenizer.k=4 (the k-mer size is ...); use tokenizer.k=4." for `key` in MOVED_SETTINGS."""
    new_key, why = MOVED_SETTINGS[key]
    return f"{key}={value} is now {new_key}={value} ({why}); use {new_key}={value}."


def no_moved_settings(cfg: DictConfig) -> None:
    """An experiment or config file of the user's may still set an old name (`k: 4` at the top level)."""
    for key in MOVED_SETTINGS:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            raise DnabertError(moved_setting_message(key, value))


# ------------------------------------------------------------------------------------------------ agreements
@dataclass(frozen=True)
class Agreement:
    """A check between settings; it runs where all its `keys` are present, after every row passed. Those that
    look at this machine or its files are skipped where nothing runs here (estimate=true)."""

    keys: tuple[str, ...]
    check: Callable[[DictConfig], None]
    on_this_machine: bool = False


# Trainer arguments that dnabert sets from other settings: setting them under trainer.* would be overwritten.
TRAINER_OWNED = {
    "max_steps": "max_steps", "accumulate_grad_batches": "global_batch_size",
    "val_check_interval": "trainer.val_every_n_steps", "check_val_every_n_epoch": "trainer.val_every_n_steps",
    "default_root_dir": "paths.output_dir", "callbacks": "callbacks", "logger": "logger", "plugins": "trainer.strategy",
}


def trainer_arguments(cfg: DictConfig) -> None:
    """Keys under trainer.* go to Lightning's Trainer: a misspelt one would end in its TypeError."""
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) | {"_target_", "val_every_n_steps"}
    for key in cfg.trainer:
        if key in TRAINER_OWNED:
            raise DnabertError(f"trainer.{key} is set by dnabert from {TRAINER_OWNED[key]}; set that instead.")
        if key not in accepted:
            raise DnabertError(f"trainer.{key} is not a Lightning Trainer argument; remove it or fix its spelling.")


def devices_available(cfg: DictConfig) -> None:
    resolve_device_count(cfg.trainer.accelerator, cfg.trainer.devices)


def batch_divides(cfg: DictConfig) -> None:
    accumulation_steps(cfg.global_batch_size, cfg.data.micro_batch_size,
                       declared_device_count(cfg.trainer.accelerator, cfg.trainer.devices), cfg.trainer.num_nodes)


def mask_switch_within_run(cfg: DictConfig) -> None:
    mask_switch_step(cfg.max_steps, cfg.masking.final_rate_steps)


def decay_reaches_zero_after_the_run(cfg: DictConfig) -> None:
    """A decay horizon before max_steps would train the steps after it at learning rate 0."""
    horizon = cfg.optim.total_steps
    if horizon is not None and horizon < cfg.max_steps:
        raise DnabertError(
            f"optim.total_steps={horizon} is below max_steps={cfg.max_steps}: the learning rate would be 0 from step "
            f"{horizon} on; set it to max_steps or more, or null (= max_steps)."
        )


def task_has_train_and_dev(cfg: DictConfig) -> None:
    """The held-out fractions apply to the splits not given as files; they must leave train rows and a dev split."""
    task = cfg.task
    dev = 0.0 if task.dev else task.dev_fraction
    test = 0.0 if task.test else task.test_fraction
    if not task.dev and dev == 0:
        raise DnabertError("No dev split: give task.dev=<file> or a task.dev_fraction above 0.")
    if dev + test >= 1:
        raise DnabertError(f"task.dev_fraction={dev} + task.test_fraction={test} leave no training rows; lower them "
                           "(their sum must be below 1).")


def adapter_trains_in_the_backbone(cfg: DictConfig) -> None:
    """A LoRA adapter lives in the encoder; freezing the encoder would freeze it too and leave a linear probe."""
    if cfg.adapter != "none" and cfg.freeze_backbone:
        raise DnabertError(f"adapter={cfg.adapter} with freeze_backbone=true: the adapter trains inside the encoder "
                           "(whose own weights it already keeps frozen); use freeze_backbone=false, or adapter=none "
                           "for a linear probe.")


def selection_fits_task(cfg: DictConfig) -> None:
    """A regression metric would pick nothing in a classification task (and the reverse); auto is known later."""
    if cfg.task.type != "auto":
        selection_metric(cfg.selection_metric, cfg.task.type)


def windows_fit_positions(cfg: DictConfig) -> None:
    """Longer windows than position embeddings would end mid-run in an index error on the first long window."""
    positions, max_tokens = cfg.model.max_position_embeddings, cfg.data.max_tokens
    if max_tokens > positions:
        raise DnabertError(
            f"data.max_tokens={max_tokens} exceeds model.max_position_embeddings={positions}; lower data.max_tokens "
            "or raise the model's positions (a pretrained model's cannot change)."
        )


def packed_rows_hold_a_window(cfg: DictConfig) -> None:
    check_pack_row_tokens(cfg.data.pack_rows, OmegaConf.select(cfg, "data.pack_row_tokens"), cfg.data.max_tokens)


def model_builds(cfg: DictConfig) -> None:
    """The family config's own checks (heads divide the hidden size, a known activation) and the attention
    kernel's."""
    config_class = get_family(OmegaConf.select(cfg, "model.family", default=DEFAULT_FAMILY)).config_class()
    fields = {key: value for key, value in _value(cfg, "model").items() if key in config_class.__dataclass_fields__}
    config = config_class.from_dict(fields)
    check_attention_backend(cfg.model.attention, config.attention_probs_dropout_prob)


def flex_trains_on_a_gpu(cfg: DictConfig) -> None:
    """torch has no FlexAttention backward on CPUs (compiled or not): a CPU run would end at its first step in
    NotImplementedError. An estimate trains nothing here unless it runs its trial on this CPU
    (`estimate_trial=true` without a GPU), so it checks `estimate` itself instead of being `on_this_machine`."""
    if cfg.model.attention != "flex" or runs_on_gpu(cfg.trainer.accelerator):
        return
    if OmegaConf.select(cfg, "estimate", default=False) and OmegaConf.select(cfg, "estimate_trial") is not True:
        return
    accelerator = cfg.trainer.accelerator
    raise DnabertError(
        f"model.attention='flex' cannot train on a CPU (trainer.accelerator={accelerator}"
        f"{'' if accelerator == 'cpu' else ', no CUDA GPU visible'}): torch's FlexAttention has no backward there; "
        "use model.attention=sdpa, or run on a GPU (trainer=gpu)."
    )


def bpe_masks_tokens(cfg: DictConfig) -> None:
    """Whole-k-mer masking on BPE ids would train on nonsense without failing."""
    if uses_bpe(cfg) and cfg.masking.mode != "token":
        raise DnabertError(f"masking.mode={cfg.masking.mode!r} works on overlapping k-mers; with tokenizer=bpe use "
                           "masking=token.")


def variant_probe_has_reference(cfg: DictConfig) -> None:
    if cfg.probe.variants.vcf and not cfg.probe.variants.reference:
        raise DnabertError(f"probe.variants.vcf={cfg.probe.variants.vcf} needs its reference: set "
                           "probe.variants.reference to the FASTA the VCF refers to.")


def one_genome_source(cfg: DictConfig) -> None:
    if not cfg.data.fasta and not cfg.data.genomes:
        raise DnabertError("No genome given: set data.fasta=/path/to/genome.fa (or data.genomes).")


def suite_selection(cfg: DictConfig) -> list[str]:
    """The names of the suite's datasets that `datasets=` and `groups=` select; an unknown name or an empty
    selection is refused (dnabert.run.suite runs what this returns)."""
    rows = cfg.suite.datasets
    for setting, names, choices in (("datasets", cfg.datasets, [row.name for row in rows]),
                                    ("groups", cfg.groups, list(dict.fromkeys(row.group for row in rows)))):
        unknown = [name for name in names or () if name not in choices]
        if unknown:
            raise DnabertError(f"{setting}={unknown} not in suite {cfg.suite.name}; choose from {', '.join(choices)}.")
    chosen = [row.name for row in rows if (not cfg.datasets or row.name in cfg.datasets)
              and (not cfg.groups or row.group in cfg.groups)]
    if not chosen:
        raise DnabertError(f"datasets={list(cfg.datasets)} and groups={list(cfg.groups)} select no dataset of suite "
                           f"{cfg.suite.name} together; loosen one of them.")
    return chosen


def pair_in_suite(cfg: DictConfig) -> None:
    """`pair=` counts the (dataset, seed) jobs dataset by dataset, seed by seed."""
    count = len(suite_selection(cfg)) * len(cfg.seeds)
    if cfg.pair is not None and cfg.pair >= count:
        raise DnabertError(f"pair={cfg.pair}: suite {cfg.suite.name} has {count} pairs with these settings (datasets "
                           f"x seeds); use pair=0..{count - 1}, e.g. 'pair=range(0,{count})' with -m.")


def one_device_per_pair(cfg: DictConfig) -> None:
    """A suite's pairs decide retries on the results of the one before: every pair trains in one process."""
    devices = declared_device_count(cfg.trainer.accelerator, cfg.trainer.devices) * cfg.trainer.num_nodes
    if devices > 1:
        raise DnabertError(f"suite.py trains each (dataset, seed) on one device, not {devices} (trainer.devices="
                           f"{cfg.trainer.devices}, trainer.num_nodes={cfg.trainer.num_nodes}); set trainer.devices=1 "
                           "and run pairs side by side as SLURM jobs (-m hydra/launcher=slurm 'pair=range(0,N)').")


AGREEMENTS: tuple[Agreement, ...] = (
    Agreement(("trainer",), trainer_arguments),
    Agreement(("trainer.accelerator", "trainer.devices"), devices_available, on_this_machine=True),
    Agreement(("global_batch_size", "data.micro_batch_size", "trainer.devices", "trainer.num_nodes"), batch_divides),
    Agreement(("max_steps", "masking.final_rate_steps"), mask_switch_within_run),
    Agreement(("max_steps", "optim.total_steps"), decay_reaches_zero_after_the_run),
    Agreement(("model.max_position_embeddings", "data.max_tokens"), windows_fit_positions),
    Agreement(("data.pack_rows", "data.max_tokens"), packed_rows_hold_a_window),
    Agreement(("model.hidden_size", "model.num_attention_heads", "model.attention"), model_builds),
    Agreement(("model.attention", "trainer.accelerator"), flex_trains_on_a_gpu),
    Agreement(("tokenizer.kind", "masking.mode"), bpe_masks_tokens),
    Agreement(("data.fasta", "data.genomes"), one_genome_source, on_this_machine=True),
    Agreement(("probe.variants.vcf", "probe.variants.reference"), variant_probe_has_reference),
    Agreement(("task.dev", "task.test", "task.dev_fraction", "task.test_fraction"), task_has_train_and_dev),
    Agreement(("selection_metric", "task.type"), selection_fits_task),
    Agreement(("pair", "seeds", "datasets", "groups", "suite.datasets"), pair_in_suite),
    Agreement(("pair", "trainer.devices", "trainer.num_nodes"), one_device_per_pair),
    Agreement(("adapter", "freeze_backbone"), adapter_trains_in_the_backbone),
)


# ------------------------------------------------------------------------------------------------ the walk
def _concrete_keys(cfg: DictConfig, key: str) -> Iterator[str]:
    """The keys `key` names in cfg: itself, or one per list entry (or group entry) for each `*`."""
    head, star, tail = key.partition(".*")
    if not star:
        yield key
        return
    entries = OmegaConf.select(cfg, head, default=None)
    if isinstance(entries, ListConfig):
        for index in range(len(entries)):
            yield from _concrete_keys(cfg, f"{head}[{index}]{tail}")
    elif isinstance(entries, DictConfig):
        for name in entries:
            yield from _concrete_keys(cfg, f"{head}.{name}{tail}")


def _not_set(key: str) -> DnabertError:
    return DnabertError(f"{key} is not set (??? in the config); give it on the command line, {key}=...")


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at `key` as plain Python, `_ABSENT` when the config has no such key."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise _not_set(key) from err
    except InterpolationToMissingValueError as err:  # `key` interpolates an unset one (run_name: ${pretrained})
        raise _not_set(str(err).splitlines()[0].rpartition("Missing mandatory value: ")[2].strip() or key) from err
    except OmegaConfBaseException as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, DnabertError):
            raise cause from err
        raise DnabertError(f"{key} cannot be resolved ({str(err).splitlines()[0]}); fix its value.") from err
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _present(cfg: DictConfig, keys: tuple[str, ...]) -> bool:
    return all(OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT for key in keys)


def check_value(setting: Setting, key: str, value: Any, cfg: DictConfig) -> None:
    """One value against its row: the message is "<key>=<value> <problem>; <fix>."."""
    problem = setting.problem(value, cfg)
    if problem:
        raise DnabertError(f"{key if value is None else f'{key}={value!r}'} {problem}.")


def validate_config(cfg: DictConfig) -> None:
    """Raise one DnabertError for the first setting that is wrong or disagrees with another; files and devices are
    looked at only where the run will use them (not for estimate=true)."""
    check_here = _value(cfg, "estimate") is not True
    no_moved_settings(cfg)
    for setting in SETTINGS:
        if setting.on_disk and not check_here:
            continue
        for key in _concrete_keys(cfg, setting.key):
            value = _value(cfg, key)
            if value is not _ABSENT:
                check_value(setting, key, value, cfg)
    for agreement in AGREEMENTS:
        if _present(cfg, agreement.keys) and (check_here or not agreement.on_this_machine):
            agreement.check(cfg)
