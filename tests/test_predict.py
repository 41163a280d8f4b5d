"""`python -m dnabert.tools.predict`: a fine-tuning run's own test predictions come out identical through the command,
from the seed folder, its checkpoint and its hf_model/ export, for DNABERT and DNABERT-2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from tokenizers import trainers

from dnabert.data.labelled import LabelSpace
from dnabert.data.tokenizers.bpe import new_bpe_tokenizer, save_bpe
from dnabert.data.tokenizers.kmer import NUCLEOTIDES
from dnabert.data.tokenizers.special import SPECIAL_TOKENS
from dnabert.models import get_family
from dnabert.run.finetuning import Backbone, build_encoder, run_finetune, tokenizer_for
from dnabert.run.inference import LoadedModel, SequenceSource, tokenise, write_predictions
from dnabert.tasks.finetune import SequenceClassifier
from dnabert.tools import export, predict
from tests.conftest import ROOT

PROM_CORE = ROOT / "data" / "tasks" / "prom_core.tsv"
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
FAMILIES = {
    "dnabert": ["model=tiny", "tokenizer.k=3", "model.max_position_embeddings=64"],
    "dnabert2": ["model=dnabert2_tiny", "tokenizer=bpe", "model.alibi_starting_size=64"],
}
BATCH = 16


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train, dev and test files cut from the bundled promoter task (the test split is one file, in its order)."""
    folder = tmp_path_factory.mktemp("predict_task")
    rows = pd.read_csv(PROM_CORE, sep="\t").sample(n=72, random_state=1)
    files = {}
    for name, part in (("train", rows[:32]), ("dev", rows[32:48]), ("test", rows[48:])):
        files[name] = folder / f"{name}.tsv"
        part.to_csv(files[name], sep="\t", index=False)
    tokenizer = new_bpe_tokenizer()
    tokenizer.train_from_iterator(pd.read_csv(PROM_CORE, sep="\t")["sequence"][:300], trainer=trainers.BpeTrainer(
        vocab_size=64, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=list(NUCLEOTIDES), show_progress=False))
    files["tokenizer"] = save_bpe(tokenizer, folder)
    return files


def fine_tune(family: str, task: dict[str, Path], out: Path) -> Path:
    """finetune.py's run in this process (pretrained=none, one epoch); its seed folder."""
    overrides = ["pretrained=none", *FAMILIES[family], *(f"model.{key}={value}" for key, value in TINY.items()),
                 "task=file", f"task.train={task['train']}", f"task.dev={task['dev']}", f"task.test={task['test']}",
                 "max_epochs=1", f"batch_size={BATCH}", "seed=3", "logger=csv", f"paths.output_dir={out}"]
    if family == "dnabert2":
        overrides.append(f"tokenizer.file={task['tokenizer']}")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="finetune", overrides=overrides)
    run_finetune(cfg)
    return out / "seed_3"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_predict_reproduces_the_fine_tuning_runs_test_predictions(family: str, task: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    seed_dir = fine_tune(family, task, tmp_path / "run")
    written = np.load(seed_dir / "predictions.npz")
    expected = torch.softmax(torch.from_numpy(written["test_outputs"]), dim=-1).numpy()
    test = pd.read_csv(task["test"], sep="\t")
    checkpoint = next((seed_dir / "checkpoints").glob("best-*.ckpt"))
    sources = [(seed_dir, "seed.parquet"), (seed_dir / "hf_model", "export.parquet"), (checkpoint, "checkpoint.csv")]
    for layout in get_family(family).layouts[1:]:  # the other export layouts read back too
        assert export.main([str(checkpoint), str(tmp_path / layout), "--layout", layout]) == 0
        sources.append((tmp_path / layout, f"{layout}.csv"))
    for source, out in sources:
        assert predict.main([str(source), str(task["test"]), str(tmp_path / out), "--batch-size", str(BATCH)]) == 0
        table = pd.read_parquet(tmp_path / out) if out.endswith(".parquet") else pd.read_csv(tmp_path / out,
                                                                                              dtype={"label": str})
        assert list(table["id"].astype(str)) == [str(index) for index in range(len(test))]
        probabilities = table[["probability_0", "probability_1"]].to_numpy(np.float32)
        np.testing.assert_array_equal(probabilities, expected)  # identical, not close
        assert list(table["label"]) == [str(label) for label in expected.argmax(axis=1)]
    assert written["test_targets"].tolist() == test["label"].tolist()  # the run's test split is that file


def test_predict_refuses_what_is_not_a_fine_tuned_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sequences = tmp_path / "sequences.txt"
    sequences.write_text("ACGTACGTAC\n")
    assert predict.main([str(tmp_path), str(sequences), str(tmp_path / "out.csv")]) == 2
    assert "is not a fine-tuned model" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()
    assert predict.main([str(tmp_path), str(sequences), str(tmp_path / "out.npy")]) == 2  # before any model loads
    assert capsys.readouterr().err == f"dnabert: error: {tmp_path / 'out.npy'}: name the output *.parquet or *.csv.\n"


def test_a_regression_model_writes_its_value_per_sequence(tmp_path: Path) -> None:
    """One output, no classes: `id`, `prediction` (the logit averaged over the windows), in input order."""
    config = dict(vocab_size=69, max_position_embeddings=16, **TINY)
    backbone = Backbone("dnabert", 3, config, None, "test")
    torch.manual_seed(0)
    classifier = SequenceClassifier(build_encoder(backbone), 1).eval()
    model = LoadedModel(backbone, classifier, tokenizer_for(backbone), None, 16, torch.device("cpu"),
                        LabelSpace("regression"))
    source = tmp_path / "in.txt"
    sequences = ["ACGTACGTACGTACGTACGTAC", "GGCCAATT"]  # 20 k-mers: two windows of 14; 6 k-mers: one
    source.write_text("\n".join(sequences) + "\n")
    write_predictions(model, SequenceSource(source), tmp_path / "out.csv", batch_size=2)
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["id", "prediction"] and table["id"].tolist() == [0, 1]
    batch = tokenise(model, list(SequenceSource(source).records()))
    assert batch.input_ids.shape[0] == 3  # the windows
    with torch.no_grad():
        expected = classifier(batch.input_ids, batch.sequence_index, 2)[:, 0].numpy()
    np.testing.assert_allclose(table["prediction"].to_numpy(), expected, rtol=1e-6)
