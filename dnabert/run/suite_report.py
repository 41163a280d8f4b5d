"""A suite's result card from its finished pairs: results.json, results.md and results.png in the suite folder.

Per dataset: the headline metric on test (dev where a dataset has no test split) over the seeds that did not
collapse, as mean +- sd (n), beside the published scores of the suite's config; per group and for the suite the
mean of the datasets' means, its sd over seeds (of the per-seed means) and each published model's mean. Collapsed
pairs (every try collapsed) are listed by name and left out of every mean; pairs that collapsed and then succeeded
with another seed are listed too. Pairs not finished yet are counted as missing.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from dnabert.errors import DnabertError
from dnabert.run.suite_stats import summarise

SUITE_FILE = "suite.json"  # what the suite runner records of the suite besides the pairs (dnabert.run.suite)


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Written whole or not at all (a temporary file renamed), as jobs of one suite may write at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(handle, "w") as stream:
        stream.write(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)


def final_metrics(record: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """(split, metrics) of the accepted try: test where the dataset has it, else dev."""
    metrics = record["attempts"][-1]["metrics"]
    split = "test" if "test" in metrics else "dev"
    return split, metrics[split]


def collect(suite_dir: Path) -> dict[str, Any]:
    """results.json's content: per dataset scores by configured seed, statistics, published scores, collapses."""
    meta_path = suite_dir / SUITE_FILE
    if not meta_path.is_file():
        raise DnabertError(f"{suite_dir} has no {SUITE_FILE}; point at the folder suite.py wrote (its suite_dir).")
    meta = json.loads(meta_path.read_text())
    scale = float(meta["published"].get("scale") or 1)
    datasets, collapsed, retried, missing = {}, [], [], []
    for dataset in meta["datasets"]:
        name, values, split = dataset["name"], {}, None
        for seed in meta["seeds"]:
            path = suite_dir / name / f"pair_{seed}.json"
            if not path.is_file():
                missing.append(f"{name} seed {seed}")
                continue
            record = json.loads(path.read_text())
            tries = [f"seed {a['seed']}: {a['collapsed']}" for a in record["attempts"] if a["collapsed"]]
            if record["status"] == "collapsed":
                collapsed.append({"dataset": name, "seed": seed, "tries": tries})
                continue
            if tries:
                retried.append({"dataset": name, "seed": seed, "accepted_seed": record["attempts"][-1]["seed"],
                                "tries": tries})
            split, metrics = final_metrics(record)
            values[seed] = metrics[dataset["metric"]]
        entry: dict[str, Any] = {"group": dataset["group"], "metric": dataset["metric"], "split": split,
                                 "values": values, "mean": None, "sd": None, "n": len(values)}
        if values:
            summary = summarise(list(values.values()))
            entry.update(mean=summary.mean, sd=summary.sd)
        entry["published"] = {model: scores[name] / scale for model, scores in meta["published"]["models"].items()
                              if name in scores}
        datasets[name] = entry
    models = list(meta["published"]["models"])
    groups = {}
    for group in dict.fromkeys(entry["group"] for entry in datasets.values()):
        members = [e for e in datasets.values() if e["group"] == group]
        groups[group] = {**mean_over(members, meta["seeds"]), "published": published_means(members, models)}
    published_average = {}
    for model in models:  # over the datasets both have: a model may lack some (a paper's gaps)
        shared = [e for e in datasets.values() if model in e["published"] and e["mean"] is not None]
        if shared:
            published_average[model] = {"published": statistics.fmean(e["published"][model] for e in shared),
                                        "this_backbone": statistics.fmean(e["mean"] for e in shared),
                                        "datasets": len(shared)}
    overall = mean_over(list(datasets.values()), meta["seeds"])
    return {**{key: meta[key] for key in ("suite", "pretrained", "recipe", "seeds", "max_retries")},
            "published_source": meta["published"].get("source"), "datasets": datasets, "groups": groups,
            "average": overall["mean"], "average_over": overall["datasets"],
            "average_sd_over_seeds": overall["sd_over_seeds"], "average_seeds": overall["seeds"],
            "published_average": published_average, "collapsed": collapsed, "retried": retried, "missing": missing}


def mean_over(entries: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The mean of the datasets' means, and its spread over seeds: the sd of the per-seed means over the datasets,
    from the seeds every dataset with a result has (a seed that collapsed on one dataset is left out)."""
    scored = [entry for entry in entries if entry["mean"] is not None]
    complete = [seed for seed in seeds if all(seed in entry["values"] for entry in scored)]
    per_seed = [statistics.fmean(entry["values"][seed] for entry in scored) for seed in complete] if scored else []
    return {"mean": statistics.fmean(entry["mean"] for entry in scored) if scored else None,
            "datasets": len(scored), "of": len(entries),
            "sd_over_seeds": summarise(per_seed).sd if per_seed else None, "seeds": len(per_seed)}


def published_means(entries: list[dict[str, Any]], models: list[str]) -> dict[str, dict[str, Any]]:
    """Per model, the mean of its published scores over these datasets and how many of them it has."""
    means = {}
    for model in models:
        scores = [entry["published"][model] for entry in entries if model in entry["published"]]
        if scores:
            means[model] = {"mean": statistics.fmean(scores), "datasets": len(scores)}
    return means


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def spread_cell(summary: dict[str, Any]) -> str:
    sd = summary["sd_over_seeds"]
    return percent(summary["mean"]) + ("" if sd is None else f" ± {percent(sd)} ({summary['seeds']} seeds)")


def published_cell(published: dict[str, Any] | None, datasets: int) -> str:
    if published is None:
        return "-"
    return percent(published["mean"]) + ("" if published["datasets"] == datasets else f" ({published['datasets']})")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |"
                                                                            for row in rows]


def markdown(results: dict[str, Any]) -> str:
    models = list(dict.fromkeys(m for e in results["datasets"].values() for m in e["published"]))
    lines = [f"# Suite {results['suite']}: {results['pretrained']} (recipe {results['recipe']})", "",
             f"Scores x 100, mean ± sd over n seeds; seeds {results['seeds']}, collapsed ones retried up to "
             f"{results['max_retries']} times and never averaged in."]
    if models:
        lines.append(f"Published: {results['published_source']}.")
    rows = []
    for name, entry in results["datasets"].items():
        ours = "-" if entry["mean"] is None else (
            percent(entry["mean"]) + ("" if entry["sd"] is None else f" ± {percent(entry['sd'])}"))
        rows.append([name, entry["group"], entry["metric"], ours, str(entry["n"]),
                     *(percent(entry["published"].get(model)) for model in models)])
    lines += ["", *table(["dataset", "group", "metric", "this backbone", "n", *models], rows)]
    lines += ["", "Per group, the mean of the datasets' means ± the sd over seeds of the per-seed means"
              + ("; a published model's mean over the datasets it has (how many, where fewer)" if models else "")
              + ":", ""]
    rows = [[group, spread_cell(g), f"{g['datasets']} of {g['of']}",
             *(published_cell(g["published"].get(model), g["of"]) for model in models)]
            for group, g in results["groups"].items()]
    lines += table(["group", "this backbone", "datasets", *models], rows)
    average = f"{percent(results['average'])} over {results['average_over']} of {len(results['datasets'])} datasets"
    if results["average_sd_over_seeds"] is not None:
        average += (f", ± {percent(results['average_sd_over_seeds'])} over {results['average_seeds']} seeds "
                    "(the sd of the per-seed suite means)")
    lines += ["", f"Suite average: {average}."]
    lines += [f"Over the {value['datasets']} dataset(s) {model} has: {model} {percent(value['published'])}, "
              f"this backbone {percent(value['this_backbone'])}."
              for model, value in results["published_average"].items()]
    lines += ["", f"Collapsed ({len(results['collapsed'])}):"]
    lines += [f"- {c['dataset']} seed {c['seed']}: " + "; ".join(c["tries"])
              for c in results["collapsed"]] or ["- none"]
    if results["retried"]:
        lines += ["", "Collapsed, then accepted with another seed:"]
        lines += [f"- {r['dataset']} seed {r['seed']} (accepted seed {r['accepted_seed']}): " + "; ".join(r["tries"])
                  for r in results["retried"]]
    if results["missing"]:
        lines += ["", f"Not finished ({len(results['missing'])}): " + ", ".join(results["missing"])]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    models = list(dict.fromkeys(m for e in results["datasets"].values() for m in e["published"]))
    width = 0.8 / (1 + len(models))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(names) * (1 + len(models)) ** 0.5 + 2), 4.5))
    labelled = set()
    for index, name in enumerate(names):
        entry = results["datasets"][name]
        bars = [("this backbone", 0, entry["mean"], entry["sd"])] if entry["mean"] is not None else []
        bars += [(model, offset, entry["published"][model], None) for offset, model in enumerate(models, start=1)
                 if model in entry["published"]]
        for label, offset, value, spread in bars:
            axes.bar(index + offset * width, 100 * value, width, yerr=None if spread is None else 100 * spread,
                     capsize=2, color=f"C{offset}", label=None if label in labelled else label)
            labelled.add(label)
    axes.set_xticks([i + len(models) * width / 2 for i in range(len(names))], names, rotation=60, ha="right",
                    fontsize=7)
    axes.set_ylabel("score x 100 (test; mean ± sd over seeds)")
    axes.set_title(f"{results['suite']}: {Path(results['pretrained']).name} vs published")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))  # beside the bars, never over them
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_suite_card(suite_dir: Path) -> list[Path]:
    """results.json, results.md and results.png in `suite_dir`; prints where they are and the suite average."""
    results = collect(suite_dir)
    paths = [suite_dir / "results.json", suite_dir / "results.md", suite_dir / "results.png"]
    write_json(paths[0], results)
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    collapsed = ", ".join(f"{c['dataset']} seed {c['seed']}" for c in results["collapsed"]) or "none"
    lines = [f"Suite {results['suite']} in {suite_dir}", *(f"  {path}" for path in paths),
             f"  average {percent(results['average'])} over {results['average_over']} dataset(s); "
             f"collapsed: {collapsed}" + (f"; not finished: {len(results['missing'])} pair(s)" if results["missing"]
                                          else "")]
    print("\n".join(lines), flush=True)
    return paths
