"""Did fine-tuning work? report.md and plots/finetune.png of a finetune.py run, from its results.json.

The PNG shows the dev metrics per epoch of every seed (the selection metric marks the chosen epoch) and, for binary
tasks, the ROC and precision-recall curves of the chosen checkpoints on the test split (dev when there is none).

`python -m dnabert.tools.finetune_report <run dir>` (the command line) rewrites them from results.json and the
seeds' predictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from dnabert.errors import DnabertError  # noqa: E402


def plot_finetune(run_dir: Path, results: dict[str, Any], path: Path) -> None:
    binary = results["task_type"] == "classification" and len(results["labels"]) == 2
    figure, axes = plt.subplots(1, 3 if binary else 1, figsize=(15 if binary else 5.5, 4.5), constrained_layout=True)
    axes = np.atleast_1d(axes)
    metric = results["selection_metric"].split("/", 1)[1]
    history_axis = axes[0]
    for seed_result in results["seeds"]:
        history = seed_result["dev_history"]
        epochs = [entry["epoch"] + 1 for entry in history]
        line, = history_axis.plot(epochs, [entry[metric] for entry in history], marker="o", markersize=3,
                                  label=f"seed {seed_result['seed']}")
        best = seed_result["best_epoch"]
        chosen = next(entry for entry in history if entry["epoch"] == best)
        history_axis.plot([best + 1], [chosen[metric]], marker="*", markersize=12, color=line.get_color())
    history_axis.set(title=f"dev {metric} per epoch (star: chosen checkpoint)", xlabel="epochs trained", ylabel=metric)
    history_axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    history_axis.grid(alpha=0.3)
    history_axis.legend(fontsize=8)
    if binary:
        split = "test" if "test" in results["mean"] else "dev"
        roc_axis, pr_axis = axes[1], axes[2]
        for seed_result in results["seeds"]:
            predictions = np.load(run_dir / f"seed_{seed_result['seed']}" / "predictions.npz")
            scores = torch.from_numpy(predictions[f"{split}_outputs"]).softmax(dim=1)[:, 1].numpy()
            targets = predictions[f"{split}_targets"]
            false_positive, true_positive, _ = roc_curve(targets, scores)
            precision, recall, _ = precision_recall_curve(targets, scores)
            label = f"seed {seed_result['seed']}"
            roc_axis.plot(false_positive, true_positive, label=label)
            pr_axis.plot(recall, precision, label=label)
        roc_axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        roc_axis.set(title=f"ROC ({split})", xlabel="false positive rate", ylabel="true positive rate")
        pr_axis.set(title=f"precision-recall ({split})", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
        for axis in (roc_axis, pr_axis):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def render_markdown(results: dict[str, Any], run_dir: Path) -> str:
    seeds = [seed_result["seed"] for seed_result in results["seeds"]]
    tokens = "BPE tokens" if results["k"] is None else f"k={results['k']}"
    lines = [
        f"# Fine-tuning report: {run_dir.name}",
        "",
        f"Task **{results['task']}** ({results['task_type']}"
        + (f", classes {', '.join(results['labels'])}" if results["labels"] else "") + "), backbone "
        f"`{results['pretrained']}` ({tokens}), "
        + ("linear probe (frozen backbone)" if results["freeze_backbone"] else "all weights trained")
        + f"; checkpoint chosen by {results['selection_metric']}; seeds {seeds}.",
        "",
        "| split | " + " | ".join(next(iter(results["mean"].values()))) + " |",
        "|---|" + "---|" * len(next(iter(results["mean"].values()))),
    ]
    for split, means in results["mean"].items():
        cells = []
        for name, value in means.items():
            spread = results["sd"][split][name]
            cells.append(f"{value:.4f}" + (f" ± {spread:.4f}" if spread is not None else ""))
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample sd over seeds. Splits: "
              + "; ".join(f"{name}: {source}" for name, source in results["splits"].items()) + ".", "",
              "Per seed (best epoch, 0-based):", ""]
    metric = results["selection_metric"].split("/", 1)[1]
    for seed_result in results["seeds"]:
        scores = ", ".join(f"{split} {metric} {values[metric]:.4f}" for split, values in seed_result["metrics"].items())
        lines.append(f"- seed {seed_result['seed']}: epoch {seed_result['best_epoch']}, {scores}")
    lines += ["", "Curves: [plots/finetune.png](plots/finetune.png)", ""]
    return "\n".join(lines)


def write_finetune_report(run_dir: str | Path, results: dict[str, Any] | None = None) -> list[Path]:
    """Write plots/finetune.png and report.md of a fine-tuning run; returns their paths."""
    run_dir = Path(run_dir)
    if results is None:
        results_path = run_dir / "results.json"
        if not results_path.is_file():
            raise DnabertError(f"{results_path} does not exist; give the folder of a finished finetune.py run.")
        results = json.loads(results_path.read_text())
    png_path = run_dir / "plots" / "finetune.png"
    plot_finetune(run_dir, results, png_path)
    markdown_path = run_dir / "report.md"
    markdown_path.write_text(render_markdown(results, run_dir))
    return [png_path, markdown_path]

