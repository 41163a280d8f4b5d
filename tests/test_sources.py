"""Sequence tables through `datasets`: every format gives the same rows, token ids equal tokenising the rows,
rows split at N and long rows cut, ranks partition the stream, k-mer text round trip, bad input, and a training
run from `data=sequences`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from dnabert.data.sources import SequenceDataModule, detect_format, load_table
from dnabert.data.tokenizers.kmer import kmer_text, tokenize
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.errors import DnabertError
from dnabert.run.training import run
from tests.conftest import tiny_run_overrides, windows_in_rows
from tests.training_runs import checkpoint, metric_by_step

B = 4
MAX_TOKENS = 64  # windows of at most 64 - 2 + 6 - 1 = 67 nt at k=6
M = MAX_TOKENS - 2 + 6 - 1


def random_sequences(seed: int = 3, count: int = 40) -> list[str | None]:
    rng = np.random.default_rng(seed)
    sequences: list[str | None] = ["".join(rng.choice(list("ACGT"), n)) for n in rng.integers(6, 60, count)]
    sequences[1] = "acgtacgtAC" + "NN" + "GGTTAACCGG"  # lower case, split at N into two runs of 10
    sequences[2] = "ACG"  # shorter than k: dropped
    sequences[3] = None  # a null cell: dropped
    sequences[4] = "ACGT" * 50  # 200 nt: cut into full windows of M
    sequences[5] = "ACGTRYACGTAC"  # IUPAC letters split too: runs of 4 and 6, the 4 is dropped
    return sequences


def write(sequences: list[str | None], path: Path, file_format: str) -> Path:
    frame = pd.DataFrame({"id": range(len(sequences)), "sequence": sequences})
    if file_format == "parquet":
        frame.to_parquet(path)
    elif file_format == "csv":
        frame.to_csv(path, index=False)
    elif file_format == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif file_format == "json":
        rows = ({"id": i, "sequence": sequence} for i, sequence in enumerate(sequences))  # null, not pandas' NaN
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif file_format == "arrow":
        table = pa.Table.from_pandas(frame, preserve_index=False)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    elif file_format == "saved":
        import datasets

        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    return path


EXTENSIONS = {"parquet": "x.parquet", "csv": "x.csv", "tsv": "x.tsv", "json": "x.jsonl", "arrow": "x.arrow",
              "saved": "saved_dir"}


def make_data(path: Path, tmp_path: Path, **settings) -> SequenceDataModule:
    options = {"k": 6, "micro_batch_size": B, "num_workers": 0, "seed": 5, "max_tokens": MAX_TOKENS,
               "val_fraction": 0.0, "pin_memory": False, "cache_dir": tmp_path / "cache", **settings}
    return SequenceDataModule(path, **options)


def rows_of(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row) for row in batch["window"].tolist()]


def assert_ids_are_the_tokenised_rows(batch: dict[str, torch.Tensor], sequences: list[str | None]) -> None:
    for row_ids, (table, row, start, end) in zip(batch["input_ids"], batch["window"].tolist(), strict=True):
        assert table == 0
        expected = tokenize(sequences[row][start:end], 6)
        assert row_ids[: len(expected)].tolist() == expected.tolist()
        assert torch.all(row_ids[len(expected) :] == PAD_ID)


@pytest.mark.parametrize("file_format", list(EXTENSIONS))
def test_every_format_gives_the_rows_and_their_token_ids(tmp_path, file_format):
    sequences = random_sequences()
    path = write(sequences, tmp_path / EXTENSIONS[file_format], file_format)
    assert detect_format(path) == file_format
    data = make_data(path, tmp_path)
    data.setup()
    table = data.genomes[0]
    assert table.rows == len(sequences)
    # Runs: row 1 splits into two, rows 2/3 vanish, row 5 keeps its 6-nt run only.
    runs = {tuple(run) for run in table.intervals.tolist()}
    assert {(1, 0, 10), (1, 12, 22), (5, 6, 12)} <= runs
    assert not any(row in (2, 3) for row, _, _ in runs)
    assert (4, 0, 200) in runs and len(runs) == len(sequences) - 2 + 1  # two dropped, row 1 twice
    assert table.counts["rows_dropped"] == 2 and table.counts["rows_split"] == 2
    assert table.counts["invalid"] == 4
    assert "2 rows split at 4 non-ACGT characters, 2 rows dropped" in data.report
    stream = data.train_stream()
    for local_index in range(8):
        assert_ids_are_the_tokenised_rows(stream.batch(local_index), sequences)


def test_an_epoch_visits_every_run_once_in_seeded_order_and_cuts_long_rows(tmp_path):
    sequences = random_sequences()
    data = make_data(write(sequences, tmp_path / "x.parquet", "parquet"), tmp_path)
    data.setup()
    # 200-nt row 4 with the "fixed" rule: 200 // M full windows, consecutive, after a phase of at most 200 - 3M.
    per_epoch = len(data.genomes[0].intervals) - 1 + 200 // M
    stream = data.train_stream().source.stream
    epochs = [stream.windows(e * per_epoch, per_epoch) for e in range(2)]
    for windows in epochs:
        rows = windows.contig.tolist()
        assert sorted(set(rows) - {4}) == sorted(set(range(len(sequences))) - {2, 3, 4})
        long = np.sort(windows.start[windows.contig == 4])
        assert len(long) == 200 // M and np.all(np.diff(long) == M) and long[0] <= 200 - (200 // M) * M
        assert np.all(windows.length[windows.contig == 4] == M)
    assert epochs[0].contig.tolist() != epochs[1].contig.tolist()  # a new permutation each epoch
    again = make_data(tmp_path / "x.parquet", tmp_path).train_stream().source.stream.windows(0, per_epoch)
    assert again.contig.tolist() == epochs[0].contig.tolist()  # the same seed, the same order


def test_ranks_and_workers_partition_the_stream(tmp_path):
    path = write(random_sequences(count=60), tmp_path / "x.csv", "csv")
    world, per_rank, seen = 2, 6, []
    for rank in range(world):
        data = make_data(path, tmp_path, num_workers=2, rank=rank, world_size=world, start_position=0,
                         batches_per_transfer=2)
        direct = data.train_stream()
        for local_index, batch in zip(range(per_rank), data.train_dataloader(), strict=False):
            assert rows_of(batch) == rows_of(direct.batch(local_index))
            seen.extend(rows_of(batch))
    whole = make_data(path, tmp_path).train_stream()
    expected = [row for j in range(world * per_rank) for row in rows_of(whole.batch(j))]
    assert sorted(seen) == sorted(expected) and len(seen) == world * per_rank * B


def test_held_out_rows_never_train_and_a_val_file_replaces_them(tmp_path):
    sequences = random_sequences(count=200)
    path = write(sequences, tmp_path / "x.parquet", "parquet")
    data = make_data(path, tmp_path, val_fraction=0.1)
    data.setup()
    table = data.genomes[0]
    val_rows = set(table.val_intervals[:, 0].tolist())
    assert 15 <= len(val_rows) <= 20 and not val_rows & set(table.train_intervals[:, 0].tolist())
    val_batches = list(data.val_dataloader())
    assert {row for batch in val_batches for _, row, _, _ in rows_of(batch)} == val_rows
    for batch in val_batches:
        assert_ids_are_the_tokenised_rows(batch, sequences)

    val_sequences = ["ACGTTGCA" * 4, "GGGCCCAAATTT"]
    separate = make_data(path, tmp_path, val_fraction=0.5, val_path=write(val_sequences, tmp_path / "v.csv", "csv"))
    windows = [row for batch in separate.val_dataloader() for row in rows_of(batch)]
    assert sorted(windows) == [(1, 0, 0, 32), (1, 1, 0, 12)]  # table 1 = the validation file, whole rows
    assert len(separate.genomes[0].train_intervals) == len(separate.genomes[0].intervals)  # all rows train
    assert all(row[0] == 0 for m in range(10) for row in rows_of(separate.train_stream().batch(m)))


def write_kmer_text(sequences: list[str], path: Path, k: int) -> Path:
    """DNABERT's fine-tuning layout: a header, k-mers, a tab and a label, CRLF line ends."""
    lines = ["sequence  label"] + [f"{kmer_text(sequence, k)}\t{i % 2}" for i, sequence in enumerate(sequences)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("ascii"))
    return path


def test_short_rows_pack_into_fewer_model_rows(tmp_path):
    path = write(random_sequences(), tmp_path / "x.parquet", "parquet")
    settings = dict(micro_batch_size=16, max_tokens=128, num_workers=0)
    plain = next(iter(make_data(path, tmp_path, **settings).train_dataloader()))
    packed = next(iter(make_data(path, tmp_path, **settings, pack_rows=True).train_dataloader()))
    assert torch.equal(packed["window"], plain["window"])
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]
    assert sorted(windows_in_rows(packed["input_ids"])) == sorted(windows_in_rows(plain["input_ids"]))


def test_kmer_text_round_trip(tmp_path):
    sequences = random_sequences()[6:]
    path = write_kmer_text(sequences, tmp_path / "dev.tsv", 6)
    assert detect_format(path) == "kmer_text"
    table = load_table(path, None, "ignored", 6, tmp_path / "cache")
    assert table["sequence"] == sequences
    plain = tmp_path / "plain.txt"  # the pretraining layout: k-mer lines only
    plain.write_text("".join(kmer_text(s, 6) + "\n" for s in sequences))
    assert load_table(plain, None, "ignored", 6, tmp_path / "cache")["sequence"] == sequences
    raw = tmp_path / "raw.txt"  # one raw sequence per line is "text"
    raw.write_text("\n".join(sequences) + "\n")
    assert detect_format(raw) == "text"
    assert load_table(raw, None, "ignored", 6, tmp_path / "cache")["text"] == sequences


def test_dnabert_sample_file(shared_dir, tmp_path):
    path = shared_dir / "data" / "dnabert_samples" / "prom_core_6_dev.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = make_data(path, tmp_path, max_tokens=512, val_fraction=0.01)
    data.setup()
    table = data.genomes[0]
    assert table.rows == 5919 and np.all(table.intervals[:, 2] == 70)  # 65 6-mers = 70 nt per row
    assert table.table[0]["sequence"].startswith("TTTTTAAAAGTAAACACTGTTTTCATTAGG")
    batch = data.train_stream().batch(0)
    assert torch.all((batch["input_ids"] != PAD_ID).sum(1) == 67)  # [CLS] + 65 + [SEP]


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("make", "settings", "message"),
    [
        (lambda d: d / "absent.parquet", {}, r"absent\.parquet does not exist"),
        (lambda d: write(["ACGTACGT"], d / "x.xyz", "csv"), {}, r"cannot tell the format .* data\.format"),
        (lambda d: write(["ACGTACGT"], d / "x.csv", "csv"), {"format": "fasta"}, r"data\.format='fasta' is unknown"),
        (lambda d: write(["ACGTACGT"], d / "x.csv", "csv"), {"sequence_column": "seq"},
         r"no column 'seq'; its columns are \['id', 'sequence'\]"),
        (lambda d: write(["ACGTACGT"], d / "x.csv", "csv"), {"sequence_column": "id"}, r"'id' .* not text"),
        *[(lambda d, f=f: write([], d / EXTENSIONS[f], f), {}, r"is empty \(no rows\)")
          for f in ("parquet", "csv", "json", "arrow")],
        (lambda d: empty_file(d / "x.txt"), {}, r"is empty \(no rows\)"),
        (lambda d: write(["ACGTACGT"], d / "x.parquet", "csv"), {}, r"cannot read .*x\.parquet as parquet \(\w+"),
        (lambda d: write(["NNNNNNNN", "ACG"], d / "x.parquet", "parquet"), {}, r"no sequence with 6 or more"),
        (lambda d: write_kmer_text(["ACGTACGTAC"], d / "x.tsv", 3), {}, r"x\.tsv line 2: k-mer 'ACG' has 3 .* k=6"),
        (lambda d: write_kmer_text(["ACGTACGTAC", "ACGTTT"], d / "x.tsv", 6), {}, None),
        (lambda d: write(["ACGTACGT"], d / "x.csv", "csv"), {"val_fraction": 1.5}, r"val_fraction=1\.5"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, make, settings, message):
    path = make(tmp_path)
    if message is None:  # non-overlapping k-mers on line 3 of the k-mer text
        text = path.read_text().replace("ACGTTT", "ACGTTG GGGGGG", 1)
        path.write_text(text)
        message = r"x\.tsv line 3: k-mer 1 'GGGGGG' does not overlap"
    with pytest.raises(DnabertError, match=message):
        make_data(path, tmp_path, **settings).setup()


def test_no_path_is_refused(tmp_path):
    with pytest.raises(DnabertError, match=r"set data\.path="):
        make_data(None, tmp_path).setup()


def test_train_py_data_sequences_runs_end_to_end(compose_config, tmp_path):
    path = write(random_sequences(count=80), tmp_path / "x.parquet", "parquet")
    every = {"trainer.val_every_n_steps": 2, "callbacks.model_checkpoint.every_n_train_steps": 3}
    overrides = tiny_run_overrides(tmp_path / "out", max_steps=3, **every)
    cfg = compose_config("data=sequences", f"data.path={path}", "data.val_fraction=0.1", *overrides)
    run_dir = run(cfg)
    assert checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3
    losses = metric_by_step(run_dir, "train/loss")
    assert sorted(losses) == [0, 1, 2] and all(np.isfinite(list(losses.values())))
    assert metric_by_step(run_dir, "val/loss")
