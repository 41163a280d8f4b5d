"""BPE (DNABERT-2): the tokenizer trained from the seeded stream is deterministic and round-trips, the data path cuts
windows to the token budget and packs them without changing a token, token-level masking hits its rate, and the
file is cached by settings and genome identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dnabert.data.bpe_training import ensure_bpe_tokenizer, train_bpe
from dnabert.data.datamodule import GenomeDataModule
from dnabert.data.masking import IGNORE_INDEX, mask_batch
from dnabert.data.tokenizers.bpe import (
    BpeWindowTokenizer,
    convert_bpe,
    install_bpe,
    load_bpe,
    save_bpe,
    usable_bpe,
    windows_as_text,
)
from dnabert.data.tokenizers.special import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID, SPECIAL_TOKENS
from dnabert.errors import DnabertError
from dnabert.tools.bpe import main
from tests.conftest import windows_in_rows
from tests.dnabert2_release import PUBLISHED_ORDER, in_project_order, train_published_tokenizer, write_original_release
from tests.training_runs import assert_same_weights

VOCAB = 300  # small: trains in well under a second, still hundreds of merges
TRAIN_BP = 60_000


def write_genome(path: Path, seed: int = 0, length: int = 80_000) -> Path:
    """Random DNA with repeated motifs (something for BPE to merge) and an N gap (a window boundary)."""
    rng = np.random.default_rng(seed)
    motifs = ["".join(rng.choice(list("ACGT"), size=rng.integers(4, 12))) for _ in range(40)]
    pieces, size = [], 0
    while size < length:
        piece = motifs[rng.integers(len(motifs))] if rng.random() < 0.5 else "".join(rng.choice(list("ACGT"), 6))
        pieces.append(piece)
        size += len(piece)
    sequence = "".join(pieces)[:length]
    sequence = sequence[: length // 2] + "N" * 500 + sequence[length // 2 :]
    lines = [sequence[i : i + 60] for i in range(0, len(sequence), 60)]
    path.write_text(">chrT\n" + "\n".join(lines) + "\n")
    return path


def data_module(fasta: Path, cache: Path, **settings) -> GenomeDataModule:
    defaults = dict(micro_batch_size=16, num_workers=0, max_tokens=32, val_fraction=0.05, val_block_size=2000,
                    cache_dir=cache, rank=0, world_size=1, start_position=0)
    return GenomeDataModule([{"name": "toy", "fasta": str(fasta)}], **{**defaults, **settings})


@pytest.fixture(scope="module")
def genome(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_genome(tmp_path_factory.mktemp("bpe_genome") / "toy.fa")


@pytest.fixture(scope="module")
def tokenizer_file(genome: Path) -> Path:
    tokenizer = train_bpe(data_module(genome, genome.parent), TRAIN_BP, VOCAB, report=lambda _: None)
    return save_bpe(tokenizer, genome.parent / "tok")


def test_training_is_deterministic_for_a_seed_and_follows_it(genome: Path, tokenizer_file: Path) -> None:
    again = train_bpe(data_module(genome, genome.parent), TRAIN_BP, VOCAB, report=lambda _: None)
    other_seed = train_bpe(data_module(genome, genome.parent, seed=1), TRAIN_BP, VOCAB, report=lambda _: None)
    saved = json.loads(tokenizer_file.read_text())["model"]
    assert json.loads(again.to_str())["model"] == saved
    assert json.loads(other_seed.to_str())["model"]["merges"] != saved["merges"]  # another stream, other text
    assert again.get_vocab_size() == VOCAB


def test_round_trip_through_transformers(tokenizer_file: Path) -> None:
    """The saved folder loads with AutoTokenizer and tokenizer.json alone with PreTrainedTokenizerFast; decoding
    gives the sequence back; the special ids are the k-mer vocabulary's."""
    sequence = "ACGTTGCAAGGCTTAACCGGTATATGCGCATTAGGACCCTTAGAGAGTCTCAGT"
    folder = AutoTokenizer.from_pretrained(str(tokenizer_file.parent))
    ids = folder(sequence)["input_ids"]
    assert ids[0] == CLS_ID and ids[-1] == SEP_ID and len(ids) < len(sequence)
    assert folder.decode(ids, skip_special_tokens=True) == sequence
    assert (folder.pad_token_id, folder.mask_token_id, folder.unk_token_id) == (PAD_ID, MASK_ID, 1)
    assert len(folder) == VOCAB
    plain = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    assert plain(sequence)["input_ids"] == ids


def test_a_tokenizer_with_the_published_special_ids_is_refused(tokenizer_file: Path, tmp_path: Path) -> None:
    content = json.loads(tokenizer_file.read_text())
    published = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}
    for entry in content["added_tokens"]:
        entry["id"] = published[entry["content"]]
    content["model"]["vocab"].update(published)
    (tmp_path / "tokenizer.json").write_text(json.dumps(content))
    with pytest.raises(DnabertError, match=r"tokenizer\.json has special ids .*\[PAD\]=0 \[UNK\]=1.*bpe convert"):
        load_bpe(tmp_path)
    with pytest.raises(DnabertError, match="does not exist"):
        load_bpe(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def published_file(genome: Path) -> Path:
    """A tokenizer with the released DNABERT-2's special ids ([UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4)."""
    text = "".join(genome.read_text().splitlines()[1:]).replace("N", "")
    texts = [text[start : start + 1000] for start in range(0, 60_000, 1000)]
    return train_published_tokenizer(texts, VOCAB, genome.parent / "published.json")


def test_a_published_order_tokenizer_converts_keeping_every_dna_token_id(published_file: Path,
                                                                          tmp_path: Path) -> None:
    original = Tokenizer.from_file(str(published_file))
    converted, order = convert_bpe(published_file)
    assert order == PUBLISHED_ORDER
    assert [converted.token_to_id(token) for token in SPECIAL_TOKENS] == list(range(NUM_SPECIAL_TOKENS))
    rng = np.random.default_rng(1)
    sequences = ["".join(rng.choice(list("ACGT"), size=rng.integers(1, 400))) for _ in range(300)]
    ours = [encoding.ids for encoding in converted.encode_batch(sequences, add_special_tokens=False)]
    theirs = [encoding.ids for encoding in original.encode_batch(sequences, add_special_tokens=False)]
    assert ours == theirs and min(min(ids) for ids in ours) >= NUM_SPECIAL_TOKENS  # the same ids, none special
    assert converted.encode(sequences[0]).ids == [CLS_ID, *ours[0], SEP_ID]  # the post-processor's ids
    assert original.encode(sequences[0]).ids == [1, *ours[0], 2]
    written = "ACGT[MASK]GGA[PAD]"  # special tokens in the text: the added tokens' ids
    assert converted.encode(written, add_special_tokens=False).ids == [
        PUBLISHED_ORDER.index(old) if old < NUM_SPECIAL_TOKENS else old
        for old in original.encode(written, add_special_tokens=False).ids]
    with pytest.raises(DnabertError, match=r"published.json has special ids .*convert it themselves.*bpe convert"):
        load_bpe(published_file)
    original.enable_padding(pad_id=3, pad_token="[PAD]")  # a file that pads: with [PAD]'s new id
    original.save(str(tmp_path / "pads.json"))
    assert convert_bpe(tmp_path / "pads.json")[0].encode_batch(["ACGTTT", "A"])[1].ids[-1] == PAD_ID
    # installed into a run directory: converted, the same bytes every time (ranks write at once); others copied
    installed, was_converted = install_bpe(published_file, tmp_path / "run")
    assert was_converted and installed == tmp_path / "run" / "tokenizer.json"
    first = installed.read_bytes()
    assert install_bpe(published_file, tmp_path / "run")[0].read_bytes() == first
    assert load_bpe(installed).to_str() == converted.to_str()
    assert install_bpe(installed, tmp_path / "again") == (tmp_path / "again" / "tokenizer.json", False)
    # the command line writes a folder transformers loads with the project's ids
    assert main(["convert", str(published_file), "--out", str(tmp_path / "tok")]) == 0
    folder = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (folder.pad_token_id, folder.unk_token_id, folder.mask_token_id) == (PAD_ID, 1, MASK_ID)
    assert folder(sequences[1])["input_ids"] == [CLS_ID, *ours[1], SEP_ID]


def test_other_special_layouts_stay_refused(published_file: Path, tmp_path: Path) -> None:
    content = json.loads(published_file.read_text())
    dna_token = next(token for token, index in content["model"]["vocab"].items() if index == 7)
    content["model"]["vocab"].update({"[PAD]": 7, dna_token: 3})  # [PAD] outside ids 0..4
    for entry in content["added_tokens"]:
        entry["id"] = 7 if entry["content"] == "[PAD]" else entry["id"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(content))
    with pytest.raises(DnabertError, match=r"tokenizer\.json has special ids .*only a tokenizer whose five special"):
        convert_bpe(tmp_path)
    with pytest.raises(DnabertError, match=r"tokenizer\.json has special ids .*Train one"):
        usable_bpe(tmp_path, tmp_path / "run")  # what pretrained= / tokenizer.file of fine-tuning go through
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "tok")]) == 2  # one line, exit 2


def test_windows_are_tokenised_and_cut_to_the_token_budget(genome: Path, tokenizer_file: Path) -> None:
    bpe = BpeWindowTokenizer(tokenizer_file)
    data = data_module(genome, genome.parent, tokenizer=bpe, window_bp=200)
    stream = data.train_stream()
    source = data.window_source()
    reference = Tokenizer.from_file(str(tokenizer_file))
    cut = 0
    for index in range(3):
        batch = stream.batch(index)["input_ids"]
        sequences = source.read(index * 16, 16)
        assert batch.shape[1] <= 32 and batch.shape[1] % 8 == 0
        for row, text in zip(batch.tolist(), windows_as_text(sequences.codes, sequences.lengths), strict=True):
            expected = reference.encode(text, add_special_tokens=False).ids
            cut += len(expected) > 30
            real = [token for token in row if token != PAD_ID]
            assert real == [CLS_ID, *expected[:30], SEP_ID]
    assert cut > 0, "no window was longer than the budget: the cut was not tested"


def test_packing_keeps_every_window_and_token(genome: Path, tokenizer_file: Path) -> None:
    bpe = BpeWindowTokenizer(tokenizer_file)
    plain = data_module(genome, genome.parent, tokenizer=bpe, window_bp=200, max_tokens=64).train_stream()
    packed = data_module(genome, genome.parent, tokenizer=bpe, window_bp=200, max_tokens=64,
                         pack_rows=True).train_stream()
    for index in range(4):
        one_per_row, several = plain.batch(index), packed.batch(index)
        assert windows_in_rows(several["input_ids"]) != []
        assert sorted(windows_in_rows(several["input_ids"])) == sorted(windows_in_rows(one_per_row["input_ids"]))
        assert several["input_ids"].shape[0] < one_per_row["input_ids"].shape[0]
        assert torch.equal(several["window"], one_per_row["window"])


def test_validation_and_workers_see_the_same_tokens(genome: Path, tokenizer_file: Path) -> None:
    """The tokenizer travels to dataloader workers (pickled as its path) and gives the same batches there."""
    bpe = BpeWindowTokenizer(tokenizer_file)
    in_process = data_module(genome, genome.parent, tokenizer=bpe, window_bp=200)
    with_workers = data_module(genome, genome.parent, tokenizer=bpe, window_bp=200, num_workers=2,
                               batches_per_transfer=2)
    expected = [in_process.train_stream().batch(index)["input_ids"] for index in range(4)]
    loader = iter(with_workers.train_dataloader())
    for batch in expected:
        assert torch.equal(next(loader)["input_ids"], batch)
    validation = next(iter(in_process.val_dataloader()))["input_ids"]
    assert validation.shape[1] <= 32 and (validation == CLS_ID).sum() == validation.shape[0]


def test_window_bp_goes_with_a_tokenizer(genome: Path, tokenizer_file: Path) -> None:
    with pytest.raises(DnabertError, match="data.window_bp"):
        data_module(genome, genome.parent, window_bp=200)
    with pytest.raises(DnabertError, match="data.window_bp"):
        data_module(genome, genome.parent, tokenizer=BpeWindowTokenizer(tokenizer_file))


def test_cache_is_keyed_by_settings_and_genome(genome: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    data = data_module(genome, tmp_path)
    first = ensure_bpe_tokenizer(data, 20_000, 100, tmp_path, report=messages.append)
    assert any("Training a BPE tokenizer" in message for message in messages)
    messages.clear()
    assert ensure_bpe_tokenizer(data_module(genome, tmp_path), 20_000, 100, tmp_path, report=messages.append) == first
    assert messages == [f"BPE tokenizer: {first} (cached)"]
    other_budget = ensure_bpe_tokenizer(data, 30_000, 100, tmp_path, report=messages.append)
    copy = write_genome(tmp_path / "toy.fa", seed=0)  # same content, another file: another identity
    other_file = ensure_bpe_tokenizer(data_module(copy, tmp_path), 20_000, 100, tmp_path, report=messages.append)
    assert len({first, other_budget, other_file}) == 3
    assert load_bpe(first).get_vocab_size() == 100


def test_token_masking_rate_and_replacements() -> None:
    """15% of the real tokens within 0.5 pp, 80/10/10, specials never, random ids non-special and new."""
    vocab = 4096
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(NUM_SPECIAL_TOKENS, vocab, (256, 512), generator=generator)
    input_ids[:, 0], input_ids[:, 300] = CLS_ID, SEP_ID
    input_ids[:, 301:] = PAD_ID
    masked_ids, labels = mask_batch(input_ids, None, 0.15, generator, mode="token", vocab_size=vocab)
    real = input_ids >= NUM_SPECIAL_TOKENS
    masked = labels != IGNORE_INDEX
    assert not (masked & ~real).any()
    assert masked.sum() / real.sum() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(labels[masked], input_ids[masked])
    to_mask = masked_ids[masked] == MASK_ID
    changed = (masked_ids[masked] != MASK_ID) & (masked_ids[masked] != input_ids[masked])
    assert to_mask.float().mean() == pytest.approx(0.8, abs=0.01)
    assert changed.float().mean() == pytest.approx(0.1, abs=0.01)
    replacements = masked_ids[masked][changed]
    assert replacements.min() >= NUM_SPECIAL_TOKENS and replacements.max() < vocab
    assert replacements.max() > 3000  # drawn over the whole vocabulary, not the 4^k k-mer range of k=3..5
    assert torch.equal(masked_ids[~masked], input_ids[~masked])


def test_dnabert2_paper_recipe_and_estimate(compose_config, genome: Path) -> None:
    """The published recipe, composed as a user runs it, and `estimate=true` for both DNABERT-2 experiments."""
    from dnabert.run.estimate import estimate_from_config
    from dnabert.run.training import make_plan

    cfg = compose_config("experiment=dnabert2_paper", f"data.genomes=[{{name: toy, fasta: '{genome}'}}]",
                         "estimate=true")
    assert (cfg.tokenizer.kind, cfg.tokenizer.vocab_size, cfg.model.vocab_size, cfg.model.family) == (
        "bpe", 4096, 4096, "dnabert2")
    assert (cfg.model.num_hidden_layers, cfg.model.hidden_size, cfg.model.intermediate_size) == (12, 768, 3072)
    assert (cfg.masking.mode, cfg.masking.rate, cfg.data.max_tokens) == ("token", 0.15, 128)
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.eps, cfg.optim.weight_decay) == (5e-4, [0.9, 0.98], 1e-6,
                                                                                            1e-5)
    assert (cfg.optim.warmup_steps, cfg.optim.total_steps, cfg.global_batch_size, cfg.max_steps) == (
        30_000, None, 4096, 500_000)
    plan = make_plan(cfg)
    assert plan.accumulation == 4 and plan.switch_step == 500_000  # 128 x 4 x 8 GPUs; the rate never switches
    assert "4096 sequences/step = 8 devices x 128 x 4 accumulation; 500,000 steps" in estimate_from_config(
        cfg, plan.devices, plan.num_nodes)
    demo = compose_config("experiment=dnabert2_demo", "estimate=true")
    assert "32 sequences/step" in estimate_from_config(demo, 1, 1)


def test_bpe_runs_refuse_kmer_masking_and_a_wrong_vocabulary(compose_config, tokenizer_file: Path) -> None:
    from dnabert.run.training import build_module, make_plan

    settings = ("experiment=dnabert2_demo", "model=tiny", f"tokenizer.file='{tokenizer_file}'")
    cfg = compose_config(*settings, f"tokenizer.vocab_size={VOCAB}", "masking=whole_kmer",
                         "masking.final_rate_steps=10")
    with pytest.raises(DnabertError, match="BPE tokens need masking=token"):
        build_module(cfg, make_plan(cfg))
    cfg = compose_config(*settings)  # the file has 300 tokens, the config asks for 4096
    with pytest.raises(DnabertError, match=f"model.vocab_size=4096 does not fit the BPE tokenizer \\(needs {VOCAB}\\)"):
        build_module(cfg, make_plan(cfg))
    cfg = compose_config(*settings, f"tokenizer.vocab_size={VOCAB}")
    assert build_module(cfg, make_plan(cfg)).model.config.vocab_size == VOCAB


def test_dnabert2_run_continues_from_a_multimolecule_export(compose_config, tokenizer_file: Path,
                                                             tmp_path: Path) -> None:
    """`model.init_from` of a dnabert2 run loads a MultiMolecule export (written with the run's BPE tokenizer)."""
    from dnabert.models.dnabert2.interop import export_dnabert2_model
    from dnabert.run.training import build_module, make_plan

    settings = ("experiment=dnabert2_demo", f"tokenizer.file='{tokenizer_file}'", f"tokenizer.vocab_size={VOCAB}")
    cfg = compose_config(*settings)
    exported = build_module(cfg, make_plan(cfg)).model
    export_dnabert2_model(exported, tokenizer_file, tmp_path / "hf_model")
    cfg = compose_config(*settings, f"model.init_from='{tmp_path / 'hf_model'}'")
    continued = build_module(cfg, make_plan(cfg)).model
    assert_same_weights(continued.state_dict(), exported.state_dict(), atol=0)


def test_dnabert2_run_continues_from_the_release(compose_config, published_file: Path, tmp_path: Path) -> None:
    """`tokenizer.file=<release> model.init_from=<release>`: the run tokenises with the converted copy in its
    directory (which export and probe pick up) and starts from the release's weights with rows 0..4 to match."""
    from dnabert.run.training import build_datamodule, build_module, make_plan, prepare_tokenizer
    from dnabert.tools.export import run_tokenizer

    settings = ("experiment=dnabert2_demo", f"tokenizer.vocab_size={VOCAB}", f"paths.output_dir='{tmp_path / 'run'}'")
    cfg = compose_config(*settings, f"tokenizer.file='{published_file}'")
    released = build_module(cfg, make_plan(cfg)).model
    release = write_original_release(released, tmp_path / "release", published_file)
    cfg = compose_config(*settings, f"tokenizer.file='{release}'", f"model.init_from='{release}'")
    prepare_tokenizer(cfg, tmp_path / "run")
    assert cfg.tokenizer.file == str(tmp_path / "run" / "tokenizer.json")
    assert run_tokenizer(tmp_path / "run", {"tokenizer": {"file": str(release)}}) == tmp_path / "run" / "tokenizer.json"
    assert load_bpe(cfg.tokenizer.file).to_str() == convert_bpe(release)[0].to_str()
    continued = build_module(cfg, make_plan(cfg)).model
    assert (continued.config.pad_token_id, continued.config.cls_token_id) == (PAD_ID, CLS_ID)
    assert_same_weights(continued.state_dict(), in_project_order(released.state_dict()), atol=0)
    assert build_datamodule(cfg).tokenizer.file == tmp_path / "run" / "tokenizer.json"


def test_command_line_trains_prints_progress_and_writes_a_loadable_folder(genome: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    second = write_genome(tmp_path / "second.fa", seed=3)
    out = tmp_path / "tok"
    assert main(["train", "--fasta", str(genome), "--fasta", f"{second}:0.25", "--out", str(out),
                 "--vocab-size", "120", "--train-bp", "30000"]) == 0
    printed = capsys.readouterr().out
    assert "on 30,000 bp of the stream" in printed and "read 30,000 of 30,000 bp (100%)" in printed
    assert "bp/s" in printed and "bp per token" in printed
    assert f"wrote {out / 'tokenizer.json'}" in printed
    assert len(AutoTokenizer.from_pretrained(str(out))) == 120
    assert main(["train", "--fasta", str(tmp_path / "missing.fa"), "--out", str(out)]) == 2  # one line, exit 2
