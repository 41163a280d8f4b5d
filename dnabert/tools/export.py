"""Export a trained model as a directory that transformers (or MultiMolecule) loads, and import released ones.

Layouts:

- ``original``: what the released DNABERT checkpoints look like: ``BertForMaskedLM`` weights (config.json,
  model.safetensors), the original vocab.txt (ATCG k-mer order) and a ``BertTokenizer`` configured with
  ``do_lower_case=False`` (the original's lower-casing turned every k-mer into [UNK]).
- ``multimolecule``: the same weights in the layout of the ``multimolecule`` package (``model_type: dnabert``):
  parameter names renamed and the vocabulary rows permuted into its order (``<pad> <cls> <eos> <unk> <mask>
  <null>`` then k-mers in ACGT order). ``<null>`` has no counterpart in DNABERT: it gets a copy of [UNK]'s
  embedding and output bias, so it behaves exactly like ``<unk>``. This layout is written with MultiMolecule's own
  classes, so the files follow the installed version of that package; it must be installed to use the layout.

``python -m dnabert.tools.export <checkpoint.ckpt | run dir> <out dir> [--layout original|multimolecule]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from transformers import BertForMaskedLM, BertTokenizer
from transformers.utils import logging as hf_logging

from dnabert.data.tokenizers.kmer import SPECIAL_TOKENS, check_k, kmer_text, vocab_size, vocab_tokens, write_vocab
from dnabert.errors import DnabertError, command_line
from dnabert.models.dnabert.model import DnaBertForMaskedLM, ModelConfig
from dnabert.run.checkpoints import read_checkpoint

LAYOUTS = ("original", "multimolecule")
RUN_DIR_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LIGHTNING_MODEL_PREFIX = "model."  # DnaBertForMaskedLM is the attribute `model` of the LightningModule
COMPILED_PREFIX = "_orig_mod."  # what torch.compile adds to state_dict keys (stack.md, trap 3)

# MultiMolecule's special tokens -> the DNABERT token whose weights they take.
MULTIMOLECULE_SPECIALS = {
    "<pad>": "[PAD]",
    "<cls>": "[CLS]",
    "<eos>": "[SEP]",
    "<unk>": "[UNK]",
    "<mask>": "[MASK]",
    "<null>": "[UNK]",
}
# Parameter-name rewrites from transformers' BERT to MultiMolecule's DnaBert, applied in this order.
MULTIMOLECULE_RENAMES = (("bert.", "model."), ("cls.predictions.", "lm_head."))
VOCAB_ROW_KEYS = (
    "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "cls.predictions.bias",
)


def export_model(
    model: DnaBertForMaskedLM,
    k: int,
    out_dir: str | Path,
    layout: str = "original",
    card_config: dict | None = None,
) -> Path:
    """Write ``model`` (possibly wrapped by torch.compile) as a loadable directory; returns its path.

    ``card_config`` (e.g. the training config) is printed in the README model card. An existing export at
    ``out_dir`` is replaced; a non-empty directory that is not an export is refused, never deleted.
    """
    if layout not in LAYOUTS:
        raise DnabertError(f"Unknown export layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
    config: ModelConfig = model.config
    if config.vocab_size != vocab_size(k):
        raise DnabertError(
            f"The model has {config.vocab_size} vocabulary rows but k={k} needs {vocab_size(k)} (4^k + 5); "
            "pass the k the model was trained with."
        )
    state_dict = {key.replace(COMPILED_PREFIX, ""): value.detach().cpu() for key, value in model.state_dict().items()}
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        writer = _write_original if layout == "original" else _write_multimolecule
        with _no_progress_bars():
            writer(state_dict, config, k, staging)
        (staging / "README.md").write_text(_model_card(config, k, layout, card_config))
        _follow_umask(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _follow_umask(root: Path) -> None:
    """mkdtemp makes the staging folder 0700 (and the weights file came out 0600): give every file of the export
    the mode the user's umask gives anything else the run writes, so colleagues on a shared filesystem can load
    the model."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a "Writing model shards" bar for a one-file save; it only clutters the run's log."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, layout: str = "original") -> Path:
    """Export a Lightning checkpoint (or a run directory's ``checkpoints/last.ckpt``); returns the out dir."""
    model, k, card_config = load_checkpoint(checkpoint)
    return export_model(model, k, out_dir, layout, card_config)


def load_checkpoint(checkpoint: str | Path) -> tuple[DnaBertForMaskedLM, int, dict]:
    """Rebuild the model from a Lightning checkpoint: ``(model, k, card_config)``.

    Expects ``state_dict`` keys ``model.<transformers key>`` (``_orig_mod.`` from torch.compile is ignored) and
    ``hyper_parameters`` with ``k``, ``model_config`` (ModelConfig fields) and optionally ``train_config``.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / RUN_DIR_CHECKPOINT
    if not path.is_file():
        raise DnabertError(f"Checkpoint {path} does not exist; pass a .ckpt file or a run directory with one.")
    try:
        content = read_checkpoint(path)
    except Exception as err:  # any unpickling failure means the same to the user: not a usable file
        raise DnabertError(f"Cannot read checkpoint {path} ({err}); is it a complete Lightning .ckpt file?") from err
    if not isinstance(content, dict) or "state_dict" not in content or "hyper_parameters" not in content:
        raise DnabertError(f"{path} is not a dnabert Lightning checkpoint (no state_dict/hyper_parameters).")
    hyper_parameters = _plain(content["hyper_parameters"])
    missing = [name for name in ("k", "model_config") if name not in hyper_parameters]
    if missing:
        raise DnabertError(f"Checkpoint {path} has no hyper-parameter(s) {missing}; it was not written by dnabert.")
    k = check_k(int(hyper_parameters["k"]))
    model = DnaBertForMaskedLM(ModelConfig.from_dict(hyper_parameters["model_config"]))
    model_state = {
        key.removeprefix(LIGHTNING_MODEL_PREFIX): value
        for key, value in ((key.replace(COMPILED_PREFIX, ""), value) for key, value in content["state_dict"].items())
        if key.startswith(LIGHTNING_MODEL_PREFIX)
    }
    _load_strict(model, model_state, str(path))
    card_config = {
        "checkpoint": path.name,
        "global_step": content.get("global_step"),
        "epoch": content.get("epoch"),
        "train_config": hyper_parameters.get("train_config"),
    }
    return model, k, card_config


def init_from(hf_dir: str | Path, k: int) -> DnaBertForMaskedLM:
    """A model initialised from a ``BertForMaskedLM`` directory in the original DNABERT layout (e.g. released
    DNABERT weights), to continue pretraining; its architecture comes from the directory's config.json."""
    reference = _load_original_layout(hf_dir, k)
    model = DnaBertForMaskedLM(ModelConfig.from_hf_config(reference.config))
    _load_strict(model, reference.state_dict(), str(hf_dir))
    return model


def load_pretrained_into(model: DnaBertForMaskedLM, hf_dir: str | Path, k: int) -> None:
    """Copy the weights of a DNABERT-layout directory into an existing model of the same architecture."""
    _load_strict(model, _load_original_layout(hf_dir, k).state_dict(), str(hf_dir))


def _load_original_layout(hf_dir: str | Path, k: int) -> BertForMaskedLM:
    directory = Path(hf_dir)
    if not (directory / "config.json").is_file():
        raise DnabertError(f"{directory} has no config.json; pass a directory saved by transformers' save_pretrained.")
    check_k(k)
    vocab_file = directory / "vocab.txt"
    if vocab_file.is_file() and vocab_file.read_text().split() != vocab_tokens(k):
        raise DnabertError(
            f"{vocab_file} is not the DNABERT vocabulary for k={k} (ATCG k-mer order); check k, or convert a "
            "model with another vocabulary order first."
        )
    try:
        reference, info = BertForMaskedLM.from_pretrained(directory, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise DnabertError(f"Cannot load {directory} as a BertForMaskedLM ({err}).") from err
    if info["missing_keys"] or info["mismatched_keys"]:
        raise DnabertError(
            f"{directory} lacks masked-LM weights {sorted(info['missing_keys'])[:5]} or has mismatched shapes "
            f"{[key for key, *_ in info['mismatched_keys']][:5]}; it must be a BertForMaskedLM checkpoint."
        )
    if reference.config.vocab_size != vocab_size(k):
        raise DnabertError(
            f"{directory} has {reference.config.vocab_size} vocabulary rows but k={k} needs {vocab_size(k)} "
            "(4^k + 5); set k to the model's k."
        )
    return reference


def _load_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise DnabertError(f"The weights in {source} do not fit the model configuration: {err}") from err


def _write_original(state_dict: dict, config: ModelConfig, k: int, out_dir: Path) -> None:
    model = BertForMaskedLM(config.to_hf_config())
    _load_strict(model, state_dict, "the model")
    model.save_pretrained(out_dir)
    vocab_file = write_vocab(k, out_dir / "vocab.txt")
    tokenizer = BertTokenizer(
        str(vocab_file), do_lower_case=False, model_max_length=config.max_position_embeddings
    )
    tokenizer.save_pretrained(out_dir)
    write_vocab(k, vocab_file)  # the canonical file, whatever the tokenizer wrote back
    names = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
    special_tokens = {name: getattr(tokenizer, name) for name in names}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2) + "\n")


def _write_multimolecule(state_dict: dict, config: ModelConfig, k: int, out_dir: Path) -> None:
    try:
        import multimolecule
    except ImportError as err:
        raise DnabertError("--layout multimolecule needs the multimolecule package: pip install multimolecule") from err
    tokenizer = multimolecule.DnaTokenizer(
        nmers=k, alphabet="nucleobase", model_max_length=config.max_position_embeddings
    )
    rows = multimolecule_rows(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))), k)
    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        for old, new in MULTIMOLECULE_RENAMES:
            new_key = new_key.replace(old, new, 1) if new_key.startswith(old) else new_key
        renamed[new_key.replace("LayerNorm", "layer_norm")] = value[rows] if key in VOCAB_ROW_KEYS else value
    mm_config = multimolecule.DnaBertConfig(
        vocab_size=len(rows),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
    )
    model = multimolecule.DnaBertForMaskedLM(mm_config)
    _load_strict(model, renamed, "the model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def multimolecule_rows(multimolecule_tokens: Sequence[str], k: int) -> torch.Tensor:
    """For each MultiMolecule token (in its id order), the id of the DNABERT token whose weights it takes."""
    dnabert_ids = {token: index for index, token in enumerate(vocab_tokens(k))}
    try:
        return torch.tensor([dnabert_ids[MULTIMOLECULE_SPECIALS.get(token, token)] for token in multimolecule_tokens])
    except KeyError as err:
        raise DnabertError(
            f"MultiMolecule's {k}-mer vocabulary has token {err} that DNABERT lacks; this multimolecule version "
            "is not supported for export (0.2.2 is)."
        ) from err


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.is_file() or (
        out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file()
    ):
        raise DnabertError(
            f"{out_dir} exists and is not an earlier export; choose a new output directory."
        )


def _plain(value: object) -> object:
    """OmegaConf containers (from Hydra configs in hyper-parameters) as plain dicts/lists."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _model_card(config: ModelConfig, k: int, layout: str, card_config: dict | None) -> str:
    if layout == "original":
        library, usage = "transformers", (
            "from transformers import BertForMaskedLM, BertTokenizer\n\n"
            "tokenizer = BertTokenizer.from_pretrained(path)\n"
            "model = BertForMaskedLM.from_pretrained(path)\n"
            f'# input: upper-case, space-separated overlapping {k}-mers, e.g. "{kmer_text("GATTACAGATTACA", k)}"'
        )
        vocabulary = (
            f"The original DNABERT vocabulary: {', '.join(SPECIAL_TOKENS)}, then all {4**k} {k}-mers in "
            "`itertools.product('ATCG')` order. The tokenizer does not lower-case (the original's did, which "
            "turned every k-mer into [UNK])."
        )
    else:
        library, usage = "multimolecule", (
            "import multimolecule  # registers DnaBert with transformers\n"
            "from transformers import AutoTokenizer, pipeline\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            "model = multimolecule.DnaBertForMaskedLM.from_pretrained(path)\n"
            'unmasker = pipeline("fill-mask", model=path)'
        )
        vocabulary = (
            f"MultiMolecule's {k}-mer vocabulary (`<pad> <cls> <eos> <unk> <mask> <null>`, then k-mers in ACGT "
            "order); the rows were permuted from the DNABERT order. `<null>` copies the weights of `<unk>`."
        )
    sections = [
        f"---\nlibrary_name: {library}\npipeline_tag: fill-mask\ntags:\n- dna\n- dnabert\n- k-mer\n---\n",
        f"# DNABERT, k={k}\n",
        "A BERT masked-language model over overlapping DNA k-mers, pretrained with the `dnabert` framework "
        "following the DNABERT recipe (Ji et al., Bioinformatics 2021).\n",
        f"## Usage\n\n```python\n{usage}\n```\n",
        f"## Vocabulary\n\n{vocabulary}\n",
        "## Model configuration (dnabert's, in the DNABERT vocabulary)\n\n"
        f"```json\n{json.dumps(config.to_dict(), indent=2)}\n```\n",
    ]
    if card_config:
        sections.append(f"## Training\n\n```json\n{json.dumps(_plain(card_config), indent=2, default=str)}\n```\n")
    return "\n".join(sections)


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dnabert.tools.export",
        description="Write a trained dnabert checkpoint as a transformers / MultiMolecule model directory.",
    )
    parser.add_argument("checkpoint", help="a Lightning .ckpt file, or a run directory (uses checkpoints/last.ckpt)")
    parser.add_argument("out_dir", help="the directory to write (an earlier export there is replaced)")
    parser.add_argument("--layout", choices=LAYOUTS, default="original")
    args = parser.parse_args(argv)
    out_dir = export_checkpoint(args.checkpoint, args.out_dir, args.layout)
    print(f"Wrote {out_dir} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
