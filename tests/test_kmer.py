"""dnabert.data.tokenizers.kmer: the vocabulary equals the original DNABERT files; ids match a Python reference."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnabert.data.tokenizers import kmer, special
from dnabert.errors import DnabertError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
VOCAB_DIR = SHARED / "data" / "dnabert_vocab"
PROMOTER_SAMPLES = SHARED / "data" / "dnabert_samples" / "prom_core_6_dev.tsv"

# Facts about the original files (jerryji1993/DNABERT dnabert-config/bert-config-K/vocab.txt), copied here so
# the test runs without the shared folder. The k=3..5 files lack the final newline; k=6 has it.
ORIGINAL_VOCAB = {
    3: (
        69,
        "868b0b1ca9c6dfe72771d7c98b406c21ab712d70b0df65216a19868149934b7d",
        False,
        ["AAA", "AAT"],
        ["GGG"],
    ),
    4: (
        261,
        "a78f8d49dfd18288b2838dacb207dc71932c078f1c5083df2c4465658ae39c34",
        False,
        ["AAAA", "AAAT"],
        ["GGGG"],
    ),
    5: (
        1029,
        "3d422649f2193de4cb8af321b42dd5b4a98151138ad68653649638fa5aa91101",
        False,
        ["AAAAA"],
        ["GGGGG"],
    ),
    6: (
        4101,
        "d8f61c247fc10f9b8c7f6baf4d31876f30076d4aaf9f31ff47b9e68badd62e61",
        True,
        ["AAAAAA"],
        ["GGGGGG"],
    ),
}


def original_vocab_bytes(k: int) -> bytes:
    """The original file's bytes as this project writes them (it always ends with a newline)."""
    text = kmer.vocab_text(k).encode("ascii")
    ends_with_newline = ORIGINAL_VOCAB[k][2]
    return text if ends_with_newline else text[:-1]


def reference_ids(sequence: str, k: int) -> list[int]:
    """Plain-Python tokenisation: look each k-mer string up in the vocabulary list."""
    index = {token: i for i, token in enumerate(kmer.vocab_tokens(k))}
    upper = sequence.upper()
    return [special.CLS_ID] + [index[upper[i : i + k]] for i in range(len(upper) - k + 1)] + [special.SEP_ID]


def random_sequence(rng: np.random.Generator, length: int, lower_share: float = 0.3) -> str:
    letters = rng.choice(list("ACGT"), size=length)
    lower = rng.random(length) < lower_share
    return "".join(letter.lower() if low else letter for letter, low in zip(letters, lower, strict=True))


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "dnabert.data.tokenizers.kmer", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO_ROOT,
        env=env,
    )


@pytest.mark.parametrize("k", kmer.SUPPORTED_K)
def test_vocab_matches_original_facts(k: int) -> None:
    size, sha256, _, first_kmers, last_kmers = ORIGINAL_VOCAB[k]
    tokens = kmer.vocab_tokens(k)
    assert len(tokens) == size == kmer.vocab_size(k)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[5 : 5 + len(first_kmers)] == first_kmers
    assert tokens[-len(last_kmers) :] == last_kmers
    assert hashlib.sha256(original_vocab_bytes(k)).hexdigest() == sha256


def test_special_ids_match_vocab_positions() -> None:
    tokens = kmer.vocab_tokens(3)
    assert [tokens[i] for i in (special.PAD_ID, special.UNK_ID, special.CLS_ID, special.SEP_ID, special.MASK_ID)] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    ]  # fmt: skip
    assert special.NUM_SPECIAL_TOKENS == 5


@pytest.mark.parametrize("k", kmer.SUPPORTED_K)
def test_vocab_matches_shared_files(k: int) -> None:
    path = VOCAB_DIR / f"vocab_{k}.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared folder not beside the clone)")
    content = path.read_bytes()
    assert content.decode("ascii").splitlines() == kmer.vocab_tokens(k)
    assert content == original_vocab_bytes(k)


@pytest.mark.parametrize("bad_k", [2, 7, 0, "6", True, 6.0])
def test_check_k_rejects_unsupported(bad_k: object) -> None:
    with pytest.raises(DnabertError, match="not supported"):
        kmer.check_k(bad_k)


def test_check_k_accepts_numpy_integers() -> None:
    assert kmer.check_k(np.int64(5)) == 5


def test_encode_nucleotides_codes_and_input_types() -> None:
    expected = [0, 1, 2, 3, 0, 1, 2, 3, 255, 255, 255]
    assert kmer.encode_nucleotides("ATCGatcgN-?").tolist() == expected
    assert kmer.encode_nucleotides(b"ATCGatcgN-?").tolist() == expected
    as_array = np.frombuffer(b"ATCGatcgN-?", dtype=np.uint8)
    assert kmer.encode_nucleotides(as_array).tolist() == expected
    # a non-ASCII character is one invalid code, so positions keep matching characters
    assert kmer.encode_nucleotides("AéT").tolist() == [0, 255, 1]


@pytest.mark.parametrize("k", kmer.SUPPORTED_K)
def test_tokenize_equals_plain_python_reference(k: int) -> None:
    rng = np.random.default_rng(k)
    for length in [k, k + 1, *rng.integers(k, 600, size=40).tolist()]:
        sequence = random_sequence(rng, length)
        ids = kmer.tokenize(sequence, k)
        assert ids.dtype == np.int64
        assert ids.tolist() == reference_ids(sequence, k)
        assert kmer.tokenize(sequence, k, add_special_tokens=False).tolist() == ids[1:-1].tolist()
        assert kmer.tokenize(sequence.encode("ascii"), k).tolist() == ids.tolist()


@pytest.mark.parametrize("k", kmer.SUPPORTED_K)
def test_kmer_ids_from_codes_batched(k: int) -> None:
    rng = np.random.default_rng(100 + k)
    codes = rng.integers(0, 4, size=(3, 5, 50), dtype=np.uint8)
    ids = kmer.kmer_ids_from_codes(codes, k)
    assert ids.shape == (3, 5, 50 - k + 1) and ids.dtype == np.int64
    letters = np.array(list(kmer.NUCLEOTIDES))
    for i, j in [(0, 0), (1, 3), (2, 4)]:
        sequence = "".join(letters[codes[i, j]])
        assert ids[i, j].tolist() == reference_ids(sequence, k)[1:-1]


@pytest.mark.parametrize("k", kmer.SUPPORTED_K)
def test_round_trips(k: int) -> None:
    rng = np.random.default_rng(200 + k)
    for length in [k, 7, 70, 515]:
        if length < k:
            continue
        sequence = random_sequence(rng, length)
        kmers = kmer.kmer_text(sequence, k).split(" ")
        assert kmers == [sequence.upper()[i : i + k] for i in range(length - k + 1)]
        assert kmer.kmers_to_sequence(kmers) == sequence.upper()
        assert kmer.kmers_to_sequence([token.lower() for token in kmers]) == sequence.upper()
        tokens = kmer.ids_to_kmers(kmer.tokenize(sequence, k), k)
        assert tokens == ["[CLS]", *kmers, "[SEP]"]
        assert kmer.kmers_to_sequence(tokens[1:-1]) == sequence.upper()


def test_tokenize_error_names_first_bad_character_and_position() -> None:
    with pytest.raises(DnabertError, match=r"'N' at position 4\b"):
        kmer.tokenize("ACGTNNRA", 3)
    with pytest.raises(DnabertError, match=r"'é' at position 2\b"):
        kmer.tokenize("acé-gt", 3)
    with pytest.raises(DnabertError, match=r"' ' at position 3\b"):
        kmer.kmer_text(b"ACG TTT", 3)


def test_tokenize_rejects_sequence_shorter_than_k() -> None:
    assert kmer.tokenize("ACGTAC", 6).tolist() == [special.CLS_ID, reference_ids("ACGTAC", 6)[1], special.SEP_ID]
    with pytest.raises(DnabertError, match="shorter than k=6"):
        kmer.tokenize("ACGTA", 6)
    with pytest.raises(DnabertError, match="shorter than k=3"):
        kmer.kmer_text("", 3)


def test_ids_to_kmers_rejects_out_of_range() -> None:
    assert kmer.ids_to_kmers([0, 4, 5, 68], 3) == ["[PAD]", "[MASK]", "AAA", "GGG"]
    with pytest.raises(DnabertError, match="69"):
        kmer.ids_to_kmers([5, 69], 3)
    with pytest.raises(DnabertError, match="-1"):
        kmer.ids_to_kmers([-1], 3)


def test_kmers_to_sequence_rejects_bad_input() -> None:
    with pytest.raises(DnabertError, match="does not overlap"):
        kmer.kmers_to_sequence(["ACG", "GTA"])
    with pytest.raises(DnabertError, match="does not overlap"):
        kmer.kmers_to_sequence(["ACG", "CGTA"])
    with pytest.raises(DnabertError, match=r"\[CLS\]"):
        kmer.kmers_to_sequence(["[CLS]", "ACG"])
    with pytest.raises(DnabertError, match="'N'"):
        kmer.kmers_to_sequence(["ACN", "CNA"])
    with pytest.raises(DnabertError, match="no k-mers"):
        kmer.kmers_to_sequence([])


def test_write_vocab(tmp_path: Path) -> None:
    path = kmer.write_vocab(4, tmp_path / "vocab.txt")
    assert path.read_bytes() == kmer.vocab_text(4).encode("ascii")
    assert path.read_text().splitlines() == kmer.vocab_tokens(4)
    with pytest.raises(DnabertError, match="cannot write the vocabulary"):
        kmer.write_vocab(4, tmp_path / "missing_dir" / "vocab.txt")


def test_cli_vocab_is_byte_identical_to_original() -> None:
    result = run_cli("vocab", "--k", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout == original_vocab_bytes(6)
    assert hashlib.sha256(result.stdout).hexdigest() == ORIGINAL_VOCAB[6][1]


def test_cli_kmers_on_two_lines_with_crlf_and_blank_line() -> None:
    result = run_cli("kmers", "--k", "3", stdin=b"ACGTAC\r\n\r\nttgca\r\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ACG CGT GTA TAC\nTTG TGC GCA\n"


def test_cli_kmers_bad_line_exits_2_with_one_clear_error() -> None:
    result = run_cli("kmers", "--k", "3", stdin=b"ACGT\n\nACNGT\nACGT\n")
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert "line 3" in stderr and "'N' at position 2" in stderr


def test_shared_promoter_kmers_round_trip() -> None:
    if not PROMOTER_SAMPLES.exists():
        pytest.skip(f"{PROMOTER_SAMPLES} is absent (shared folder not beside the clone)")
    lines = PROMOTER_SAMPLES.read_bytes().decode("ascii").split("\r\n")
    assert lines[0].split() == ["sequence", "label"]
    rows = [line.split("\t")[0] for line in lines[1:] if line]
    assert len(rows) == 5919
    for text in rows:
        sequence = kmer.kmers_to_sequence(text.split(" "))
        assert len(sequence) == 70
        assert kmer.kmer_text(sequence, 6) == text
