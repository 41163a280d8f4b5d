"""The statistics of a benchmark suite: per dataset mean, sd and n over seeds; a collapsed seed told apart from a
poor one; two result sets compared per dataset (paired over seeds) and over the suite (Wilcoxon over datasets).

Why a collapse is its own verdict: a fine-tune that predicts one class for everything (or is anti-correlated on
dev) is a failed optimisation, not a measurement of the backbone; averaged in, one such seed moves a five-seed
mean by a fifth of the score. The suite reruns it with another seed and reports it by name (dnabert.run.suite).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """Mean and sample sd (ddof 1; None for one value) of one dataset's scores over its seeds."""

    mean: float
    sd: float | None
    n: int


def summarise(values: list[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarise")
    return Summary(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def collapse_reason(task_type: str, dev_outputs: np.ndarray, dev_metrics: dict[str, float]) -> str | None:
    """Why a fine-tuned seed counts as collapsed, or None: constant predictions on dev, or a dev MCC <= 0
    (classification); constant outputs or a dev Spearman <= 0 (regression)."""
    if task_type == "classification":
        predicted = np.asarray(dev_outputs).argmax(axis=-1)
        if len(np.unique(predicted)) == 1:
            return f"constant predictions on dev (class index {int(predicted[0])} for all {len(predicted)} rows)"
        if dev_metrics["mcc"] <= 0:
            return f"dev MCC {dev_metrics['mcc']:.4f} <= 0"
        return None
    outputs = np.asarray(dev_outputs, dtype=float).ravel()
    if np.ptp(outputs) == 0:
        return f"constant outputs on dev ({outputs[0]:.4g} for all {len(outputs)} rows)"
    if not dev_metrics["spearman"] > 0:
        return f"dev Spearman {dev_metrics['spearman']:.4f} <= 0"
    return None


@dataclass(frozen=True)
class PairedDifference:
    """B - A on one dataset over the seeds both have: the mean difference and a paired t-test (None below 2 seeds
    or where every difference is equal, which leaves the test undefined)."""

    difference: float
    n: int
    t: float | None
    p: float | None


def paired_difference(a: dict[int, float], b: dict[int, float]) -> PairedDifference | None:
    """Seeds are the pairing: the same seed is the same data order and head initialisation in both."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    first, second = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    difference = float(np.mean(second - first))
    if len(seeds) < 2 or np.ptp(second - first) == 0:
        return PairedDifference(difference, len(seeds), None, None)
    result = stats.ttest_rel(second, first)
    return PairedDifference(difference, len(seeds), float(result.statistic), float(result.pvalue))


@dataclass(frozen=True)
class SuiteTest:
    """Wilcoxon signed-rank test of B - A over the datasets both have (their seed means)."""

    n: int
    wins: int
    losses: int
    statistic: float | None
    p: float | None


def suite_wilcoxon(a: dict[str, float], b: dict[str, float]) -> SuiteTest:
    names = sorted(set(a) & set(b))
    differences = np.array([b[name] - a[name] for name in names], dtype=float)
    wins, losses = int((differences > 0).sum()), int((differences < 0).sum())
    if wins + losses == 0:
        return SuiteTest(len(names), wins, losses, None, None)
    result = stats.wilcoxon(differences)
    p = float(result.pvalue)
    return SuiteTest(len(names), wins, losses, float(result.statistic), None if math.isnan(p) else p)
