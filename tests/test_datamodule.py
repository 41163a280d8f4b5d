"""Datamodule: the batch contract, sharding over ranks x dataloader workers (real DataLoader), resume,
validation set, multi-genome start-up report and the `datasets` view."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dnabert.data.datamodule import GenomeDataModule, MicroBatchStream, collate, corpus_dataset
from dnabert.data.tokenizers.kmer import tokenize
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.data.windows import SequenceBatch
from dnabert.errors import DnabertError
from tests.test_genome import parse_fasta, random_contig, write_fasta

B = 8


@pytest.fixture(scope="module")
def fastas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("genomes")
    rng = np.random.default_rng(7)
    return {
        "big": write_fasta(folder / "big.fa", {"x": random_contig(rng, 60_000), "y": random_contig(rng, 9_000)}),
        "small": write_fasta(folder / "small.fa.gz", {"z": random_contig(rng, 20_000)}, bgzip=True),
    }


def make_data(fastas: dict[str, Path], tmp_path: Path, weights=(1.0, 1.0), **settings) -> GenomeDataModule:
    pairs = zip(fastas.items(), weights, strict=True)
    genomes = [{"name": name, "fasta": str(path), "weight": weight} for (name, path), weight in pairs]
    options = {"k": 6, "micro_batch_size": B, "num_workers": 0, "seed": 11, "pin_memory": False,
               "val_fraction": 0.1, "val_block_size": 2000, "cache_dir": tmp_path / "cache", **settings}
    return GenomeDataModule(genomes, **options)


def rows_of(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row) for row in batch["window"].tolist()]


def test_batch_format_and_ids_equal_tokenised_python_slices(fastas, tmp_path):
    data = make_data(fastas, tmp_path, reverse_complement=False)
    stream = data.train_stream()
    truth = {name: parse_fasta(path) for name, path in fastas.items()}
    for local_index in range(6):
        batch = stream.batch(local_index)
        assert set(batch) == {"input_ids", "window"}
        ids, window = batch["input_ids"], batch["window"]
        assert ids.dtype == torch.long and window.dtype == torch.long and window.shape == (B, 4)
        assert ids.shape[1] % 8 == 0 and ids.shape[1] <= 512
        n_tokens = (ids != PAD_ID).sum(1)
        assert ids.shape[1] - 8 < n_tokens.max() <= ids.shape[1]
        for row, (genome, contig, start, end) in enumerate(window.tolist()):
            genome_obj = data.genomes[genome]
            sequence = truth[genome_obj.name][genome_obj.contig_names[contig]][start:end]
            expected = tokenize(sequence, 6)
            assert ids[row, : len(expected)].tolist() == expected.tolist()
            assert ids[row, 0] == CLS_ID and ids[row, len(expected) - 1] == SEP_ID
            assert torch.all(ids[row, len(expected) :] == PAD_ID)


def test_collate_pads_to_the_multiple():
    codes = np.zeros((2, 20), dtype=np.uint8)
    batch = SequenceBatch(codes, np.array([20, 7]), np.zeros((2, 4), dtype=np.int64))
    ids = collate(batch, 3, pad_to_multiple_of=8)["input_ids"]
    assert ids.shape == (2, 24)  # 18 k-mers + 2 specials = 20 -> 24
    assert ids[1].tolist()[:8] == [CLS_ID, 5, 5, 5, 5, 5, SEP_ID, PAD_ID]


@pytest.mark.parametrize("batches_per_transfer", [1, 4])
def test_ranks_and_workers_partition_the_stream(fastas, tmp_path, batches_per_transfer):
    world, per_rank = 2, 10
    seen: list[tuple[int, ...]] = []
    for rank in range(world):
        data = make_data(fastas, tmp_path, num_workers=2, rank=rank, world_size=world, start_position=0,
                         batches_per_transfer=batches_per_transfer)
        loader = data.train_dataloader()
        direct = data.train_stream()
        for local_index, batch in zip(range(per_rank), loader, strict=False):
            assert rows_of(batch) == rows_of(direct.batch(local_index))  # worker round-robin keeps the order
            seen.extend(rows_of(batch))
    stream = make_data(fastas, tmp_path).train_stream().source.stream.windows(0, world * per_rank * B)
    expected = list(zip(stream.genome.tolist(), stream.contig.tolist(), stream.start.tolist(),
                        (stream.start + stream.length).tolist(), strict=True))
    # The shards together are exactly the stream: nothing twice, nothing skipped. (A window may recur in a later
    # epoch, e.g. an interval shorter than one window, so equality is of multisets, not sets.)
    assert len(seen) == world * per_rank * B
    assert sorted(seen) == sorted(expected)


def test_position_save_and_restore_gives_the_same_next_batches(fastas, tmp_path):
    data = make_data(fastas, tmp_path, num_workers=2, reverse_complement=True)
    loader = data.train_dataloader()
    iterator = iter(loader)
    for _ in range(5):
        next(iterator)
    state = loader.dataset.state_dict()
    assert state == {"position": 5}
    following = [rows_of(next(iterator)) for _ in range(3)]
    resumed = make_data(fastas, tmp_path, num_workers=2, reverse_complement=True).train_dataloader()
    resumed.dataset.load_state_dict(state)
    again = [rows_of(batch) for batch, _ in zip(resumed, range(3), strict=False)]
    assert again == following


def test_start_position_comes_from_the_trainer(fastas, tmp_path):
    data = make_data(fastas, tmp_path)
    data.trainer = SimpleNamespace(global_rank=1, world_size=2, global_step=3, accumulate_grad_batches=4)
    stream = data.train_stream()
    assert (stream.rank, stream.world_size, stream.position) == (1, 2, 12)
    explicit = make_data(fastas, tmp_path, rank=0, world_size=1, start_position=0).train_stream()
    assert rows_of(stream.batch(12)) == rows_of(explicit.batch(1 + 2 * 12))


def test_validation_is_fixed_sharded_and_never_overlaps_training(fastas, tmp_path):
    data = make_data(fastas, tmp_path, val_max_windows=50)
    first = [rows_of(batch) for batch in data.val_dataloader()]
    assert first == [rows_of(batch) for batch in data.val_dataloader()]
    windows = [row for batch in first for row in batch]
    assert len(windows) == len(set(windows)) > 0
    assert all(end - start == data.rule.max_nucleotides for _, _, start, end in windows)
    for genome_index, genome in enumerate(data.genomes):
        train = genome.train_intervals
        for g, contig, start, end in windows:
            if g != genome_index:
                continue
            same = train[train[:, 0] == contig]
            assert not np.any((same[:, 1] < end) & (start < same[:, 2])), "validation window overlaps training"
    sharded = []
    for rank in range(2):
        ranked = make_data(fastas, tmp_path, val_max_windows=50, rank=rank, world_size=2)
        sharded.extend(row for batch in ranked.val_dataloader() for row in rows_of(batch))
    assert len(sharded) == len(set(sharded)) and set(sharded) <= set(windows)


def test_multi_genome_report_and_weight_zero(fastas, tmp_path):
    data = make_data(fastas, tmp_path, weights=(1.0, 0.0))
    data.setup()
    assert "genome 'big'" in data.report and "stream share 100.0%" in data.report
    assert "stream share 0.0%" in data.report
    stream = data.train_stream()
    genomes = {row[0] for m in range(20) for row in rows_of(stream.batch(m))}
    assert genomes == {0}


def test_corpus_dataset_rows_are_the_epoch_windows(fastas, tmp_path):
    settings = {"genomes": [{"name": "big", "fasta": str(fastas["big"])}], "k": 6, "seed": 11,
                "cache_dir": tmp_path / "cache", "val_fraction": 0.1, "val_block_size": 2000}
    dataset = corpus_dataset(epoch=2, **settings)
    rows = list(dataset.take(20))
    truth = parse_fasta(fastas["big"])
    assert set(rows[0]) == {"sequence", "genome", "contig", "start", "end"}
    for row in rows:
        assert row["genome"] == "big"
        assert row["sequence"] == truth[row["contig"]][row["start"] : row["end"]].upper()
    data = GenomeDataModule(**settings)
    data.setup()
    assert [row["start"] for row in rows] == data.train_stream().source.stream.epoch(0, 2).start[:20].tolist()


def test_bad_settings(fastas, tmp_path):
    with pytest.raises(DnabertError, match="val_contigs"):
        make_data(fastas, tmp_path, val_contigs=["chrNope"]).setup()
    with pytest.raises(DnabertError, match="distinct names"):
        GenomeDataModule([{"name": "a", "fasta": "x.fa"}, {"name": "a", "fasta": "y.fa"}])
    with pytest.raises(DnabertError, match="genomes entry"):
        GenomeDataModule([{"name": "a", "fasta": "x.fa", "colour": "red"}])
    with pytest.raises(DnabertError, match="micro_batch_size"):
        MicroBatchStream(source=None, k=6, micro_batch_size=0)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_loader_serves_the_stream_in_order_from_any_start(fastas, tmp_path, num_workers):
    """Without workers the stream runs in the main process while the loader counts: nothing may be skipped."""
    data = make_data(fastas, tmp_path, num_workers=num_workers, start_position=5, batches_per_transfer=2)
    direct = data.train_stream()
    for offset, batch in zip(range(7), data.train_dataloader(), strict=False):
        assert rows_of(batch) == rows_of(direct.batch(5 + offset)), offset
