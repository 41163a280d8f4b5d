"""BPE tokenizer for DNABERT-2-style runs: read, check and convert tokenizer files, tokenise windows.

Training one on the genomes (and its cache) is dnabert.data.bpe_training, which reads the pretraining stream; this
module sits below the data module so that the stream's tokenizer never imports the stream.

Why it looks like this:
- HF `tokenizers` BPE with the Whitespace pre-tokenizer and the five special tokens, as in the authors' script
  (DNABERT_2 #74); each window is one word, so merges never cross windows.
- Special ids are the k-mer vocabulary's, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (dnabert.data.tokenizers.kmer),
  not the published DNABERT-2 order ([UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4): collation, packing, masking and
  both model families then share one set of ids. A tokenizer whose five special tokens hold ids 0..4 in another
  order (the published one) is converted rather than used: `convert_bpe` swaps those ids and nothing else, so every
  DNA string keeps its token ids, and `install_bpe` writes the converted file into the run directory that uses
  it; the imported weights swap the same rows (dnabert.models.dnabert2.interop). `load_bpe` refuses any other
  layout, and a published-order file too, naming the conversion: the data path never sees two sets of ids.
- The data path (`BpeWindowTokenizer.collate`) tokenises windows in the dataloader workers, one thread each
  (TOKENIZERS_PARALLELISM=false: workers are the parallelism), and cuts each to `max_tokens`.

Command line (dnabert.tools.bpe):
    python -m dnabert.tools.bpe train --fasta human.fa --fasta mouse.fa:0.5 --train-bp 100000000 --out tok/
    python -m dnabert.tools.bpe convert DNABERT-2-117M/ --out tok/
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from dnabert.data.tokenizers.kmer import NUCLEOTIDES
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS
from dnabert.data.windows import SequenceBatch
from dnabert.errors import DnabertError

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_VOCAB_SIZE = 4096  # DNABERT-2
_LETTERS = np.frombuffer(NUCLEOTIDES.encode("ascii"), dtype=np.uint8)  # code -> ASCII letter


def windows_as_text(codes: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Rows of nucleotide codes (valid up to `lengths`) as upper-case strings."""
    letters = _LETTERS[codes]
    return [row[:length].tobytes().decode("ascii") for row, length in zip(letters, lengths.tolist(), strict=True)]


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained DNABERT-2-style tokenizer: BPE, Whitespace pre-tokenizer, `[CLS] seq [SEP]` when asked for
    special tokens, and a decoder that joins tokens back into the sequence."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def save_bpe(tokenizer: Tokenizer, out_dir: Path) -> Path:
    """Write out_dir/tokenizer.json (+ transformers' config files, so AutoTokenizer loads the folder)."""
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, unk_token=unk, cls_token=cls,
                                           sep_token=sep, mask_token=mask)
    hf_tokenizer.save_pretrained(str(out_dir))
    return out_dir / TOKENIZER_FILE


def bpe_file(file: str | Path) -> Path:
    """The tokenizer.json that `file` names (the file, or a folder holding one); a missing one is refused."""
    path = Path(file).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise DnabertError(
            f"tokenizer file {path} does not exist; set tokenizer.file to a tokenizer.json, or null to train one."
        )
    return path


def read_bpe(file: str | Path) -> tuple[Path, Tokenizer]:
    """(path, tokenizer) of a tokenizer.json or a folder holding one, whatever its special ids."""
    path = bpe_file(file)
    try:
        return path, Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for malformed JSON
        raise DnabertError(f"{path} is not a tokenizers JSON file ({err}); point tokenizer.file at one.") from err


def special_id_order(tokenizer: Tokenizer) -> tuple[int, ...] | None:
    """Where the project's special tokens sit: new id i = old id order[i] (the identity for this project's layout,
    (3, 0, 1, 2, 4) for the published DNABERT-2 one); None unless the five occupy ids 0..4 in some order."""
    order = tuple(tokenizer.token_to_id(token) for token in SPECIAL_TOKENS)
    return None if None in order or sorted(order) != list(range(len(order))) else order


def _special_ids_message(path: Path, tokenizer: Tokenizer) -> str:
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    wanted = " ".join(f"{token}={index}" for index, token in enumerate(SPECIAL_TOKENS))
    return f"{path} has special ids {ids}; this project needs {wanted}"


def load_bpe(file: str | Path) -> Tokenizer:
    """A tokenizer.json (or a folder holding one) with this project's special ids; anything else is refused."""
    path, tokenizer = read_bpe(file)
    _require_project_ids(path, tokenizer)
    return tokenizer


def _require_project_ids(path: Path, tokenizer: Tokenizer) -> None:
    order = special_id_order(tokenizer)
    if order is None:
        raise DnabertError(
            f"{_special_ids_message(path, tokenizer)}. Train one with "
            "`python -m dnabert.tools.bpe train` or set tokenizer.file=null."
        )
    if order != tuple(range(len(order))):
        raise DnabertError(
            f"{_special_ids_message(path, tokenizer)} (the published DNABERT-2 tokenizer numbers them differently). "
            "train.py and finetune.py convert it themselves when it is tokenizer.file or in a pretrained= directory; "
            f"to use it elsewhere, convert it: `python -m dnabert.tools.bpe convert {path} --out DIR`."
        )


def convert_bpe(file: str | Path) -> tuple[Tokenizer, tuple[int, ...]]:
    """`file`'s tokenizer with the project's special ids, and the permutation (new id i = old id order[i]).

    Only the five special ids move, in the model's vocabulary, the added tokens, the post-processor and the padding
    settings; tokens and merges stay, so every DNA string encodes to the same ids as before. A layout whose special
    tokens are not ids 0..4 is refused."""
    return _renumbered(*read_bpe(file))


def _renumbered(path: Path, tokenizer: Tokenizer) -> tuple[Tokenizer, tuple[int, ...]]:
    order = special_id_order(tokenizer)
    if order is None:
        raise DnabertError(
            f"{_special_ids_message(path, tokenizer)}, and only a tokenizer whose five special tokens hold ids 0..4 "
            "(in any order, as the published DNABERT-2 one) can be converted. Train one with "
            "`python -m dnabert.tools.bpe train`."
        )
    new_id = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    content = json.loads(tokenizer.to_str())
    content["model"]["vocab"].update(new_id)
    for entry in content["added_tokens"]:
        entry["id"] = new_id.get(entry["content"], entry["id"])
    _renumber_post_processor(content.get("post_processor"), new_id)
    if content.get("padding"):  # padding enabled in the file: it pads with [PAD]'s id
        padding = content["padding"]
        padding["pad_id"] = new_id.get(padding["pad_token"], padding["pad_id"])
    return Tokenizer.from_str(json.dumps(content)), order


def _renumber_post_processor(processor: dict | None, new_id: dict[str, int]) -> None:
    """Give the post-processor's special tokens their new ids: TemplateProcessing's table, Bert/RobertaProcessing's
    (token, id) pairs, and those inside a Sequence."""
    if processor is None:
        return
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [new_id.get(token, old) for token, old in zip(special["tokens"], special["ids"], strict=True)]
    for field in ("cls", "sep"):
        if field in processor:
            token, old = processor[field]
            processor[field] = [token, new_id.get(token, old)]
    for inner in processor.get("processors") or []:
        _renumber_post_processor(inner, new_id)


def convertible(tokenizer: Tokenizer) -> bool:
    """Whether the special tokens hold ids 0..4 in another order than the project's (the published DNABERT-2 one)."""
    order = special_id_order(tokenizer)
    return order is not None and order != tuple(range(len(order)))


def install_bpe(file: str | Path, directory: Path) -> tuple[Path, bool]:
    """`directory`/tokenizer.json: `file` as it is, or converted (`convert_bpe`) when `convertible`; and whether it
    was converted. Every DDP rank may call it: each writes the same bytes through its own staging file and renames
    it into place, so the file is whole whenever it exists."""
    return _install(*read_bpe(file), directory)


def _install(path: Path, tokenizer: Tokenizer, directory: Path) -> tuple[Path, bool]:
    converted = convertible(tokenizer)
    target = directory / TOKENIZER_FILE
    staging = target.with_name(f".{TOKENIZER_FILE}.{socket.gethostname()}-{os.getpid()}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if converted:
            _renumbered(path, tokenizer)[0].save(str(staging))
        else:
            shutil.copyfile(path, staging)
        os.replace(staging, target)
    except OSError as err:
        raise DnabertError(f"cannot write {target} ({err.strerror}); the run directory must be writable.") from err
    return target, converted


def usable_bpe(file: str | Path, directory: Path | None) -> Path:
    """The tokenizer.json the data path can use for `file`: the file itself when it has the project's special
    ids, converted into `directory` when `convertible` (refused, as by `load_bpe`, without a directory)."""
    path, tokenizer = read_bpe(file)
    if directory is not None and convertible(tokenizer):
        return _install(path, tokenizer, directory)[0]
    _require_project_ids(path, tokenizer)
    return path


class BpeWindowTokenizer:
    """The data path's BPE: windows of codes -> `[CLS] tokens [SEP] [PAD]..` rows cut to the token budget
    (dnabert.data.datamodule.WindowTokenizer). Pickles as its path; each worker loads the file once."""

    def __init__(self, file: str | Path) -> None:
        self.file = bpe_file(file)
        self._tokenizer: Tokenizer | None = load_bpe(self.file)
        self.vocab_size = self._tokenizer.get_vocab_size()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are the parallelism

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def __repr__(self) -> str:
        return f"BPE ({self.vocab_size:,} tokens, {self.file})"

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_bpe(self.file)
        return self._tokenizer

    def token_ids(self, batch: SequenceBatch, max_tokens: int) -> list[list[int]]:
        """Each window's BPE ids, cut to the `max_tokens - 2` that fit between [CLS] and [SEP]."""
        encodings = self.tokenizer.encode_batch_fast(windows_as_text(batch.codes, batch.lengths),
                                                     add_special_tokens=False)
        return [encoding.ids[: max_tokens - 2] for encoding in encodings]

    def sequence_ids(self, sequences: Sequence[str]) -> list[np.ndarray]:
        """Whole raw sequences' BPE ids, no special tokens and no cut (dnabert.data.labelled.Tokenize): fine-tuning
        and the probe window long ones themselves."""
        encodings = self.tokenizer.encode_batch_fast(list(sequences), add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]

    def collate(self, batch: SequenceBatch, max_tokens: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
        """The batch contract of dnabert.data.datamodule.collate, with BPE tokens in place of k-mers."""
        rows = self.token_ids(batch, max_tokens)
        counts = np.array([len(row) for row in rows], dtype=np.int64)
        width = -(-(int(counts.max(initial=0)) + 2) // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        input_ids[:, 0] = CLS_ID
        tokens = np.concatenate([np.asarray(row, dtype=np.int64) for row in rows]) if rows else np.zeros(0, np.int64)
        row_of = np.repeat(np.arange(len(rows)), counts)
        column = np.arange(len(tokens)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        input_ids[row_of, column] = tokens
        input_ids[np.arange(len(rows)), counts + 1] = SEP_ID
        return {"input_ids": torch.from_numpy(input_ids), "window": torch.from_numpy(batch.window)}


if __name__ == "__main__":  # the command's former home
    print("dnabert: error: the tokenizer command moved; run `python -m dnabert.tools.bpe train|convert ...` "
          "(or `dnabert-bpe`) with the same arguments.", file=sys.stderr)
    sys.exit(2)
