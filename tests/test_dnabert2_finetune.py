"""Fine-tuning and the pretraining probe on DNABERT-2 (BPE) backbones (issue 14, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from dnabert.data.labelled import token_windows
from dnabert.data.tokenizers.bpe import BpeWindowTokenizer, convert_bpe, load_bpe, new_bpe_tokenizer, save_bpe
from dnabert.data.tokenizers.kmer import NUCLEOTIDES
from dnabert.data.tokenizers.special import PAD_ID, SPECIAL_TOKENS
from dnabert.errors import DnabertError
from dnabert.models import build_model
from dnabert.run.finetuning import resolve_backbone
from dnabert.run.probe import PROBE_METRICS, DownstreamProbe
from dnabert.run.training import probe_callbacks
from dnabert.tools.export import export_classifier, load_classifier_checkpoint
from tests.conftest import ROOT
from tests.dnabert2_release import in_project_order, train_published_tokenizer, write_original_release

multimolecule = pytest.importorskip("multimolecule")

PROM_CORE = ROOT / "data" / "tasks" / "prom_core.tsv"
SEED = 5
# vocab_size comes from the tokenizer; alibi_starting_size is the default window (64 tokens)
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, alibi_starting_size=64)
SEQUENCES = ["ACGTACGGTTACAGATTACA", "TTGACCAGGT", "GATTACAGATTACACCGTAGGCTTAACG"]


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DNABERT-2 run directory as train.py leaves it: checkpoints/last.ckpt and the run's tokenizer.json. Its
    weights are what `pretrained=none` draws for SEED, so the two fine-tunings may differ only in their origin."""
    run_dir = tmp_path_factory.mktemp("dnabert2_run")
    tokenizer = new_bpe_tokenizer()
    tokenizer.train_from_iterator(pd.read_csv(PROM_CORE, sep="\t")["sequence"][:400], trainer=_trainer())
    save_bpe(tokenizer, run_dir)
    config = {**TINY, "vocab_size": tokenizer.get_vocab_size()}
    torch.manual_seed(SEED)  # build_classifier seeds the same way before building the encoder
    model = build_model("dnabert2", config)
    state_dict = {f"model.{key}": value for key, value in model.state_dict().items()}
    hyper_parameters = {"family": "dnabert2", "k": 6, "model_config": model.config.to_dict(),
                        "train_config": {"tokenizer": {"kind": "bpe", "file": None}}}
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": state_dict, "hyper_parameters": hyper_parameters, "global_step": 9},
               run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def _trainer():
    from tokenizers import trainers

    return trainers.BpeTrainer(vocab_size=64, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=list(NUCLEOTIDES),
                               show_progress=False)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = tmp_path_factory.mktemp("dnabert2_task") / "task.tsv"
    pd.read_csv(PROM_CORE, sep="\t").sample(n=64, random_state=0).to_csv(task, sep="\t", index=False)
    return task


def fine_tune(overrides: list[str], task: Path, output_root: Path) -> Path:
    """`python finetune.py` with these overrides on the tiny task, one short epoch; its run directory."""
    common = ["task=file", f"task.train={task}", "task.dev_fraction=0.25", "task.test_fraction=0.25",
              "max_epochs=1", "batch_size=16", f"seed={SEED}", "logger=csv"]
    command = [sys.executable, str(ROOT / "finetune.py"), *overrides, *common, f"paths.output_root={output_root}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return next(output_root.glob("*/*/results.json")).parent


@pytest.fixture(scope="module")
def finetunes(pretraining_run: Path, task_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python finetune.py` on the run, and with pretrained=none on the same architecture and tokenizer."""
    tmp_path = tmp_path_factory.mktemp("dnabert2_finetune")
    none = ["pretrained=none", "model=dnabert2_tiny", "tokenizer=bpe", f"tokenizer.file={pretraining_run}",
            *(f"model.{key}={value}" for key, value in TINY.items())]
    return {name: fine_tune(overrides, task_file, tmp_path / name)
            for name, overrides in (("run", [f"pretrained={pretraining_run}"]), ("none", none))}


def assert_export_gives_our_logits(seed_dir: Path, tokenizer_file: Path) -> None:
    """The exported MultiMolecule classifier, fed by its bundled tokenizer, gives the fine-tuned model's logits on
    rows tokenised by `tokenizer_file` (the backbone's)."""
    classifier, backbone, labels = load_classifier_checkpoint(next((seed_dir / "checkpoints").glob("best-*.ckpt")))
    classifier.eval()
    ids = BpeWindowTokenizer(tokenizer_file).sequence_ids(SEQUENCES)
    rows = [torch.from_numpy(token_windows(row, 64)[0]) for row in ids]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PAD_ID)
    with torch.no_grad():
        ours = classifier(input_ids, torch.arange(len(SEQUENCES)), len(SEQUENCES))

    loaded, info = multimolecule.DnaBert2ForSequencePrediction.from_pretrained(seed_dir / "hf_model",
                                                                              output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.id2label == {0: "0", 1: "1"}
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(seed_dir / "hf_model")(SEQUENCES, padding=True, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], input_ids)  # the bundled tokenizer gives our rows
    with torch.no_grad():
        theirs = loaded.eval()(**encoded).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    with pytest.raises(DnabertError, match="multimolecule layout only"):
        export_classifier(classifier, backbone, labels, seed_dir / "original", layout="original")


@pytest.mark.slow
def test_dnabert2_backbones_fine_tune_and_differ_from_none_only_in_initial_weights(finetunes, pretraining_run):
    results = {name: json.loads((run_dir / "results.json").read_text()) for name, run_dir in finetunes.items()}
    assert results["run"]["family"] == results["none"]["family"] == "dnabert2"
    assert results["run"]["k"] is None and results["run"]["pretrained"] == str(pretraining_run)
    assert "BPE tokens" in (finetunes["run"] / "report.md").read_text()
    run_seed, none_seed = results["run"]["seeds"][0], results["none"]["seeds"][0]
    assert run_seed["dev_history"] and run_seed["dev_history"] == none_seed["dev_history"]
    assert run_seed["metrics"] == none_seed["metrics"]
    # ... and the run's weights were used: they are what the fine-tuned model started from
    backbone = resolve_backbone(str(pretraining_run), 6, {})
    assert backbone.weights is not None and backbone.tokenizer == str(pretraining_run / "tokenizer.json")
    assert backbone.positions == (64, None)


@pytest.mark.slow
def test_exported_dnabert2_classifier_loads_in_multimolecule_with_equal_logits(finetunes, pretraining_run):
    assert_export_gives_our_logits(finetunes["run"] / f"seed_{SEED}", pretraining_run / "tokenizer.json")


def test_the_released_dnabert2_fine_tunes_with_its_tokenizer_converted(task_file: Path, tmp_path: Path):
    """`python finetune.py pretrained=<release>` (the published special ids, original layout): the tokenizer is
    converted into the run directory, the weights are the release's with rows 0..4 to match, and the export
    carries the converted tokenizer and gives our logits."""
    tokenizer = train_published_tokenizer(list(pd.read_csv(PROM_CORE, sep="\t")["sequence"][:400]), 64,
                                          tmp_path / "published.json")
    torch.manual_seed(SEED)
    released = build_model("dnabert2", {**TINY, "vocab_size": 64, "pad_token_id": 3, "cls_token_id": 1})
    release = write_original_release(released, tmp_path / "release", tokenizer)
    run_dir = fine_tune([f"pretrained={release}"], task_file, tmp_path / "finetune")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["family"] == "dnabert2" and results["pretrained"] == str(release)
    assert load_bpe(run_dir / "tokenizer.json").to_str() == convert_bpe(tokenizer)[0].to_str()
    backbone = resolve_backbone(str(release), 6, {}, work_dir=tmp_path / "again")
    assert backbone.tokenizer == str(tmp_path / "again" / "tokenizer.json") and backbone.config["pad_token_id"] == 0
    expected = in_project_order(released.state_dict())
    assert all(torch.equal(backbone.weights[key], value) for key, value in expected.items())
    assert_export_gives_our_logits(run_dir / f"seed_{SEED}", run_dir / "tokenizer.json")


def test_probe_on_a_dnabert2_run_is_deterministic_and_uses_its_bpe(pretraining_run):
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = build_model("dnabert2", {**TINY, "vocab_size": BpeWindowTokenizer(pretraining_run).vocab_size})
    module = SimpleNamespace(model=model.train(), device=torch.device("cpu"))
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=dnabert2_demo",
                                                      f"tokenizer.file={pretraining_run}", "probe.max_sequences=200"])
    scores = []
    for _ in range(2):  # fresh probes as the demo configures them: same subset, split, tokens and scores
        (probe,) = probe_callbacks(cfg)
        probe.setup(None, module, "fit")
        rng_before = torch.get_rng_state()
        scores.append(probe.score(probe.embed(module)))
        assert torch.equal(torch.get_rng_state(), rng_before) and module.model.training
    assert scores[0] == scores[1] and set(scores[0]) == set(PROBE_METRICS)
    assert probe.max_positions == cfg.data.max_tokens == 64
    first_row = probe.loader.dataset.windows[0][0]
    assert first_row.tolist() == token_windows(BpeWindowTokenizer(pretraining_run).sequence_ids(
        [probe.data.sequences[0]])[0], 64)[0].tolist()
    with pytest.raises(ValueError, match="exactly one of k and tokenize"):
        DownstreamProbe(str(PROM_CORE))


def test_a_multimolecule_export_is_the_same_backbone_as_its_run(pretraining_run, tmp_path):
    """pretrained=<the run's hf_model> gives the run's weights, architecture and tokens."""
    from dnabert.tools.export import export_checkpoint

    from_run = resolve_backbone(str(pretraining_run), 6, {})
    from_export = resolve_backbone(str(export_checkpoint(pretraining_run, tmp_path / "hf_model")), 6, {})
    assert from_export.family == "dnabert2" and from_export.config == from_run.config
    assert from_export.weights.keys() == from_run.weights.keys()
    assert all(torch.equal(from_export.weights[key], from_run.weights[key]) for key in from_run.weights)
    ids = [BpeWindowTokenizer(backbone.tokenizer).sequence_ids(SEQUENCES) for backbone in (from_run, from_export)]
    assert all((a == b).all() for a, b in zip(*ids, strict=True))


def test_dnabert2_none_without_a_tokenizer_is_one_clear_error():
    with pytest.raises(DnabertError, match="tokenizer=bpe tokenizer.file="):
        resolve_backbone("none", 6, {"family": "dnabert2", **TINY, "vocab_size": 64})


def test_kmer_family_none_without_a_k_is_one_clear_error():
    """With tokenizer=bpe the config has no tokenizer.k: a k-mer family from scratch must say so, not guess a k."""
    architecture = {"family": "dnabert", "hidden_size": 32, "num_attention_heads": 2}
    with pytest.raises(DnabertError, match="model.family=dnabert reads k-mers: use tokenizer=kmer"):
        resolve_backbone("none", None, architecture)
    assert resolve_backbone("none", 4, architecture).config["vocab_size"] == 4**4 + 5
