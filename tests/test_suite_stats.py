"""Benchmark-suite statistics against hand computations and scipy on fixed numbers; the collapse verdict; compare on
two fixed result sets; fetch_suite on local files served from 127.0.0.1 with good, bad and unknown checksums; the
original layouts of Genomic Benchmarks and the NT tasks read into tables."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import math
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from dnabert.data.suites import dataset_files
from dnabert.errors import DnabertError
from dnabert.run.suite_report import collect, markdown
from dnabert.run.suite_stats import collapse_reason, paired_difference, suite_wilcoxon, summarise
from dnabert.tools import fetch_suite, suite_compare
from tests.conftest import ROOT


# ------------------------------------------------------------------------------------------------ statistics
def test_summary_is_the_mean_and_sample_sd() -> None:
    values = [0.61, 0.64, 0.58, 0.66, 0.60]
    summary = summarise(values)
    assert summary.mean == pytest.approx(sum(values) / 5)
    assert summary.sd == pytest.approx(math.sqrt(sum((v - summary.mean) ** 2 for v in values) / 4))  # ddof 1
    assert summary.n == 5
    assert summarise([0.5]).sd is None  # one seed has no spread


def test_paired_difference_pairs_by_seed_and_equals_a_hand_t_test() -> None:
    a = {1: 0.60, 2: 0.62, 3: 0.58, 4: 0.61, 5: 0.59}
    b = {1: 0.64, 2: 0.63, 3: 0.63, 4: 0.62, 9: 0.99}  # seed 5 missing, seed 9 unmatched: both left out
    result = paired_difference(a, b)
    differences = np.array([0.04, 0.01, 0.05, 0.01])
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(4))
    assert result.n == 4
    assert result.difference == pytest.approx(differences.mean())
    assert result.t == pytest.approx(t)
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), df=3))
    assert paired_difference(a, {1: 0.7}).p is None  # one common seed: no test
    assert paired_difference(a, {7: 0.7}) is None


def test_suite_wilcoxon_over_datasets_equals_the_exact_distribution() -> None:
    a = {f"d{i}": 0.5 for i in range(6)}
    b = {f"d{i}": 0.5 + 0.01 * (i + 1) for i in range(6)}  # B better on all 6: rank sum of losses 0
    test = suite_wilcoxon(a, b)
    assert (test.n, test.wins, test.losses) == (6, 6, 0)
    assert test.statistic == 0
    assert test.p == pytest.approx(2 / 2**6)  # two-sided exact: only all-positive or all-negative is as extreme
    mixed = suite_wilcoxon(a, {**b, "d0": 0.40})  # one loss, the largest |difference|: rank 6
    assert (mixed.wins, mixed.losses) == (5, 1)
    assert mixed.statistic == 6  # min(W+ = 1+2+3+4+5, W- = 6)
    assert mixed.p == pytest.approx(2 * 14 / 64)  # 14 of the 64 sign patterns have a rank sum <= 6


def test_collapse_is_constant_predictions_or_dev_mcc_at_most_zero() -> None:
    constant = np.array([[0.1, 0.9]] * 6)
    assert collapse_reason(
        "classification", constant, {"mcc": 0.0}) == "constant predictions on dev (class index 1 for all 6 rows)"
    varied = np.array([[0.9, 0.1], [0.1, 0.9]] * 3)
    assert collapse_reason("classification", varied, {"mcc": -0.2}) == "dev MCC -0.2000 <= 0"
    assert collapse_reason("classification", varied, {"mcc": 0.0}) == "dev MCC 0.0000 <= 0"
    assert collapse_reason("classification", varied, {"mcc": 0.3}) is None
    assert "constant outputs" in collapse_reason("regression", np.ones((4, 1)), {"spearman": 0.0})
    assert collapse_reason("regression", np.arange(4.0)[:, None], {"spearman": 0.5}) is None


def write_pairs(folder: Path, scores: dict[str, dict[int, float | None]], groups: dict[str, str],
                published: dict[str, dict[str, float]]) -> Path:
    """A suite folder as suite.py leaves it: suite.json and one pair record per (dataset, seed); None: collapsed."""
    folder.mkdir(exist_ok=True)
    seeds = sorted({seed for values in scores.values() for seed in values})
    meta = {"suite": "s", "pretrained": "b", "recipe": "r", "seeds": seeds, "max_retries": 0,
            "datasets": [{"name": name, "group": groups[name], "metric": "mcc"} for name in scores],
            "published": {"source": "a table", "scale": 1, "models": published}}
    (folder / "suite.json").write_text(json.dumps(meta))
    for name, values in scores.items():
        (folder / name).mkdir()
        for seed, value in values.items():
            attempt = {"seed": seed, "run_dir": "-", "collapsed": "dev MCC 0 <= 0" if value is None else None,
                       "metrics": {"test": {"mcc": value}}}
            record = {"dataset": name, "group": groups[name], "seed": seed, "task_type": "classification",
                      "status": "collapsed" if value is None else "ok", "attempts": [attempt]}
            (folder / name / f"pair_{seed}.json").write_text(json.dumps(record))
    return folder


def test_groups_and_the_suite_average_carry_a_spread_over_seeds_and_published_means(tmp_path: Path) -> None:
    """Per group and for the suite: the mean of dataset means, the sd over seeds of the per-seed means (from the
    seeds every scored dataset has: a collapsed seed drops out), and each published model's mean over the datasets
    it has; a model without some datasets is compared with this backbone on the ones it has."""
    scores = {"a": {1: 0.50, 2: 0.60, 3: 0.70}, "b": {1: 0.30, 2: None, 3: 0.50}, "c": {1: 0.90, 2: 0.80, 3: 0.85}}
    published = {"M": {"a": 0.55, "b": 0.45, "c": 0.95}, "N": {"a": 0.65}}
    results = collect(write_pairs(tmp_path, scores, {"a": "g", "b": "g", "c": "h"}, published))
    g, h = results["groups"]["g"], results["groups"]["h"]
    assert g["mean"] == pytest.approx((0.60 + 0.40) / 2) and (g["datasets"], g["of"], g["seeds"]) == (2, 2, 2)
    assert g["sd_over_seeds"] == pytest.approx(np.std([(0.50 + 0.30) / 2, (0.70 + 0.50) / 2], ddof=1))
    assert h["sd_over_seeds"] == pytest.approx(np.std([0.90, 0.80, 0.85], ddof=1)) and h["seeds"] == 3
    assert g["published"] == {"M": {"mean": pytest.approx(0.50), "datasets": 2},
                              "N": {"mean": pytest.approx(0.65), "datasets": 1}}
    per_seed_suite = [np.mean([0.50, 0.30, 0.90]), np.mean([0.70, 0.50, 0.85])]  # seed 2 collapsed on b
    assert results["average"] == pytest.approx((0.60 + 0.40 + 0.85) / 3)
    assert results["average_sd_over_seeds"] == pytest.approx(np.std(per_seed_suite, ddof=1))
    assert results["published_average"]["N"] == {"published": pytest.approx(0.65),
                                                 "this_backbone": pytest.approx(0.60), "datasets": 1}
    card = markdown(results)
    assert f"| g | 50.00 ± {100 * g['sd_over_seeds']:.2f} (2 seeds) | 2 of 2 | 50.00 | 65.00 (1) |" in card
    assert "Over the 1 dataset(s) N has: N 65.00, this backbone 60.00." in card
    unpublished = markdown(collect(write_pairs(tmp_path / "none", scores, {"a": "g", "b": "g", "c": "h"}, {})))
    assert "| dataset | group | metric | this backbone | n |\n|---|---|---|---|---|\n" in unpublished  # no empty column


# ------------------------------------------------------------------------------------------------ compare
def result_set(tmp_path: Path, name: str, scores: dict[str, dict[int, float]]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    datasets = {}
    for dataset, values in scores.items():
        summary = summarise(list(values.values()))
        datasets[dataset] = {"group": "g", "metric": "mcc", "split": "test", "values": values,
                             "mean": summary.mean, "sd": summary.sd, "n": summary.n, "published": {}}
    (folder / "results.json").write_text(json.dumps({"suite": "gue", "datasets": datasets}))
    return folder


def test_compare_puts_two_result_sets_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = result_set(tmp_path, "a", {"H3": {1: 0.70, 2: 0.72, 3: 0.71}, "tf_0": {1: 0.50, 2: 0.52, 3: 0.49},
                                   "covid": {1: 0.60, 2: 0.61, 3: 0.62}})
    b = result_set(tmp_path, "b", {"H3": {1: 0.75, 2: 0.74, 3: 0.78}, "tf_0": {1: 0.51, 2: 0.50, 3: 0.52},
                                   "covid": {1: 0.58, 2: 0.60}})
    assert suite_compare.main([str(a), str(b), "--out", str(tmp_path / "compare.md")]) == 0
    table = capsys.readouterr().out
    h3 = stats.ttest_rel([0.75, 0.74, 0.78], [0.70, 0.72, 0.71])
    assert f"| H3 | mcc | 71.00 ± 1.00 (3) | 75.67 ± 2.08 (3) | 4.67 | 3 | {h3.pvalue:.4f} |" in table
    covid = stats.ttest_rel([0.58, 0.60], [0.60, 0.61])  # seed 3 only in A: paired over seeds 1 and 2
    assert f"| covid | mcc | 61.00 ± 1.00 (3) | 59.00 ± 1.41 (2) | -1.50 | 2 | {covid.pvalue:.4f} |" in table
    assert "B better on 2, worse on 1 of 3 datasets" in table
    assert (tmp_path / "compare.md").read_text() == table


def test_compare_refuses_two_suites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = result_set(tmp_path, "a", {"H3": {1: 0.7}})
    other = json.loads((a / "results.json").read_text()) | {"suite": "nt"}
    (tmp_path / "nt.json").write_text(json.dumps(other))
    assert suite_compare.main([str(a), str(tmp_path / "nt.json")]) == 2
    assert "is suite gue but" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ fetch
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A folder served over HTTP on 127.0.0.1 (no network): (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_verifies_checksums_unpacks_and_refuses_a_mismatch(served, tmp_path, capsys) -> None:
    base, folder = served
    with zipfile.ZipFile(folder / "tiny_v0.zip", "w") as archive:
        archive.writestr("tiny/train/positive/1.txt", "ACGT")
    (folder / "test.fna").write_text(">seq1|0\nACGT\n")
    good = {"files": [{"url": f"{base}/tiny_v0.zip", "sha256": sha256(folder / "tiny_v0.zip"), "save": "t.zip",
                       "unpack": "zip"},
                      {"url": f"{base}/test.fna", "sha256": sha256(folder / "test.fna"), "save": "H3/test.fna"}]}
    bad = {"files": [{"url": f"{base}/test.fna", "sha256": "0" * 64, "save": "H3/test.fna"}]}
    unknown = {"files": [{"url": f"{base}/test.fna", "sha256": None, "save": "H3/test.fna"}]}
    registry = tmp_path / "registry.yaml"
    registry.write_text(json.dumps({"good": good, "bad": bad, "unknown": unknown}))  # JSON is YAML
    out = tmp_path / "out"

    assert fetch_suite.main(["good", str(out), "--registry", str(registry)]) == 0
    assert (out / "tiny" / "train" / "positive" / "1.txt").read_text() == "ACGT"
    assert not (out / "t.zip").exists()  # unpacked, then removed
    assert (out / "H3" / "test.fna").read_text() == ">seq1|0\nACGT\n"

    assert fetch_suite.main(["bad", str(tmp_path / "bad"), "--registry", str(registry)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "checksum mismatch, nothing kept" in error and "0" * 64 in error, error
    assert not (tmp_path / "bad" / "H3" / "test.fna").exists()

    assert fetch_suite.main(["unknown", str(tmp_path / "u"), "--registry", str(registry)]) == 2
    assert "records no sha256" in capsys.readouterr().err
    assert not (tmp_path / "u" / "H3" / "test.fna").exists()
    assert fetch_suite.main(["unknown", str(tmp_path / "u"), "--registry", str(registry),
                             "--accept-unknown-checksum"]) == 0
    assert f"sha256 {sha256(folder / 'test.fna')} (unverified" in capsys.readouterr().out


def test_fetch_counts_the_sequences_per_class_where_the_registry_records_them(served, tmp_path, capsys) -> None:
    """An archive that unpacks to fewer sequences, or to another class, than the publisher's tables is refused
    after the fetch; --check counts a folder already there and downloads nothing."""
    base, folder = served
    with zipfile.ZipFile(folder / "tiny_v0.zip", "w") as archive:
        for name, text in (("positive/1", "ACGT"), ("positive/2", "AACC"), ("negative/1", "GGTT")):
            archive.writestr(f"tiny/train/{name}.txt", text)
    files = [{"url": f"{base}/tiny_v0.zip", "sha256": sha256(folder / "tiny_v0.zip"), "save": "t.zip",
              "unpack": "zip"}]
    registry = tmp_path / "registry.yaml"
    registry.write_text(json.dumps({
        "whole": {"files": files, "sequences": {"tiny": {"train": {"negative": 1, "positive": 2}}}},
        "short": {"files": files, "sequences": {"tiny": {"train": {"negative": 1, "positive": 3}}}},
        "plain": {"files": files}}))

    assert fetch_suite.main(["whole", str(tmp_path / "whole"), "--registry", str(registry)]) == 0
    assert "whole: 1 dataset(s) hold the publisher's number of sequences" in capsys.readouterr().out
    assert fetch_suite.main(["short", str(tmp_path / "short"), "--registry", str(registry)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not hold the publisher's sequences per class (train {'negative': 1, " \
        "'positive': 2} instead of {'negative': 1, 'positive': 3})" in error, error

    (tmp_path / "whole" / "tiny" / "train" / "negative" / "1.txt").unlink()  # a folder damaged since
    assert fetch_suite.main(["whole", str(tmp_path / "whole"), "--check", "--registry", str(registry)]) == 2
    assert "train {'negative': 0, 'positive': 2} instead of" in capsys.readouterr().err
    assert fetch_suite.main(["whole", str(tmp_path / "none"), "--check", "--registry", str(registry)]) == 2
    assert "none/tiny is missing" in capsys.readouterr().err
    assert fetch_suite.main(["plain", str(tmp_path / "whole"), "--check", "--registry", str(registry)]) == 2
    assert "records no sequence counts for suite plain" in capsys.readouterr().err


def test_the_genomic_benchmarks_counts_add_up_to_the_sizes_hyenadna_lists() -> None:
    """The registry's per-class counts (the publisher's tables) against an independent listing: the dataset sizes
    in HyenaDNA's README (8 datasets; drosophila_enhancers_stark is not among them)."""
    counts = fetch_suite.load_registry()["genomic_benchmarks"]["sequences"]
    totals = {name: sum(sum(classes.values()) for classes in splits.values()) for name, splits in counts.items()}
    hyenadna = {"dummy_mouse_enhancers_ensembl": 1210, "demo_coding_vs_intergenomic_seqs": 100_000,
                "demo_human_or_worm": 100_000, "human_enhancers_cohn": 27791, "human_enhancers_ensembl": 154842,
                "human_ensembl_regulatory": 289061, "human_nontata_promoters": 36131, "human_ocr_ensembl": 174756}
    assert {name: totals[name] for name in hyenadna} == hyenadna
    config = yaml.safe_load((ROOT / "configs" / "suite" / "genomic_benchmarks.yaml").read_text())
    assert set(counts) == {row["name"] for row in config["datasets"]}


def test_the_shipped_registry_records_no_invented_checksum() -> None:
    """Every sha256 is either unknown (null) or a 64-digit hex string; the known ones are the NT H3 files' git-lfs
    object ids of the dataset's revision 1eb5300."""
    registry = fetch_suite.load_registry()
    assert set(registry) == {"gue", "genomic_benchmarks", "nt"}
    known = {entry["save"]: entry["sha256"] for suite in registry.values() for entry in suite["files"]
             if entry["sha256"] is not None}
    assert known == {"H3/train.fna": "99d0be089142d7759292ac7198548adf35736b56a654764225e52db362c15b89",
                     "H3/test.fna": "b3a01d0ef1c7b93d7429ef492d322db57a128ec16e4e7cf8c29a39d5f5bfbb70"}
    assert len(registry["nt"]["files"]) == 36 and len(registry["genomic_benchmarks"]["files"]) == 9


# ------------------------------------------------------------------------------------------------ layouts
def test_genomic_benchmarks_and_nt_layouts_become_tables(tmp_path: Path) -> None:
    gb = tmp_path / "gb" / "human_nontata_promoters"
    for split, rows in (("train", {"positive": ["ACGT", "AACC"], "negative": ["GGTT"]}),
                        ("test", {"positive": ["CCAA"], "negative": ["TTGG", "GTGT"]})):
        for label, sequences in rows.items():
            (gb / split / label).mkdir(parents=True)
            for index, sequence in enumerate(sequences):
                (gb / split / label / f"{index}.txt").write_text(sequence)
    files = dataset_files("genomic_benchmarks", gb, tmp_path / "cache" / "gb")
    assert set(files) == {"train", "test"}
    train = pd.read_csv(files["train"])
    assert sorted(zip(train.sequence, train.label, strict=True)) == [
        ("AACC", "positive"), ("ACGT", "positive"), ("GGTT", "negative")]

    nt = tmp_path / "nt" / "promoter_tata"
    nt.mkdir(parents=True)
    (nt / "train.fna").write_text(">p1|1\nACGT\nAC\n>n1|0\nGGTT\n")
    (nt / "test.fna").write_text(">p2|1\nCCAA\n")
    files = dataset_files("nt", nt, tmp_path / "cache" / "nt")
    train = pd.read_csv(files["train"])
    assert list(zip(train.sequence, train.label, strict=True)) == [("ACGTAC", 1), ("GGTT", 0)]
    (nt / "test.fna").write_text(">p2 without a label\nCCAA\n")
    with pytest.raises(DnabertError, match=r"does not end in \|<label>"):
        dataset_files("nt", nt, tmp_path / "cache" / "nt2")
    with pytest.raises(DnabertError, match="lacks .*train.csv"):
        dataset_files("gue", gb, tmp_path / "cache" / "gue")


def test_the_published_gue_scores_average_to_the_papers_28_dataset_means() -> None:
    """The per-dataset scores recorded from the DNABERT-2 paper's table reproduce its stated averages over the 28
    datasets (DNABERT 6-mer 60.51, NT-2500M-multi 66.93, DNABERT-2 66.80): a misread cell would move one."""
    models = yaml.safe_load((ROOT / "configs" / "suite" / "gue.yaml").read_text())["published"]["models"]
    averages = {name: round(sum(scores.values()) / len(scores), 2) for name, scores in models.items()}
    assert {name: len(scores) for name, scores in models.items()} == dict.fromkeys(models, 28)
    assert averages == {"DNABERT (6-mer)": 60.51, "NT-2500M-multi": 66.93, "DNABERT-2": 66.80}


def test_every_suites_published_scores_name_its_datasets_and_cover_what_their_sources_give() -> None:
    """Which datasets each source scores (a name missing from a suite would drop a score from the card unseen):
    GUE's table all 28; genomic_benchmarks' CNN all 9 and HyenaDNA 8 (no drosophila_enhancers_stark); the NT
    authors' figure all 18, except DNABERT-1 without splice acceptors and donors. Scores lie in (0, scale]."""
    expected_gaps = {"gue": {}, "genomic_benchmarks": {"HyenaDNA": {"drosophila_enhancers_stark"}},
                     "nt": {"DNABERT (6-mer)": {"splice_sites_acceptors", "splice_sites_donors"}}}
    for suite, gaps in expected_gaps.items():
        config = yaml.safe_load((ROOT / "configs" / "suite" / f"{suite}.yaml").read_text())
        names = {row["name"] for row in config["datasets"]}
        published = config["published"]
        assert published["source"] and published["models"], suite
        for model, scores in published["models"].items():
            assert names - set(scores) == gaps.get(model, set()), (suite, model)
            assert set(scores) <= names and all(0 < value <= published["scale"] for value in scores.values())
    assert len(yaml.safe_load((ROOT / "configs" / "suite" / "nt.yaml").read_text())["datasets"]) == 18
