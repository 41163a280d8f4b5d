"""suite.py end to end on a stand-in GUE suite in the original layout (<group>/<dataset>/{train,dev,test}.csv): two
datasets x two seeds, one dataset that collapses on purpose (every sequence identical, so the predictions are
constant) and is retried, then reported by name and kept out of the means; killed with SIGKILL mid-run and run
again: the finished pairs are skipped (their files untouched), the interrupted one continues."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT

TINY = ["pretrained=none", "model=tiny", "tokenizer.k=3", "model.hidden_size=32", "model.num_hidden_layers=1",
        "model.num_attention_heads=2", "model.intermediate_size=64", "model.max_position_embeddings=64"]
LEARNABLE, COLLAPSING = "prom_core_all", "prom_core_notata"


def write_stand_in_gue(root: Path) -> Path:
    """GUE's layout with two prom_core datasets: one learnable at once (A/T-only vs G/C-only 30-mers), one whose
    sequences are all the same (no model can do better than constant predictions)."""
    rng = random.Random(0)
    for name in (LEARNABLE, COLLAPSING):
        sizes = (("train", 64), ("dev", 16), ("test", 16)) if name == LEARNABLE else (("train", 16), ("dev", 8),
                                                                                      ("test", 8))
        for split, rows in sizes:
            labels = [index % 2 for index in range(rows)]
            if name == LEARNABLE:
                sequences = ["".join(rng.choice("GC" if label else "AT") for _ in range(30)) for label in labels]
            else:
                sequences = ["ACGTTGCAAC" * 3] * rows
            folder = root / "GUE" / "prom" / name
            folder.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"sequence": sequences, "label": labels}).to_csv(folder / f"{split}.csv", index=False)
    return root / "GUE"


def suite_command(data_dir: Path, output_root: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "suite.py"), "suite=gue", f"suite.data_dir={data_dir}",
            f"datasets=[{LEARNABLE},{COLLAPSING}]", "recipe=none", *TINY, "max_epochs=3", "batch_size=8",
            "optim.lr=5e-3", "warmup_steps=0", "export=false", f"paths.output_root={output_root}", *extra]


def test_suite_retries_and_reports_a_collapse_and_skips_finished_pairs_after_sigkill(tmp_path: Path) -> None:
    data_dir = write_stand_in_gue(tmp_path)
    outputs = tmp_path / "outputs"
    command = suite_command(data_dir, outputs, "seeds=[1,2]", "max_retries=1")
    suite_dir = outputs / "suite_gue" / "none-none"
    first_pair = suite_dir / LEARNABLE / "pair_1.json"
    second_checkpoint = suite_dir / LEARNABLE / "seed_2" / "seed_2" / "checkpoints" / "last.ckpt"

    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not second_checkpoint.exists():  # the first pair is done and the second has saved an epoch
            assert process.poll() is None, "the suite ended before it could be interrupted"
            assert time.monotonic() < deadline, "timed out waiting for the second pair's first checkpoint"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    interrupted_done = (suite_dir / LEARNABLE / "seed_2" / "results.json").exists()
    finished = {path: path.stat().st_mtime_ns for path in (first_pair, suite_dir / LEARNABLE / "seed_1" /
                                                           "results.json")}

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (suite_dir / "suite.log").read_text()
    assert f"suite: {LEARNABLE} seed 1 is done" in log and "skipped" in log
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # not redone
    if not interrupted_done:
        assert f"suite: {LEARNABLE} seed 2: continuing the fine-tune with seed 2" in log

    results = json.loads((suite_dir / "results.json").read_text())
    learnable, collapsing = results["datasets"][LEARNABLE], results["datasets"][COLLAPSING]
    assert learnable["n"] == 2 and set(learnable["values"]) == {"1", "2"} and learnable["mean"] > 0.5
    assert collapsing["n"] == 0 and collapsing["mean"] is None  # never averaged in
    assert results["average_over"] == 1 and results["average"] == learnable["mean"]
    assert [(c["dataset"], c["seed"]) for c in results["collapsed"]] == [(COLLAPSING, 1), (COLLAPSING, 2)]
    for collapsed, seed in zip(results["collapsed"], (1, 2), strict=True):  # tried with seed, then seed + 1000
        assert [t.split(":")[0] for t in collapsed["tries"]] == [f"seed {seed}", f"seed {seed + 1000}"]
        assert all("constant predictions on dev" in t for t in collapsed["tries"])
    assert f"suite: {COLLAPSING} seed 1 collapsed: constant predictions" in log
    card = (suite_dir / "results.md").read_text()
    assert f"- {COLLAPSING} seed 1: seed 1: constant predictions" in card
    assert f"| {LEARNABLE} | prom_core | mcc | {100 * learnable['mean']:.2f} ±" in card
    assert "| 68.90 | 70.33 | 69.37 |" in card  # DNABERT (6-mer), NT-2500M-multi, DNABERT-2 on prom_core_all
    # published averages over the datasets both have: here prom_core_all alone (the collapsed one has no mean)
    assert results["published_average"]["DNABERT-2"] == {"published": pytest.approx(0.6937),
                                                         "this_backbone": learnable["mean"], "datasets": 1}
    assert (f"Over the 1 dataset(s) DNABERT-2 has: DNABERT-2 69.37, this backbone {100 * learnable['mean']:.2f}."
            in card)
    assert (suite_dir / "results.png").stat().st_size > 0
    assert f"collapsed: {COLLAPSING} seed 1, {COLLAPSING} seed 2" in rerun.stdout


def test_several_sweeps_on_one_node_share_the_pairs_and_each_pair_runs_once(tmp_path: Path) -> None:
    """One node, several devices, no scheduler: one `-m 'pair=range(i,N,k)'` sweep per device (Hydra's basic
    launcher runs its pairs one after another), all at once on the same suite folder. Every pair runs in exactly
    one of them, and the card from all the pairs is there when the last sweep returns."""
    outputs = tmp_path / "outputs"
    command = suite_command(write_stand_in_gue(tmp_path), outputs, f"datasets=[{LEARNABLE}]", "seeds=[1,2,3,4]",
                            "max_retries=0")
    command[2:2] = ["-m"]
    sweeps = [subprocess.Popen([*command, f"pair=range({device},4,2)"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for device in (0, 1)]
    for sweep in sweeps:
        _, stderr = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, stderr[-3000:]
    suite_dir = outputs / "suite_gue" / "none-none"
    logs = {path.parent.name: path.read_text() for path in (suite_dir / "multirun").glob("pair-*/suite.log")}
    assert sorted(logs) == ["pair-0", "pair-1", "pair-2", "pair-3"]
    for index, log in logs.items():  # pair i is seed i + 1, trained by its own job and by no other
        seed = int(index.removeprefix("pair-")) + 1
        assert f"starting a fine-tune with seed {seed} " in log and "skipped" not in log
    assert sorted(path.name for path in (suite_dir / LEARNABLE).glob("seed_*")) == [f"seed_{s}" for s in range(1, 5)]
    results = json.loads((suite_dir / "results.json").read_text())
    assert results["datasets"][LEARNABLE]["n"] == 4 and results["missing"] == []


def write_stand_in(suite: str, root: Path) -> str:
    """One dataset of `suite` in its original layout (A/T-only vs G/C-only 40-mers); returns its name."""
    rng = random.Random(1)
    rows = {split: [("".join(rng.choice("GC" if label else "AT") for _ in range(40)), label)
                    for label in (0, 1) for _ in range(size)] for split, size in (("train", 40), ("test", 8))}
    if suite == "genomic_benchmarks":  # <dataset>/<split>/<class>/<id>.txt
        for split, pairs in rows.items():
            for index, (sequence, label) in enumerate(pairs):
                folder = root / "human_nontata_promoters" / split / ("positive" if label else "negative")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{index}.txt").write_text(sequence)
        return "human_nontata_promoters"
    (root / "promoter_tata").mkdir(parents=True)  # <task>/<split>.fna, headers ending in |<label>
    for split, pairs in rows.items():
        (root / "promoter_tata" / f"{split}.fna").write_text(
            "".join(f">{split}_{index}|{label}\n{sequence}\n" for index, (sequence, label) in enumerate(pairs)))
    return "promoter_tata"


@pytest.mark.parametrize("suite", ["genomic_benchmarks", "nt"])
def test_the_other_suites_run_from_their_original_layouts_with_the_authors_preset(tmp_path: Path,
                                                                                 suite: str) -> None:
    """suite=genomic_benchmarks and suite=nt through the CLI as shipped (recipe=dnabert2: LR 3e-5, 50 warm-up steps,
    the lowest dev loss), on a stand-in in the original layout: dev is a seeded tenth of train, the checkpoint is
    chosen by dev loss, and the card puts the published scores beside the run."""
    dataset = write_stand_in(suite, tmp_path / "data")
    command = [sys.executable, str(ROOT / "suite.py"), f"suite={suite}", f"suite.data_dir={tmp_path / 'data'}",
               f"datasets=[{dataset}]", "seeds=[1]", "max_retries=0", *TINY, "export=false",
               f"paths.output_root={tmp_path / 'outputs'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    suite_dir = tmp_path / "outputs" / f"suite_{suite}" / "none-dnabert2"
    run = json.loads((suite_dir / dataset / "seed_1" / "results.json").read_text())
    assert run["selection_metric"] == "dev/loss" and run["splits"]["dev"].endswith("(8 rows, split seed 0)")
    (attempt,) = json.loads((suite_dir / dataset / "pair_1.json").read_text())["attempts"]
    assert set(attempt["metrics"]) == {"train", "dev", "test"} and "loss" in attempt["metrics"]["test"]
    card = (suite_dir / "results.md").read_text()
    # group and headline metric, then the published scores: CNN, HyenaDNA; DNABERT, NT-2500M-multi, DNABERT-2, HyenaDNA
    group, metric, published = {"genomic_benchmarks": ("promoters", "accuracy", "| 84.60 | 96.60 |"),
                                 "nt": ("promoter", "mcc", "| 91.00 | 92.00 | 91.00 | 88.00 |")}[suite]
    row = next(line for line in card.splitlines() if line.startswith(f"| {dataset} |"))
    assert row.startswith(f"| {dataset} | {group} | {metric} |") and row.endswith(published)


def test_a_bad_suite_setting_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = subprocess.run(suite_command(write_stand_in_gue(tmp_path), outputs, "groups=[prom_300]"),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dnabert: error: datasets=['{LEARNABLE}', '{COLLAPSING}'] and groups=['prom_300'] select no dataset of "
        "suite gue together; loosen one of them."]
    assert not outputs.exists()


def test_the_recipes_give_each_dataset_its_script_settings(tmp_path: Path) -> None:
    """The finetune.py settings a pair gets: DNABERT-2's finetune/scripts/run_dnabert2.sh for mouse TF (1000 steps
    at most, 30 warm-up steps, 30 tokens, the checkpoint of lowest dev loss as its train.py keeps) and DNABERT's
    finetune/scripts/run_dnabert1.sh for covid (9 epochs, global batch 8 x 4 GPUs x 4 accumulation); recipe=none
    keeps the command line's."""
    from hydra import compose, initialize_config_dir

    from dnabert.run.suite import SuiteDataset, pair_config

    def settings(recipe: str, dataset: SuiteDataset) -> dict:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="suite", overrides=["suite=gue", f"suite.data_dir={tmp_path}", f"recipe={recipe}",
                                                          "pretrained=none", "max_epochs=1"])
        pair = pair_config(cfg, dataset, {"train": tmp_path / "train.csv", "dev": tmp_path / "dev.csv"}, 1001,
                           tmp_path / "run")
        keys = ("max_epochs", "max_train_steps", "warmup_steps", "eval_every_n_steps", "max_positions", "batch_size",
                "selection_metric")
        return {key: pair[key] for key in keys} | {"lr": pair.optim.lr, "seeds": list(pair.seeds),
                                                   "test": pair.task.test, "dir": pair.paths.output_dir}

    mouse = SuiteDataset("mouse_0", "tf_mouse", "mouse/0", "mcc")
    assert settings("dnabert2", mouse) == {"max_epochs": 5, "max_train_steps": 1000, "warmup_steps": 30,
                                           "eval_every_n_steps": 200, "max_positions": 30, "batch_size": 32,
                                           "selection_metric": "loss", "lr": 3e-5, "seeds": [1001], "test": None,
                                           "dir": str(tmp_path / "run")}
    covid = settings("dnabert", SuiteDataset("covid", "virus", "virus/covid", "f1"))
    assert (covid["max_epochs"], covid["batch_size"], covid["max_positions"]) == (9, 128, 512)
    assert settings("none", mouse)["max_epochs"] == 1 and settings("none", mouse)["warmup_steps"] is None
    assert settings("none", mouse)["selection_metric"] is None  # finetune.py's: dev MCC
