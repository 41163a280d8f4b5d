"""Downstream metrics, computed by torchmetrics on whole splits (not averaged over batches).

Classification: accuracy, F1 (binary, or macro for several classes), MCC, precision, recall, AUROC, AUPR (average
precision), as the DNABERT and DNABERT-2 fine-tuning scripts report them. Regression: MSE, Pearson, Spearman.
A model that predicts one class for every row has an undefined MCC: torchmetrics gives a small value (Chicco et
al. 2020's convention, e.g. +-0.009 on 75 rows) where scikit-learn, which DNABERT used, gives 0.
"""

from __future__ import annotations

import torch
from torchmetrics import functional as tmf

from dnabert.errors import DnabertError

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc", "precision", "recall", "auroc", "aupr")
REGRESSION_METRICS = ("mse", "pearson", "spearman")
# The dev metric that selects the checkpoint, by task type (DNABERT-2's headline metric is MCC).
DEFAULT_SELECTION = {"classification": "mcc", "regression": "spearman"}
LOWER_IS_BETTER = {"mse", "loss"}
# What can select it, by task type: the dev metrics, and the dev loss.
SELECTABLE = {"classification": (*CLASSIFICATION_METRICS, "loss"), "regression": (*REGRESSION_METRICS, "loss")}
SELECTION_METRICS = (*CLASSIFICATION_METRICS, *REGRESSION_METRICS, "loss")


def selection_metric(metric: str | None, task_type: str) -> str:
    """The dev metric that picks the checkpoint: `metric`, or the task type's default when it is None. One of the
    other task type's would end in Lightning's error after the first epoch: refused now."""
    if metric is None:
        return DEFAULT_SELECTION[task_type]
    if metric not in SELECTABLE[task_type]:
        raise DnabertError(f"selection_metric={metric!r} is not a {task_type} metric; use one of "
                           f"{', '.join(SELECTABLE[task_type])}, or null ({DEFAULT_SELECTION[task_type]}).")
    return metric


def classification_metrics(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """`probabilities` (N, C) rows summing to 1, `labels` (N,) class ids."""
    probabilities, labels = probabilities.float().cpu(), labels.long().cpu()
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(dim=1)
    if num_classes == 2:  # the positive class's score; F1, precision and recall of the positive class
        scores, options = probabilities[:, 1], {"task": "binary"}
    else:  # one-vs-rest, macro-averaged over classes
        scores, options = probabilities, {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
    values = {
        "accuracy": tmf.accuracy(predicted, labels, task="multiclass", num_classes=num_classes),
        "f1": tmf.f1_score(predicted, labels, **options),
        "mcc": tmf.matthews_corrcoef(predicted, labels, task="multiclass", num_classes=num_classes),
        "precision": tmf.precision(predicted, labels, **options),
        "recall": tmf.recall(predicted, labels, **options),
        "auroc": tmf.auroc(scores, labels, **options),
        "aupr": tmf.average_precision(scores, labels, **options),
    }
    return {name: float(values[name]) for name in CLASSIFICATION_METRICS}


def regression_metrics(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """`predictions` and `targets` (N,) real values."""
    predictions, targets = predictions.float().flatten().cpu(), targets.float().flatten().cpu()
    return {
        "mse": float(tmf.mean_squared_error(predictions, targets)),
        "pearson": float(tmf.pearson_corrcoef(predictions, targets)),
        "spearman": float(tmf.spearman_corrcoef(predictions, targets)),
    }


def split_metrics(outputs: torch.Tensor, targets: torch.Tensor, task_type: str) -> dict[str, float]:
    """Metrics of a split from the model's outputs: logits (N, C) for classification, values (N, 1) for regression."""
    if task_type == "regression":
        return regression_metrics(outputs.squeeze(-1), targets)
    return classification_metrics(outputs.float().softmax(dim=-1), targets)
