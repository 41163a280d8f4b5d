"""The original DNABERT k-mer vocabulary and a vectorised tokenizer (nucleotides -> overlapping k-mer ids).

The vocabulary is built in code (`itertools.product("ATCG")`) and equals the original `vocab.txt` files
token for token, so checkpoints stay interchangeable with DNABERT. Because codes follow the same ATCG order,
a k-mer id is simply `NUM_SPECIAL_TOKENS + base-4 number of its codes`: tokenising is a table lookup and a
k-term weighted sum over shifted views, with no Python loop per k-mer (the data path tokenises thousands of
windows per second).

Command line (one token / one line of k-mers per output line, LF endings):
    python -m dnabert.data.tokenizers.kmer vocab --k 6 > vocab.txt
    python -m dnabert.data.tokenizers.kmer kmers --k 6 < sequences.txt > kmers.txt
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dnabert.data.tokenizers.special import CLS_ID, NUM_SPECIAL_TOKENS, SEP_ID, SPECIAL_TOKENS
from dnabert.errors import DnabertError, command_line

SUPPORTED_K = (3, 4, 5, 6)
NUCLEOTIDES = "ATCG"
INVALID_CODE = 255

# byte -> nucleotide code (A=0, T=1, C=2, G=3 in either case); every other byte is INVALID_CODE.
_CODE_TABLE = np.full(256, INVALID_CODE, dtype=np.uint8)
for _code, _base in enumerate(NUCLEOTIDES):
    _CODE_TABLE[ord(_base)] = _CODE_TABLE[ord(_base.lower())] = _code


def check_k(k: int) -> int:
    """Return k if DNABERT has a vocabulary for it; the vocabulary size grows as 4^k, so only 3..6 exist."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k not in SUPPORTED_K:
        choices = ", ".join(map(str, SUPPORTED_K))
        raise DnabertError(f"k-mer size k={k!r} is not supported; set k to one of {choices}.")
    return int(k)


def vocab_size(k: int) -> int:
    """Number of token ids for k: 4^k k-mers plus the special tokens."""
    return 4 ** check_k(k) + NUM_SPECIAL_TOKENS


@cache
def _vocab_tuple(k: int) -> tuple[str, ...]:
    kmers = ("".join(letters) for letters in itertools.product(NUCLEOTIDES, repeat=k))
    return SPECIAL_TOKENS + tuple(kmers)


def vocab_tokens(k: int) -> list[str]:
    """All tokens in id order: the specials, then k-mers in the original DNABERT (ATCG product) order."""
    return list(_vocab_tuple(check_k(k)))


def vocab_text(k: int) -> str:
    """The vocabulary file content: one token per line, LF endings, a final newline."""
    return "\n".join(_vocab_tuple(check_k(k))) + "\n"


def write_vocab(k: int, path: str | Path) -> Path:
    """Write `vocab.txt` for k (what BertTokenizer and the original DNABERT read); returns the path."""
    path = Path(path)
    try:
        path.write_bytes(vocab_text(k).encode("ascii"))
    except OSError as err:
        raise DnabertError(
            f"cannot write the vocabulary to {path}: {err.strerror}; check that the directory is writable."
        ) from err
    return path


def encode_nucleotides(sequence: str | bytes | np.ndarray) -> np.ndarray:
    """Nucleotide codes (uint8, A=0 T=1 C=2 G=3, INVALID_CODE for anything else); one code per character."""
    if isinstance(sequence, str):
        # "replace" turns each non-ASCII character into one '?', so positions still match the characters.
        raw = np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)
    elif isinstance(sequence, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(sequence, dtype=np.uint8)
    else:
        raw = np.asarray(sequence)
        if raw.dtype != np.uint8:
            raise TypeError(f"encode_nucleotides expects str, bytes or a uint8 array, got dtype {raw.dtype}")
    return _CODE_TABLE[raw]


def kmer_ids_from_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """Overlapping k-mer ids (int64, (..., L-k+1)) of valid codes (..., L); batched over leading axes.

    The id is a base-4 number, most significant code first, so it is a k-term sum of shifted views.
    """
    k = check_k(k)
    codes = np.asarray(codes)
    _check_length(codes.shape[-1], k)
    n_kmers = codes.shape[-1] - k + 1
    ids = np.full(codes.shape[:-1] + (n_kmers,), NUM_SPECIAL_TOKENS, dtype=np.int64)
    for offset in range(k):
        ids += codes[..., offset : offset + n_kmers].astype(np.int64) << (2 * (k - 1 - offset))
    return ids


def _check_length(n_nucleotides: int, k: int) -> None:
    if n_nucleotides < k:
        raise DnabertError(f"a sequence of {n_nucleotides} nucleotides is shorter than k={k}: it has no k-mers.")


def _valid_codes(sequence: str | bytes, k: int) -> np.ndarray:
    """Codes of a sequence that must be ACGT only and at least k long; errors name the first bad character."""
    codes = encode_nucleotides(sequence)
    bad = np.flatnonzero(codes == INVALID_CODE)
    if bad.size:
        position = int(bad[0])
        char = sequence[position : position + 1]
        char_text = char.decode("latin-1") if isinstance(char, (bytes, bytearray)) else char
        raise DnabertError(
            f"invalid nucleotide {char_text!r} at position {position} (0-based); "
            "only A, C, G, T (either case) can be tokenised: remove or split at other characters."
        )
    _check_length(codes.size, k)
    return codes


def tokenize(sequence: str | bytes, k: int, add_special_tokens: bool = True) -> np.ndarray:
    """Token ids (int64) of one sequence: `[CLS] k-mers [SEP]` (or only the k-mers)."""
    k = check_k(k)
    ids = kmer_ids_from_codes(_valid_codes(sequence, k), k)
    if not add_special_tokens:
        return ids
    return np.concatenate((np.array([CLS_ID]), ids, np.array([SEP_ID]))).astype(np.int64, copy=False)


def ids_to_kmers(ids: Iterable[int] | np.ndarray, k: int) -> list[str]:
    """Token strings for ids (special tokens by name, e.g. '[CLS]')."""
    tokens = _vocab_tuple(check_k(k))
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    out_of_range = ids[(ids < 0) | (ids >= len(tokens))]
    if out_of_range.size:
        raise DnabertError(
            f"token id {int(out_of_range[0])} is outside the k={k} vocabulary (0..{len(tokens) - 1}); "
            "check that k matches the data."
        )
    return [tokens[i] for i in ids.tolist()]


def kmers_to_sequence(kmers: Sequence[str]) -> str:
    """Rebuild the nucleotide sequence of consecutive overlapping k-mers (the inverse of `kmer_text`)."""
    if not kmers:
        raise DnabertError("no k-mers to merge into a sequence.")
    specials = [token for token in kmers if token in SPECIAL_TOKENS]
    if specials:
        raise DnabertError(f"special token {specials[0]} has no nucleotides; strip specials before merging.")
    kmers = [token.upper() for token in kmers]
    k = len(kmers[0])
    for index, (previous, current) in enumerate(itertools.pairwise(kmers), start=1):
        if len(current) != k or previous[1:] != current[:-1]:
            raise DnabertError(
                f"k-mer {index} {current!r} does not overlap the previous k-mer {previous!r} by {k - 1} "
                "nucleotides; the input is not a run of consecutive overlapping k-mers."
            )
    sequence = kmers[0] + "".join(kmer[-1] for kmer in kmers[1:])
    _valid_codes(sequence, k)  # rejects non-ACGT letters with a clear message
    return sequence


def kmer_text(sequence: str | bytes, k: int) -> str:
    """Space-separated upper-case overlapping k-mers: the text format of DNABERT's fine-tuning files."""
    k = check_k(k)
    codes = _valid_codes(sequence, k)
    letters = np.frombuffer(NUCLEOTIDES.encode("ascii"), dtype=np.uint8)[codes]
    windows = np.lib.stride_tricks.sliding_window_view(letters, k)
    text = np.empty((windows.shape[0], k + 1), dtype=np.uint8)
    text[:, :k] = windows
    text[:, k] = ord(" ")
    return text.tobytes()[:-1].decode("ascii")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dnabert.data.tokenizers.kmer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    vocab = commands.add_parser("vocab", help="print the vocabulary (one token per line, as vocab.txt)")
    kmers = commands.add_parser(
        "kmers", help="turn raw sequences from stdin (one per line) into space-separated k-mer lines"
    )
    for sub in (vocab, kmers):
        sub.add_argument("--k", type=int, required=True, choices=SUPPORTED_K, help="k-mer size")
    return parser.parse_args(argv)


def _write_kmer_lines(k: int, lines: Iterable[bytes], out: BinaryIO) -> None:
    for line_number, line in enumerate(lines, start=1):
        sequence = line.strip()
        if not sequence:
            continue
        try:
            out.write(kmer_text(sequence, k).encode("ascii") + b"\n")
        except DnabertError as err:
            raise DnabertError(f"stdin line {line_number}: {err}") from err


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m dnabert.data.tokenizers.kmer`; a user error is one line on stderr, exit 2."""
    args = _parse_args(argv)
    out = sys.stdout.buffer
    if args.command == "vocab":
        out.write(vocab_text(args.k).encode("ascii"))
    else:
        _write_kmer_lines(args.k, sys.stdin.buffer, out)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
