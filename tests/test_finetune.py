"""Fine-tuning (issue 13): metrics, the two input formats, windowing, bad input, seeds, best-on-dev, export."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir

from dnabert.data.labelled import (
    collate_windows,
    kmer_tokenizer,
    label_space,
    read_labelled,
    token_windows,
    windowed_set,
)
from dnabert.data.tokenizers.kmer import kmer_text
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert.model import DnaBertConfig
from dnabert.run.finetuning import Backbone, build_classifier, build_encoder, fine_tune_seed, load_task
from dnabert.tasks.finetune import FineTuneModule
from dnabert.tasks.metrics import classification_metrics, regression_metrics, selection_metric
from dnabert.tools.export import export_checkpoint, load_classifier_checkpoint
from tests.conftest import ROOT

K = 3
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)
TINY_OVERRIDES = [f"model.{key}={value}" for key, value in TINY.items()]
PROM_CORE = ROOT / "data" / "tasks" / "prom_core.tsv"


def tiny_backbone(k: int = K, weights: dict | None = None) -> Backbone:
    return Backbone("dnabert", k, DnaBertConfig(vocab_size=4**k + 5, **TINY).to_dict(), weights, "test")


# --------------------------------------------------------------------------------------------------- metrics
def test_classification_metrics_equal_a_hand_computation() -> None:
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    positive = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])  # predicted 1,1,0,1,0,0: TP 2, FN 1, FP 1, TN 2
    metrics = classification_metrics(torch.stack([1 - positive, positive], dim=1), labels)
    tp, fn, fp, tn = 2, 1, 1, 2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["precision"] == pytest.approx(precision)
    assert metrics["recall"] == pytest.approx(recall)
    assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics["mcc"] == pytest.approx(mcc)  # 1/3
    # AUROC: of the 9 (positive, negative) pairs, the positive scores higher in 8 (0.3 < 0.6 is the miss).
    assert metrics["auroc"] == pytest.approx(8 / 9)
    # Average precision: precision at each positive in score order 0.9, 0.8, (0.6 neg), 0.3 -> 1, 1, 3/4.
    assert metrics["aupr"] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_multiclass_metrics_are_macro_averaged() -> None:
    labels = torch.tensor([0, 1, 2, 2])
    probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    metrics = classification_metrics(probabilities, labels)  # predicted 0, 1, 1, 2
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    # per class precision 1, 1/2, 1 and recall 1, 1, 1/2 -> F1 1, 2/3, 2/3
    assert metrics["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_regression_metrics_equal_a_hand_computation() -> None:
    predictions, targets = torch.tensor([1.0, 2.0, 4.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 5.0])
    metrics = regression_metrics(predictions, targets)
    assert metrics["mse"] == pytest.approx((0 + 0 + 1 + 4) / 4)
    assert metrics["pearson"] == pytest.approx(float(np.corrcoef(predictions, targets)[0, 1]), abs=1e-6)
    assert metrics["spearman"] == pytest.approx(0.8)  # ranks 1,2,4,3 vs 1,2,3,4: 1 - 6*2/(4*15)



def test_selection_metric_defaults_by_task_type_and_refuses_the_other_types() -> None:
    """With task.type=auto the type is known only from the labels: the run checks it then, before training."""
    assert selection_metric(None, "classification") == "mcc" and selection_metric(None, "regression") == "spearman"
    assert selection_metric("loss", "regression") == "loss" and selection_metric("auroc", "classification") == "auroc"
    with pytest.raises(DnabertError, match=r"selection_metric='mse' is not a classification metric; use one of "):
        selection_metric("mse", "classification")


# ------------------------------------------------------------------------------------------------ reading
SEQUENCES = ["ACGTACGTTAGC", "TTTTGGGGCCAA", "GATTACAGATTA", "CCCGGGAAATTT"]
LABELS = ["1", "0", "1", "0"]


def write_kmer_tsv(path: Path, sequences: list[str], labels: list[str], k: int = K) -> Path:
    """DNABERT's released layout: a header separated by spaces, CRLF line ends, k-mers then a tab and a label."""
    lines = ["sequence  label"] + [f"{kmer_text(s, k)}\t{label}" for s, label in zip(sequences, labels, strict=True)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def test_dnabert_tsv_and_raw_tables_give_identical_batches(tmp_path: Path) -> None:
    kmer_file = write_kmer_tsv(tmp_path / "train.tsv", SEQUENCES, LABELS)
    table = pd.DataFrame({"seq": SEQUENCES, "y": [int(label) for label in LABELS]})
    table.to_csv(tmp_path / "train.csv", index=False)
    table.to_parquet(tmp_path / "train.parquet")
    batches = []
    for path, columns in ((kmer_file, ()), (tmp_path / "train.csv", ("seq", "y")),
                          (tmp_path / "train.parquet", ("seq", "y"))):
        data = read_labelled(path, K, *columns)
        assert data.sequences == SEQUENCES
        labels = label_space(data)
        assert labels.names == ("0", "1")
        windows = windowed_set(data, labels.targets(data), kmer_tokenizer(K), max_positions=64)
        batches.append(collate_windows([windows[i] for i in range(len(windows))]))
    for batch in batches[1:]:
        for key in ("input_ids", "sequence_index", "labels"):
            assert torch.equal(batch[key], batches[0][key]), key
    assert batches[0]["labels"].tolist() == [1, 0, 1, 0]
    assert batches[0]["input_ids"].shape == (4, 16)  # 10 k-mers + [CLS] + [SEP], padded to a multiple of 8


def test_rows_with_other_letters_are_dropped_and_counted(tmp_path: Path, caplog) -> None:
    pd.DataFrame({"sequence": ["ACGTNACGT", "ACGTACGTA", "acgtacgta"], "label": [0, 1, 0]}).to_csv(
        tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="dnabert"):
        data = read_labelled(tmp_path / "t.csv", K)
    assert data.sequences == ["ACGTACGTA", "ACGTACGTA"] and data.labels == [1, 0] and data.dropped == 1
    assert "dropped 1 of 3 rows" in caplog.text


def test_string_labels_map_to_sorted_ids_and_fractional_labels_mean_regression(tmp_path: Path) -> None:
    pd.DataFrame({"sequence": SEQUENCES, "label": ["tata", "none", "tata", "cpg"]}).to_csv(tmp_path / "c.csv",
                                                                                          index=False)
    data = read_labelled(tmp_path / "c.csv", K)
    labels = label_space(data)
    assert labels.names == ("cpg", "none", "tata") and labels.targets(data).tolist() == [2, 1, 2, 0]
    pd.DataFrame({"sequence": SEQUENCES, "label": [0.5, 1.25, 3.0, 2.0]}).to_csv(tmp_path / "r.csv", index=False)
    regression = label_space(read_labelled(tmp_path / "r.csv", K))
    assert regression.task_type == "regression" and regression.num_outputs == 1


@pytest.mark.parametrize(("case", "message"), [
    ("unknown column", "has no column(s) ['label']"),
    ("label missing in train", "that the training file lacks"),
    ("one class", "has only one class"),
    ("wrong k", "holds 4-mers but the backbone has k=3"),
    ("all invalid", "has no row of only A/C/G/T"),
])
def test_bad_task_input_is_one_clear_error(tmp_path: Path, case: str, message: str) -> None:
    train = tmp_path / "train.csv"
    pd.DataFrame({"sequence": SEQUENCES, "label": LABELS}).to_csv(train, index=False)
    dev = tmp_path / "dev.csv"
    pd.DataFrame({"sequence": SEQUENCES, "label": LABELS}).to_csv(dev, index=False)
    if case == "unknown column":
        pd.DataFrame({"sequence": SEQUENCES, "class": LABELS}).to_csv(train, index=False)
    elif case == "label missing in train":
        pd.DataFrame({"sequence": SEQUENCES, "label": ["1", "0", "2", "0"]}).to_csv(dev, index=False)
    elif case == "one class":
        pd.DataFrame({"sequence": SEQUENCES, "label": ["1"] * 4}).to_csv(train, index=False)
    elif case == "wrong k":
        write_kmer_tsv(train := tmp_path / "train.tsv", SEQUENCES, LABELS, k=4)
    elif case == "all invalid":
        pd.DataFrame({"sequence": ["NNNNNN"] * 4, "label": LABELS}).to_csv(train, index=False)
    task = compose_finetune(f"task.train={train}", f"task.dev={dev}").task
    with pytest.raises(DnabertError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_task(task, tiny_backbone(), max_positions=64)


# ----------------------------------------------------------------------------------------------- windows
def test_long_sequences_become_overlapping_windows_whose_logits_are_averaged() -> None:
    ids = np.arange(10, 20)
    windows = token_windows(ids, max_positions=6)  # 4 k-mers per window, stride 2, the last one flush with the end
    assert [w[1:-1].tolist() for w in windows] == [[10, 11, 12, 13], [12, 13, 14, 15], [14, 15, 16, 17],
                                                   [16, 17, 18, 19]]
    assert all(w[0] == 2 and w[-1] == 3 for w in windows)  # [CLS] ... [SEP]
    assert len(token_windows(ids, max_positions=12)) == 1  # fits: one window, nothing cut
    classifier = build_classifier(tiny_backbone(), num_outputs=2, seed=0, dropout=0.1).eval()
    batch = collate_windows([(windows, torch.tensor(1)), (token_windows(ids[:3], 6), torch.tensor(0))])
    with torch.no_grad():
        averaged = classifier(batch["input_ids"], batch["sequence_index"], 2)
        each = [classifier(torch.from_numpy(w)[None], torch.zeros(1, dtype=torch.long), 1)[0] for w in windows]
    torch.testing.assert_close(averaged[0], torch.stack(each).mean(dim=0))
    assert batch["sequence_index"].tolist() == [0, 0, 0, 0, 1]


# ------------------------------------------------------------------------------------------ training runs
def compose_finetune(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="finetune", overrides=["pretrained=none", *overrides])


def small_task(tmp_path: Path, rows: int = 96) -> Path:
    """The first rows of the bundled promoter task (balanced enough), as the user's own file."""
    table = pd.read_csv(PROM_CORE, sep="\t").sample(n=rows, random_state=0)
    path = tmp_path / "task.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


def test_pretrained_and_none_differ_only_in_the_initial_weights(tmp_path: Path) -> None:
    """A 'pretrained' backbone whose weights equal the random initialisation of pretrained=none must train
    number for number like it: same head, same data order, same dropout; only the weights' origin differs."""
    cfg = compose_finetune(f"task.train={small_task(tmp_path, 64)}", "task=file", "max_epochs=1", "batch_size=16",
                           "export=false", "logger=none", f"paths.output_root={tmp_path}", *TINY_OVERRIDES,
                           "tokenizer.k=3")
    torch.manual_seed(7)
    random_weights = build_encoder(tiny_backbone()).state_dict()
    other = tiny_backbone(weights={key: value + 0.01 for key, value in random_weights.items()})
    same = tiny_backbone(weights=random_weights)
    heads = {name: build_classifier(b, 2, 7, 0.1).state_dict() for name, b in (("other", other), ("same", same))}
    for key in heads["other"]:
        if key.startswith("backbone."):
            assert torch.equal(heads["other"][key], random_weights[key.removeprefix("backbone.")] + 0.01), key
        else:
            assert torch.equal(heads["other"][key], heads["same"][key]), key  # pooler and classifier
    data = load_task(cfg.task, same, max_positions=64)
    results = [fine_tune_seed(cfg, backbone, data, 7, tmp_path / name, devices=1)
               for name, backbone in (("none", tiny_backbone()), ("same", same))]
    torch.manual_seed(7)
    none_weights = build_encoder(tiny_backbone()).state_dict()
    assert all(torch.equal(none_weights[key], random_weights[key]) for key in none_weights)
    assert results[0]["dev_history"] == results[1]["dev_history"]
    assert results[0]["metrics"] == results[1]["metrics"]


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """`python finetune.py` as a user runs it: own task file, two seeds, three epochs, a tiny random backbone."""
    tmp_path = tmp_path_factory.mktemp("finetune")
    task = small_task(tmp_path, rows=160)
    command = [sys.executable, str(ROOT / "finetune.py"), "pretrained=none", "task=file", f"task.train={task}",
               "task.test_fraction=0.25", "task.dev_fraction=0.25", "seeds=[1,2]", "max_epochs=3", "batch_size=16",
               "optim.lr=1e-3", "tokenizer.k=3", f"paths.output_root={tmp_path}", *TINY_OVERRIDES]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    return result, tmp_path / "finetune_custom" / "none"


@pytest.mark.slow
def test_finetune_cli_writes_results_report_and_selects_the_best_dev_epoch(finetune_run) -> None:
    result, run_dir = finetune_run
    assert result.returncode == 0, result.stderr[-3000:]
    for relative in ("results.json", "report.md", "plots/finetune.png", "finetune.log", "seed_1/results.json",
                     "seed_2/hf_model/config.json", "seed_2/csv/metrics.csv"):
        assert (run_dir / relative).is_file(), relative
    assert str(run_dir / "results.json") in result.stdout and "test mcc:" in result.stdout
    assert "Generating train split" not in result.stderr  # datasets' progress bar for the task file stays out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["labels"] == ["0", "1"] and [s["seed"] for s in results["seeds"]] == [1, 2]
    for seed_result in results["seeds"]:
        history = seed_result["dev_history"]
        assert [entry["epoch"] for entry in history] == [0, 1, 2]
        best = max(history, key=lambda entry: entry["mcc"])  # first of equals, as ModelCheckpoint keeps it
        assert seed_result["best_epoch"] == best["epoch"]
        # The weights evaluated are that epoch's: the dev metrics recomputed from the chosen checkpoint are the
        # ones logged at that epoch.
        for name, value in seed_result["metrics"]["dev"].items():
            assert value == pytest.approx(best[name], abs=1e-5), name
    test_mcc = [seed_result["metrics"]["test"]["mcc"] for seed_result in results["seeds"]]
    assert results["mean"]["test"]["mcc"] == pytest.approx(np.mean(test_mcc))
    assert results["sd"]["test"]["mcc"] == pytest.approx(np.std(test_mcc, ddof=1))
    assert "| test |" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_finetune_resumes_finished_seeds_without_training_again(finetune_run) -> None:
    result, run_dir = finetune_run
    assert result.returncode == 0, result.stderr[-3000:]
    before = (run_dir / "results.json").read_text()
    command = [sys.executable, str(ROOT / "finetune.py"), *_overrides_of(run_dir)]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Training from step" not in again.stdout + again.stderr  # nothing trained
    assert json.loads((run_dir / "results.json").read_text())["seeds"] == json.loads(before)["seeds"]


def _overrides_of(run_dir: Path) -> list[str]:
    """The command line of the first run, as Hydra recorded it."""
    import yaml

    return yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


def assert_transformers_outputs_equal_ours(seed_dir: Path, sequences: list[str]) -> torch.Tensor:
    """The seed's exported hf_model/, loaded by transformers with its own tokenizer, gives our best checkpoint's
    outputs (logits, or the regression value); returns ours."""
    checkpoint = next((seed_dir / "checkpoints").glob("best-*.ckpt"))
    classifier, _, _ = load_classifier_checkpoint(checkpoint)
    rows = [torch.from_numpy(token_windows(ids, 64)[0]) for ids in kmer_tokenizer(K)(sequences)]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PAD_ID)
    with torch.no_grad():
        ours = classifier.eval()(input_ids, torch.arange(len(sequences)), len(sequences))
    loaded, info = transformers.BertForSequenceClassification.from_pretrained(seed_dir / "hf_model",
                                                                              output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tokenizer = transformers.BertTokenizer.from_pretrained(seed_dir / "hf_model")
    encoded = tokenizer([kmer_text(s, K) for s in sequences], padding=True, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], input_ids)
    with torch.no_grad():
        theirs = loaded.eval()(**encoded).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    return ours


@pytest.mark.slow
def test_exported_classifier_loads_in_transformers_and_multimolecule_with_equal_logits(finetune_run,
                                                                                       tmp_path: Path) -> None:
    result, run_dir = finetune_run
    assert result.returncode == 0, result.stderr[-3000:]
    sequences = ["ACGTACGTTAGCAT", "TTTTGGGGCCAAGATTACA", "GATTACA"]
    ours = assert_transformers_outputs_equal_ours(run_dir / "seed_2", sequences)
    assert transformers.AutoConfig.from_pretrained(run_dir / "seed_2" / "hf_model").id2label == {0: "0", 1: "1"}
    checkpoint = next((run_dir / "seed_2" / "checkpoints").glob("best-*.ckpt"))

    multimolecule = pytest.importorskip("multimolecule")
    out_dir = export_checkpoint(checkpoint, tmp_path / "mm", layout="multimolecule")
    mm_model, mm_info = multimolecule.DnaBertForSequencePrediction.from_pretrained(out_dir, output_loading_info=True)
    assert not mm_info["missing_keys"] and not mm_info["unexpected_keys"]
    mm_tokenizer = multimolecule.DnaTokenizer.from_pretrained(out_dir)
    mm_inputs = mm_tokenizer(sequences, padding=True, return_tensors="pt")
    with torch.no_grad():
        mm_logits = mm_model.eval()(input_ids=mm_inputs["input_ids"],
                                    attention_mask=mm_inputs["attention_mask"]).logits
    torch.testing.assert_close(mm_logits, ours, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("task_type", ["regression", "multi-class"])
def test_finetune_cli_trains_regression_and_multiclass_tasks_end_to_end(tmp_path: Path, task_type: str) -> None:
    """Through the command line, as a user runs it: the label kind is detected, its metrics are reported, the
    checkpoint is chosen by its selection metric (the default for regression; the lowest dev loss, as the suites'
    presets ask, for multi-class), and the export carries the head transformers needs."""
    table = pd.read_csv(PROM_CORE, sep="\t").sample(n=120, random_state=1)
    gc = table["sequence"].map(lambda s: (s.count("G") + s.count("C")) / len(s))
    table["label"] = gc.round(4) if task_type == "regression" else pd.cut(gc, 3, labels=["at", "mid", "gc"])
    table.to_csv(task := tmp_path / "task.csv", index=False)
    command = [sys.executable, str(ROOT / "finetune.py"), "pretrained=none", "task=file", f"task.train={task}",
               "task.dev_fraction=0.25", "task.test_fraction=0.25", "max_epochs=3", "batch_size=16", "optim.lr=1e-3",
               "seed=3", "tokenizer.k=3", "logger=none", f"paths.output_root={tmp_path}", *TINY_OVERRIDES,
               *(["selection_metric=loss"] if task_type == "multi-class" else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "finetune_custom" / "none" / "results.json").read_text())
    (seed,) = results["seeds"]
    expected = {"regression": ({"mse", "pearson", "spearman", "loss"}, "spearman", []),
                "multi-class": ({"accuracy", "f1", "mcc", "precision", "recall", "auroc", "aupr", "loss"}, "loss",
                                ["at", "gc", "mid"])}
    metric_names, selection, labels = expected[task_type]
    assert results["task_type"] == task_type.replace("multi-class", "classification")
    assert results["selection_metric"] == f"dev/{selection}" and results["labels"] == labels
    assert set(seed["metrics"]["test"]) == metric_names
    best = (min if selection == "loss" else max)(seed["dev_history"], key=lambda entry: entry[selection])
    assert seed["best_epoch"] == best["epoch"]
    seed_dir = tmp_path / "finetune_custom" / "none" / "seed_3"
    config = transformers.AutoConfig.from_pretrained(seed_dir / "hf_model")
    if task_type == "regression":
        assert config.problem_type == "regression" and config.num_labels == 1
    else:
        assert config.id2label == {0: "at", 1: "gc", 2: "mid"}
    ours = assert_transformers_outputs_equal_ours(seed_dir, ["ACGTACGTTAGCAT", "GGGCGCCCGCGGCA"])
    assert ours.shape == (2, 1 if task_type == "regression" else 3)


@pytest.mark.slow
def test_ddp_fine_tuning_equals_one_process_at_the_same_global_batch(tmp_path: Path) -> None:
    """Two DDP processes of 16 sequences a step train like one process of 32: each rank gets its own half of every
    batch (not the whole split), and the dev metrics are the whole dev split's, without the repeats the sampler pads
    an odd split with, so the chosen checkpoint reproduces them. No dropout, so only summation order differs."""
    table = pd.read_csv(PROM_CORE, sep="\t").sample(n=243, random_state=2)
    files = {}
    for name, rows in (("train", table[:128]), ("dev", table[128:203]), ("test", table[203:])):  # dev: 75, odd
        rows.to_csv(files.setdefault(name, tmp_path / f"{name}.tsv"), sep="\t", index=False)
    common = ["pretrained=none", "task=file", *(f"task.{name}={path}" for name, path in files.items()), "tokenizer.k=3",
              "max_epochs=3", "optim.lr=1e-3", "seed=5", "dropout=0", "model.hidden_dropout_prob=0", "export=false",
              "logger=none", *TINY_OVERRIDES]
    results = {}
    for name, launch in (("one", ["batch_size=32", "trainer=cpu"]), ("ddp", ["batch_size=16", "trainer=cpu_ddp"])):
        out = tmp_path / name
        result = subprocess.run([sys.executable, str(ROOT / "finetune.py"), *common, *launch,
                                 f"paths.output_dir={out}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "sync_dist" not in result.stderr  # dev metrics are whole-split values: no advice to sync them
        (results[name],) = json.loads((out / "results.json").read_text())["seeds"]
    one, ddp = results["one"], results["ddp"]
    assert [entry["epoch"] for entry in ddp["dev_history"]] == [0, 1, 2]  # 4 steps an epoch, on either launch
    for ours, theirs in zip(ddp["dev_history"], one["dev_history"], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
        assert ours["auroc"] == pytest.approx(theirs["auroc"], abs=2e-3)
    best = next(entry for entry in ddp["dev_history"] if entry["epoch"] == ddp["best_epoch"])
    for name, value in ddp["metrics"]["dev"].items():  # evaluated by rank 0 alone, on the 75 dev rows
        assert value == pytest.approx(best[name], abs=1e-5), name


def test_module_picks_the_first_of_equal_best_epochs() -> None:
    module = FineTuneModule(build_classifier(tiny_backbone(), 2, 0, 0.1), "classification", {}, 0, "mcc")
    module.dev_history = [{"epoch": 0, "mcc": 0.2}, {"epoch": 1, "mcc": 0.5}, {"epoch": 2, "mcc": 0.5}]
    assert module.best_epoch()["epoch"] == 1
    module.selection_metric = "mse"
    module.dev_history = [{"epoch": 0, "mse": 2.0}, {"epoch": 1, "mse": 1.0}, {"epoch": 2, "mse": 1.5}]
    assert module.best_epoch()["epoch"] == 1


def test_finetune_cli_bad_settings_are_one_line_and_leave_no_run_folder(tmp_path: Path) -> None:
    """Checked before Hydra makes the run directory (every setting's bad case: tests/test_validate.py). Before,
    max_epochs=0 ended in an IsADirectoryError traceback after training, optim.lr=-1 in torch's "Invalid learning
    rate", and no pretrained= at all named run_name, the setting that interpolates it."""
    missing_backbone = tmp_path / "outputs" / "demo" / "defualt"
    cases = [
        (["pretrained=none", "max_epochs=0"], "max_epochs=0 must be >= 1; e.g. max_epochs=3."),
        (["pretrained=none", "optim.lr=-1"], "optim.lr=-1 must be > 0; set the peak learning rate, e.g. "
                                             "optim.lr=4e-4."),
        ([f"pretrained={missing_backbone}"],
         f"pretrained='{missing_backbone}' does not exist; give a pretraining run directory, a .ckpt, a transformers "
         "or MultiMolecule model directory, or none."),
        ([], "pretrained is not set (??? in the config); give it on the command line, pretrained=..."),
    ]
    output_root = tmp_path / "runs"
    for overrides, message in cases:
        result = subprocess.run([sys.executable, str(ROOT / "finetune.py"), *overrides,
                                 f"paths.output_root={output_root}"], capture_output=True, text=True, timeout=300,
                                cwd=ROOT)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines() == [f"dnabert: error: {message}"]
        assert not output_root.exists()


def test_freeze_backbone_is_a_linear_probe_on_fixed_features() -> None:
    """Only the pooler and classifier train, and the frozen encoder stays in eval mode (no dropout)."""
    module = FineTuneModule(build_classifier(tiny_backbone(), 2, 0, 0.1), "classification",
                            {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}, 0, "mcc",
                            freeze_backbone=True)
    module.train()
    assert not module.classifier.backbone.training and module.classifier.dropout.training
    trainable = {name for name, parameter in module.named_parameters() if parameter.requires_grad}
    assert trainable == {"classifier.pooler.dense.weight", "classifier.pooler.dense.bias",
                         "classifier.classifier.weight", "classifier.classifier.bias"}
