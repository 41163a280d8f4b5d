"""`python -m dnabert.tools.embed`: per-sequence, per-token and per-nucleotide embeddings against a brute-force
computation, windows, the input formats, outputs written batch by batch, and bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import trainers

from dnabert.data.labelled import kmer_tokenizer
from dnabert.data.tokenizers.bpe import BpeWindowTokenizer, new_bpe_tokenizer, save_bpe
from dnabert.data.tokenizers.kmer import NUCLEOTIDES
from dnabert.data.tokenizers.special import CLS_ID, SEP_ID, SPECIAL_TOKENS
from dnabert.models import build_model
from dnabert.run import inference
from dnabert.run.inference import load_backbone
from dnabert.tools import embed
from tests.conftest import ROOT

K = 3
CONFIG = dict(vocab_size=4**K + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64)
SEQUENCES = {"long": "ACGTTGCAAGGCTTACGATCGGATCCAATGCA", "short": "GATTACAGATTA", "mid": "CCGGTTAACCGGTTAAGCGC"}
CPU = ["--device", "cpu"]


def checkpoint_of(run_dir: Path, family: str, config: dict, k: int | None = K, tokenizer: Path | None = None) -> Path:
    """A pretraining run directory as train.py leaves it (checkpoints/last.ckpt; a BPE family: tokenizer.json),
    with seeded random weights."""
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model(family, config)
    hyper_parameters = {"family": family, "k": k, "model_config": model.config.to_dict()}
    torch.save({"state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
                "hyper_parameters": hyper_parameters}, run_dir / "checkpoints" / "last.ckpt")
    if tokenizer is not None:
        (run_dir / "tokenizer.json").write_text(tokenizer.read_text())
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint_of(tmp_path_factory.mktemp("embed") / "run", "dnabert", CONFIG)


@pytest.fixture
def fasta(tmp_path: Path) -> Path:
    path = tmp_path / "in.fa"
    path.write_text("".join(f">{name} some description\n{seq[:10]}\n{seq[10:]}\n" for name, seq in SEQUENCES.items()))
    return path


def embedded(run: Path, source: Path, out: Path, *options: str) -> list[np.ndarray]:
    """Run the command and read its output back: one array per sequence, in input order."""
    assert embed.main([str(run), str(source), str(out), *CPU, *options]) == 0
    if out.suffix == ".npy":
        rows = np.load(out)
        index = pd.read_csv(out.with_suffix(".ids.tsv"), sep="\t", dtype={"id": str})
        return [rows[first:first + count] for first, count in zip(index["first_row"], index["rows"], strict=True)]
    table = pd.read_parquet(out)
    if "position" not in table:
        return [np.asarray(vector)[None] for vector in table["embedding"]]
    return [np.stack(group.sort_values("position")["embedding"].to_numpy())
            for _, group in table.groupby("id", sort=False)]


def brute_force(run: Path, sequence: str, max_positions: int) -> dict[str, np.ndarray]:
    """Each window encoded alone; token vectors averaged over the windows holding them; each base the mean over
    the k-mers covering it; pooled vectors averaged over the windows."""
    encoder = load_backbone(str(run), torch.device("cpu")).encoder
    ids = kmer_tokenizer(K)([sequence])[0]
    width = max_positions - 2
    starts = [0] if len(ids) <= width else sorted(set(range(0, len(ids) - width, width // 2)) | {len(ids) - width})
    sums, counts, means, cls = np.zeros((len(ids), 32)), np.zeros(len(ids)), [], []
    for start in starts:
        row = torch.tensor([[CLS_ID, *ids[start:start + width], SEP_ID]])
        with torch.no_grad():
            hidden = encoder.encode(row)[0].double().numpy()
        sums[start:start + width] += hidden[1:-1]
        counts[start:start + width] += 1
        means.append(hidden.mean(axis=0))
        cls.append(hidden[0])
    tokens = sums / counts[:, None]
    bases = np.stack([np.mean([tokens[i] for i in range(len(ids)) if i <= j < i + K], axis=0)
                      for j in range(len(sequence))])
    return {"token": tokens, "nucleotide": bases, "mean": np.mean(means, axis=0), "cls": np.mean(cls, axis=0)}


def test_every_level_equals_a_brute_force_computation_with_windows(run: Path, fasta: Path, tmp_path: Path) -> None:
    """max_positions 20 (rows padded to 24): the 30 k-mers of "long" take 3 windows of 18, the 18 of "mid" and
    the 10 of "short" one."""
    window = ["--max-positions", "20"]
    got = {level: embedded(run, fasta, tmp_path / f"{level}.parquet", "--level", level, *window)
           for level in ("token", "nucleotide")}
    got["mean"] = embedded(run, fasta, tmp_path / "mean.parquet", *window)
    got["cls"] = embedded(run, fasta, tmp_path / "cls.parquet", "--pool", "cls", *window)
    for index, sequence in enumerate(SEQUENCES.values()):
        expected = brute_force(run, sequence, 20)
        assert got["token"][index].shape == (len(sequence) - K + 1, 32)
        assert got["nucleotide"][index].shape == (len(sequence), 32)
        for name, values in expected.items():
            np.testing.assert_allclose(got[name][index].squeeze(), values, atol=2e-5, rtol=1e-5, err_msg=name)
    metadata = _parquet_metadata(tmp_path / "cls.parquet")
    assert metadata["pool"] == "cls" and metadata["sequences"] == 3 and metadata["max_positions"] == 20


def _parquet_metadata(path: Path) -> dict:
    import pyarrow.parquet as pq

    return json.loads(pq.ParquetFile(path).metadata.metadata[b"dnabert"])


def _row_groups(path: Path) -> list[int]:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]


def test_a_sequence_that_fits_gives_the_same_vectors_windowed_or_not(run: Path, tmp_path: Path) -> None:
    source = tmp_path / "one.txt"
    source.write_text(SEQUENCES["mid"] + "\n")
    whole = embedded(run, source, tmp_path / "whole.npy", "--level", "token")  # 64 positions: one window
    windowed = embedded(run, source, tmp_path / "windowed.npy", "--level", "token", "--max-positions", "24")  # fits
    np.testing.assert_allclose(windowed[0], whole[0], atol=1e-5)
    row = torch.tensor([[CLS_ID, *kmer_tokenizer(K)([SEQUENCES["mid"]])[0], SEP_ID]])
    with torch.no_grad():
        direct = load_backbone(str(run), torch.device("cpu")).encoder.encode(row)[0, 1:-1].numpy()
    np.testing.assert_allclose(whole[0], direct, atol=1e-5)


def test_rows_are_written_batch_by_batch_whatever_the_batch_size(run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sequences = [SEQUENCES["long"][i:] for i in range(7)]
    source = tmp_path / "seqs.txt"
    source.write_text("\n".join(sequences) + "\n")
    calls = []
    original = inference.EmbeddingArray.write
    monkeypatch.setattr(inference.EmbeddingArray, "write",
                        lambda self, ids, vectors: (calls.append(len(ids)), original(self, ids, vectors)))
    one = embedded(run, source, tmp_path / "one.npy", "--level", "nucleotide", "--batch-size", "1")
    assert calls == [1] * 7
    calls.clear()
    four = embedded(run, source, tmp_path / "four.npy", "--level", "nucleotide", "--batch-size", "4")
    assert calls == [4, 3]
    table = embedded(run, source, tmp_path / "table.parquet", "--level", "nucleotide", "--batch-size", "3")
    for a, b, c, sequence in zip(one, four, table, sequences, strict=True):
        assert a.shape == (len(sequence), 32)
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(a, c, atol=1e-5)
    batches = [sequences[:3], sequences[3:6], sequences[6:]]  # one row group per batch, a row per base
    assert _row_groups(tmp_path / "table.parquet") == [sum(map(len, batch)) for batch in batches]
    index = pd.read_csv(tmp_path / "four.ids.tsv", sep="\t", dtype={"id": str})
    assert list(index["id"]) == [str(i) for i in range(7)] and index["rows"].tolist() == [len(s) for s in sequences]
    metadata = json.loads((tmp_path / "four.json").read_text())
    assert metadata["level"] == "nucleotide" and "per_nucleotide" in metadata and metadata["sequences"] == 7
    assert not list(tmp_path.glob("*.partial"))


def test_every_input_format_gives_the_same_embeddings(run: Path, fasta: Path, tmp_path: Path) -> None:
    names, sequences = list(SEQUENCES), list(SEQUENCES.values())
    gz = tmp_path / "in.fa.gz"
    gz.write_bytes(gzip.compress(fasta.read_bytes()))
    pd.DataFrame({"name": names, "dna": sequences}).to_csv(tmp_path / "in.csv", index=False)
    pd.DataFrame({"id": names, "sequence": [s.lower() for s in sequences]}).to_csv(tmp_path / "in.tsv", sep="\t",
                                                                                 index=False)
    pd.DataFrame({"id": names, "sequence": sequences}).to_parquet(tmp_path / "in.parquet")
    (tmp_path / "in.txt").write_text("\n".join(sequences) + "\n")
    reference = embedded(run, fasta, tmp_path / "ref.parquet")
    options = {"in.csv": ["--sequence-column", "dna", "--id-column", "name"]}
    for name in ("in.fa.gz", "in.csv", "in.tsv", "in.parquet", "in.txt"):
        out = tmp_path / f"{name}.parquet"
        got = embedded(run, tmp_path / name, out, *options.get(name, []))
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(reference), atol=1e-6)
        ids = pd.read_parquet(out)["id"].tolist()
        assert ids == (["0", "1", "2"] if name == "in.txt" else names)


@pytest.mark.parametrize(("content", "options", "message"), [
    ("", [], "holds no sequences"),
    ("ACGTNACGTA\n", [], "sequence '0' is empty or has letters other than A/C/G/T"),
    ("ACGTNACGTA\n", ["--non-acgt", "skip"], "every sequence was skipped"),
    ("AC\n", [], "sequence '0': a sequence of 2 nt is shorter than k=3"),
    ("id,sequence\na,ACGT\n", ["--sequence-column", "dna"], "has no column(s) ['dna']; its columns are ['id', "),
    ("ACGTACGTAC\n", ["--max-positions", "1000"], "exceeds the backbone's 64 positions"),
])
def test_bad_input_is_one_line_and_exit_2(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, content: str,
                                         options: list[str], message: str) -> None:
    source = tmp_path / ("in.csv" if content.startswith("id,") else "in.txt")
    source.write_text(content)
    assert embed.main([str(run), str(source), str(tmp_path / "out.parquet"), *CPU, *options]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dnabert: error: ") and message in error and error.count("\n") == 1
    assert not list(tmp_path.glob("out*"))


def test_non_acgt_sequences_are_skipped_and_counted(run: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("ACGTACGTAC\nACGNNACGTA\nGGCCAATTGG\n")
    got = embedded(run, source, tmp_path / "out.parquet", "--non-acgt", "skip")
    assert len(got) == 2 and pd.read_parquet(tmp_path / "out.parquet")["id"].tolist() == ["0", "2"]
    assert _parquet_metadata(tmp_path / "out.parquet")["skipped"] == 1


def test_an_unreadable_model_is_one_line_and_exit_2_from_the_shell(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_text("not a checkpoint")
    source = tmp_path / "in.txt"
    source.write_text("ACGTACGTAC\n")
    result = subprocess.run([sys.executable, "-m", "dnabert.tools.embed", str(broken), str(source),
                             str(tmp_path / "out.npy")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"dnabert: error: Cannot read checkpoint {broken}")
    assert result.stderr.count("\n") == 1 and not list(tmp_path.glob("out*"))


def test_dnabert2_bases_repeat_the_vector_of_their_token(tmp_path: Path) -> None:
    tokenizer = new_bpe_tokenizer()
    tokenizer.train_from_iterator(pd.read_csv(ROOT / "data" / "tasks" / "prom_core.tsv", sep="\t")["sequence"][:200],
                                  trainer=trainers.BpeTrainer(vocab_size=48, special_tokens=list(SPECIAL_TOKENS),
                                                              initial_alphabet=list(NUCLEOTIDES), show_progress=False))
    tokenizer_file = save_bpe(tokenizer, tmp_path)
    config = dict(vocab_size=48, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                  alibi_starting_size=16)
    run = checkpoint_of(tmp_path / "run", "dnabert2", config, k=None, tokenizer=tokenizer_file)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(SEQUENCES.values()) + "\n")
    tokens = embedded(run, source, tmp_path / "tokens.npy", "--level", "token")
    bases = embedded(run, source, tmp_path / "bases.npy", "--level", "nucleotide")
    ids = BpeWindowTokenizer(tokenizer_file).sequence_ids(list(SEQUENCES.values()))
    for sequence, token_vectors, base_vectors, row in zip(SEQUENCES.values(), tokens, bases, ids, strict=True):
        lengths = [len(tokenizer.id_to_token(int(i))) for i in row]
        assert sum(lengths) == len(sequence) and len(token_vectors) == len(row)
        np.testing.assert_allclose(base_vectors, np.repeat(token_vectors, lengths, axis=0), atol=1e-6)


def test_a_family_outside_the_package_embeds_through_its_interface(fasta: Path, tmp_path: Path) -> None:
    """tests/third_family.py (a gated convolution): nucleotides from its tokens by the k-mer rule."""
    run = checkpoint_of(tmp_path / "run", "tests.third_family:FAMILY", dict(vocab_size=4**K + 5, hidden_size=16), K)
    tokens = embedded(run, fasta, tmp_path / "tokens.npy", "--level", "token")
    bases = embedded(run, fasta, tmp_path / "bases.npy", "--level", "nucleotide")
    pooled = embedded(run, fasta, tmp_path / "pooled.npy")
    for sequence, token_vectors, base_vectors in zip(SEQUENCES.values(), tokens, bases, strict=True):
        expected = [token_vectors[max(0, j - K + 1):j + 1].mean(axis=0) for j in range(len(sequence))]
        np.testing.assert_allclose(base_vectors, np.stack(expected), atol=1e-6)
    assert [vector.shape for vector in pooled] == [(1, 16)] * 3


def test_the_released_dnabert2_layout_embeds_with_its_tokenizer_converted(tmp_path: Path) -> None:
    """A directory laid out like zhihan1996/DNABERT-2-117M (published special ids [CLS]=1 [SEP]=2 [PAD]=3): the
    pooled vector equals the released model's own mean over `[CLS] tokens [SEP]` on the published ids."""
    from tokenizers import Tokenizer

    from tests.dnabert2_release import train_published_tokenizer, write_original_release

    published = train_published_tokenizer(list(pd.read_csv(ROOT / "data" / "tasks" / "prom_core.tsv",
                                                           sep="\t")["sequence"][:200]), 48, tmp_path / "pub.json")
    torch.manual_seed(1)
    released = build_model("dnabert2", dict(vocab_size=48, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=48, pad_token_id=3, cls_token_id=1)).eval()
    release = write_original_release(released, tmp_path / "release", published)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(SEQUENCES.values()) + "\n")
    pooled = embedded(release, source, tmp_path / "pooled.parquet")
    for sequence, vector in zip(SEQUENCES.values(), pooled, strict=True):
        row = torch.tensor([Tokenizer.from_file(str(published)).encode(sequence).ids])  # [CLS]=1 ... [SEP]=2
        assert row[0, 0] == 1 and row[0, -1] == 2
        with torch.no_grad():
            expected = released.encode(row)[0].mean(dim=0).numpy()
        np.testing.assert_allclose(vector[0], expected, atol=1e-5)
    assert _parquet_metadata(tmp_path / "pooled.parquet")["tokenizer"] == f"{release / 'tokenizer.json'} (converted)"
