"""Is my curve normal? Plots and a one-page summary of a run's logged metrics, with reference lines.

DNABERT users asked for reference loss/perplexity curves (issues #45, #51, #74). Two fixed points make any
curve readable: ln(4^k), the loss of a model that knows nothing (uniform over the 4^k k-mers), and ln(4), the
loss of a model that pins down a masked k-mer up to one nucleotide (whole-k-mer masking usually hides about
one nucleotide per masked k-mer that its visible neighbours do not give away).

BPE runs (DNABERT-2, `tokenizer=bpe`) have no such nucleotide reference: their lines are ln V (uniform over the V
non-special tokens of the run's vocabulary, from its config) and the DNABERT-2 authors' end state, held-out loss
~4.3 and masked-token accuracy ~30% (DNABERT_2 #46, #98, #122), for their V = 4096.

`python -m dnabert.tools.report <run dir>` (the command line) writes `<run dir>/plots/curves.png` and
`<run dir>/report.md`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dnabert.errors import DnabertError  # noqa: E402

LOSS_METRICS = ("train/loss", "val/loss")
# The downstream probes (dnabert/run/probe.py), logged at each validation when probe.path / probe.variants.vcf is set.
PROBE_METRICS = ("probe/mcc", "probe/auroc", "probe/acc", "probe/variant_auroc")
# A run whose loss never went more than this fraction below the uniform baseline has not learnt anything.
FLAT_FRACTION = 0.05
# ... unless it is still falling by more than this fraction of the baseline: then it is merely early.
EARLY_DROP_FRACTION = 0.01
# BPE: healthy below this fraction of ln V. The DNABERT-2 authors ended at ~4.3 = 0.52 ln(4091); a replication
# that stalled (DNABERT_2 #148) at 5.03 = 0.61 ln(4091). Half of ln V, the k-mer rule, would fail the authors' run.
BPE_HEALTHY_FRACTION = 0.55
DNABERT2_END_LOSS, DNABERT2_END_ACCURACY = 4.3, 0.30
NUM_SPECIAL_TOKENS = 5  # [PAD] [UNK] [CLS] [SEP] [MASK]: never a label


@dataclass(frozen=True)
class Baseline:
    """Reference points of a run's loss, from its tokenizer: the uniform loss ln V over the tokens a masked
    position can hold, the loss below which a run is healthy, and a published end state to draw, if any."""

    uniform: float
    uniform_label: str  # how the report writes `uniform`: ln(4^6) or ln(4091)
    healthy_below: float
    healthy_label: str
    end_state: tuple[float, float] | None = None  # (loss, masked-token accuracy)

    @classmethod
    def for_kmers(cls, k: int) -> Baseline:
        uniform = k * math.log(4)
        return cls(uniform, f"ln(4^{k})", uniform / 2, "ln(4^k)/2")

    @classmethod
    def for_bpe(cls, vocab_size: int) -> Baseline:
        labels = vocab_size - NUM_SPECIAL_TOKENS
        uniform = math.log(labels)
        end_state = (DNABERT2_END_LOSS, DNABERT2_END_ACCURACY) if vocab_size == 4096 else None
        return cls(uniform, f"ln({labels})", BPE_HEALTHY_FRACTION * uniform, f"{BPE_HEALTHY_FRACTION} ln V", end_state)


@dataclass(frozen=True)
class Summary:
    """The numbers report.md states, taken straight from the metrics CSV."""

    steps: int
    tokens_seen: float | None
    sequences_seen: float | None
    first_val_loss: float | None
    last_val_loss: float | None
    best_val_loss: float | None
    best_val_step: int | None
    final_train_loss: float | None
    k: int | None
    uniform_loss: float | None
    verdict: str
    probe: dict[str, tuple[float, float, int]]  # metric -> (first, last, step of last) for each logged probe metric
    baseline: Baseline | None = None


def find_metrics_csv(run_dir: Path) -> list[Path]:
    """Lightning's CSVLogger files under a run, oldest first (resumed runs may add version_N folders)."""
    if not run_dir.is_dir():
        raise DnabertError(f"run directory {run_dir} does not exist; give the folder a training run wrote.")
    preferred = run_dir / "csv" / "metrics.csv"
    found = sorted(run_dir.rglob("metrics.csv"), key=lambda path: path.stat().st_mtime)
    if preferred.is_file() and preferred not in found:
        found.append(preferred)
    if not found:
        raise DnabertError(
            f"No metrics file under {run_dir} (expected {preferred}, written by Lightning's CSVLogger). "
            "Point the report at a run directory of a run that logged at least one step."
        )
    return found


def load_metrics(run_dir: Path) -> pd.DataFrame:
    """All metrics CSVs of a run, oldest first, as text: empty cells are "not logged in this row" while a
    logged NaN stays the text "nan", so a diverged run is not mistaken for a sparse row."""
    frames = []
    for path in find_metrics_csv(run_dir):
        try:
            frames.append(pd.read_csv(path, dtype=str, keep_default_na=False))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DnabertError(f"{path} is not a readable metrics CSV ({err}); delete or repair it.") from err
    metrics = pd.concat(frames, ignore_index=True).fillna("")
    if "step" not in metrics.columns or not any(name in metrics.columns for name in LOSS_METRICS):
        raise DnabertError(
            f"The metrics CSV(s) under {run_dir} have no 'step' and loss columns "
            f"({', '.join(LOSS_METRICS)}); were they written by this project's training?"
        )
    return metrics


def read_baseline(run_dir: Path) -> tuple[int | None, Baseline | None]:
    """(k, baseline) from the run's Hydra config: BPE runs (`tokenizer.kind: bpe`) by `tokenizer.vocab_size`,
    k-mer runs by `tokenizer.k` (runs made before it moved there: the top-level `k`), else `data.k`; None where
    the config does not say."""
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        return None, None
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.load(config_path)
        if OmegaConf.select(config, "tokenizer.kind", default="kmer") == "bpe":
            return None, Baseline.for_bpe(int(OmegaConf.select(config, "tokenizer.vocab_size")))
        k = (OmegaConf.select(config, "tokenizer.k", default=None) or OmegaConf.select(config, "k", default=None)
             or OmegaConf.select(config, "data.k", default=None))
    except Exception:  # an unreadable config only costs the reference lines, not the report
        return None, None
    return (int(k), Baseline.for_kmers(int(k))) if k is not None else (None, None)


def series(metrics: pd.DataFrame, name: str) -> pd.Series:
    """One metric's logged values by step (NaN/inf kept); a resumed run's repeat of a step wins."""
    if name not in metrics.columns:
        return pd.Series(dtype=float)
    logged = metrics[metrics[name] != ""]
    values = pd.Series(logged[name].astype(float).to_numpy(), index=logged["step"].astype(float).astype(int))
    return values[~values.index.duplicated(keep="last")].sort_index()


def judge(losses: pd.Series, baseline: Baseline | None) -> str:
    """A one-line verdict from simple rules on the held-out loss (train loss when there is no validation)."""
    if losses.empty:
        return "no loss logged yet: nothing to judge"
    not_finite = losses[~np.isfinite(losses.to_numpy())]
    if len(not_finite):
        return f"diverged: the loss became {not_finite.iloc[0]} at step {int(not_finite.index[0])}"
    first, last, best = losses.iloc[0], losses.iloc[-1], losses.min()
    if baseline is not None:
        uniform, uniform_text = baseline.uniform, f"{baseline.uniform_label} = {baseline.uniform:.3f}"
        if last < baseline.healthy_below:
            return f"healthy: the loss fell below {baseline.healthy_label} = {baseline.healthy_below:.3f}"
        if last > uniform * (1 - FLAT_FRACTION):
            if first - last > EARLY_DROP_FRACTION * uniform:
                return (f"early: the loss is still near the uniform baseline {uniform_text} but falling; "
                        "judge again after more steps")
            return f"not learning: the loss is flat at the uniform baseline {uniform_text}"
    if last > best * 1.1:
        return "getting worse: the last loss is more than 10% above the best; check the learning rate"
    if last < first:
        if baseline is None:
            return "learning: the loss is falling (k unknown, so no baseline to compare with)"
        return f"learning, not there yet: the loss is falling but still above {baseline.healthy_label}"
    return "not learning: the loss has not fallen since the first value"


def summarise(metrics: pd.DataFrame, k: int | None, baseline: Baseline | None = None) -> Summary:
    """The report's numbers; the verdict judges val loss, or train loss for runs without validation. The baseline
    defaults to the k-mer one of `k`."""
    val_loss, train_loss = series(metrics, "val/loss"), series(metrics, "train/loss")
    tokens, sequences = series(metrics, "train/tokens_seen"), series(metrics, "train/sequences_seen")
    if baseline is None and k:
        baseline = Baseline.for_kmers(k)
    uniform = baseline.uniform if baseline else None
    finite_val = val_loss[np.isfinite(val_loss.to_numpy())]
    return Summary(
        # Lightning logs 0-based step indices: the last row of an N-step run says N-1.
        steps=int(metrics["step"].replace("", np.nan).astype(float).max()) + 1,
        tokens_seen=float(tokens.iloc[-1]) if len(tokens) else None,
        sequences_seen=float(sequences.iloc[-1]) if len(sequences) else None,
        first_val_loss=float(val_loss.iloc[0]) if len(val_loss) else None,
        last_val_loss=float(val_loss.iloc[-1]) if len(val_loss) else None,
        best_val_loss=float(finite_val.min()) if len(finite_val) else None,
        best_val_step=int(finite_val.idxmin()) if len(finite_val) else None,
        final_train_loss=float(train_loss.iloc[-1]) if len(train_loss) else None,
        k=k,
        uniform_loss=uniform,
        verdict=judge(val_loss if len(val_loss) else train_loss, baseline),
        probe={name: (float(values.iloc[0]), float(values.iloc[-1]), int(values.index[-1]))
               for name in PROBE_METRICS if len(values := series(metrics, name))},
        baseline=baseline,
    )


def _reference_lines(axis: plt.Axes, baseline: Baseline | None, transform=lambda value: value) -> None:
    if baseline is None:
        return
    axis.axhline(transform(baseline.uniform), color="grey", linestyle="--", linewidth=1,
                 label=f"uniform {baseline.uniform_label}")
    if baseline.end_state is not None:
        axis.axhline(transform(baseline.end_state[0]), color="grey", linestyle=":", linewidth=1,
                     label=f"DNABERT-2 authors' end {baseline.end_state[0]}")
    elif baseline.uniform_label.startswith("ln(4^"):
        axis.axhline(transform(math.log(4)), color="grey", linestyle=":", linewidth=1,
                     label="one hidden nt ln(4)")


def plot_curves(metrics: pd.DataFrame, baseline: Baseline | None, path: Path) -> None:
    """Eight panels: loss, perplexity, accuracy, downstream probe, learning rate, mask rate vs step; loss vs tokens
    seen."""
    figure, axes = plt.subplots(2, 4, figsize=(20, 8.5), constrained_layout=True)
    (loss_axis, ppl_axis, acc_axis, probe_axis), (lr_axis, mask_axis, tokens_axis, spare_axis) = axes
    spare_axis.axis("off")

    def draw(axis: plt.Axes, names: tuple[str, ...], title: str) -> None:
        for name in names:
            values = series(metrics, name)
            if len(values):
                marker = "o" if name.startswith("val/") else None
                axis.plot(values.index, values.to_numpy(), marker=marker, markersize=3, label=name)
        axis.set_title(title)
        axis.set_xlabel("optimiser step")
        axis.grid(alpha=0.3)

    draw(loss_axis, LOSS_METRICS, "masked-token loss (nats)")
    _reference_lines(loss_axis, baseline)
    draw(ppl_axis, ("train/ppl", "val/ppl"), "perplexity")
    _reference_lines(ppl_axis, baseline, transform=math.exp)
    ppl_axis.set_yscale("log")
    draw(acc_axis, ("train/acc", "val/acc"), "masked-token accuracy")
    if baseline is not None and baseline.end_state is not None:
        acc_axis.axhline(baseline.end_state[1], color="grey", linestyle=":", linewidth=1,
                         label=f"DNABERT-2 authors' end {baseline.end_state[1]:.0%}")
    draw(probe_axis, PROBE_METRICS, "downstream probes")
    if not any(len(series(metrics, name)) for name in PROBE_METRICS):
        probe_axis.text(0.5, 0.5, "no probe logged (set probe.path or probe.variants.vcf)", ha="center",
                        transform=probe_axis.transAxes)
    draw(lr_axis, ("lr",), "learning rate")
    draw(mask_axis, ("mask_rate",), "mask rate")
    lr_axis.set_ylim(bottom=0)
    mask_axis.set_ylim(bottom=0)

    tokens = series(metrics, "train/tokens_seen")
    tokens_axis.set_title("loss vs tokens seen")
    tokens_axis.set_xlabel("real tokens seen")
    tokens_axis.grid(alpha=0.3)
    if len(tokens) >= 1:
        for name in LOSS_METRICS:
            values = series(metrics, name)
            if len(values):  # validation steps have no token count of their own: interpolate by step
                seen = np.interp(values.index, tokens.index, tokens.to_numpy())
                marker = "o" if name.startswith("val/") else None
                tokens_axis.plot(seen, values.to_numpy(), marker=marker, markersize=3, label=name)
        _reference_lines(tokens_axis, baseline)
    else:
        tokens_axis.text(0.5, 0.5, "train/tokens_seen not logged", ha="center",
                         transform=tokens_axis.transAxes)
    for axis in axes.flat:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _number(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def render_markdown(summary: Summary, run_dir: Path) -> str:
    """report.md: the numbers, the reference points, the verdict."""
    ratio = (
        summary.last_val_loss / summary.uniform_loss
        if summary.last_val_loss is not None and summary.uniform_loss
        else None
    )
    reference = summary.baseline
    if reference is None:
        baseline = "unknown (no k or tokenizer in .hydra/config.yaml)"
    elif reference.end_state is not None:
        baseline = (f"{reference.uniform:.4f} ({reference.uniform_label}); DNABERT-2 authors' end state: loss "
                    f"~{reference.end_state[0]}, masked-token accuracy ~{reference.end_state[1]:.0%}")
    elif reference.uniform_label.startswith("ln(4^"):
        baseline = (f"{reference.uniform:.4f} ({reference.uniform_label}); one-hidden-nucleotide reference ln(4) = "
                    f"{math.log(4):.4f}")
    else:
        baseline = f"{reference.uniform:.4f} ({reference.uniform_label})"
    best = "n/a"
    if summary.best_val_step is not None:
        best = f"{_number(summary.best_val_loss)} at step {summary.best_val_step}"
    return "\n".join([
        f"# Run report: {run_dir.name}",
        "",
        f"**Verdict: {summary.verdict}.**",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| optimiser steps | {summary.steps} |",
        f"| tokens seen | {_number(summary.tokens_seen, ',.0f')} |",
        f"| sequences seen | {_number(summary.sequences_seen, ',.0f')} |",
        f"| first val loss | {_number(summary.first_val_loss)} |",
        f"| last val loss | {_number(summary.last_val_loss)} |",
        f"| best val loss | {best} |",
        f"| final train loss | {_number(summary.final_train_loss)} |",
        f"| uniform baseline | {baseline} |",
        f"| last val loss / uniform baseline | {_number(ratio, '.3f')} |",
        *(f"| {name} (first -> last, step {step}) | {first:.4f} -> {last:.4f} |"
          for name, (first, last, step) in summary.probe.items()),
        "",
        "Curves: [plots/curves.png](plots/curves.png)",
        "",
    ])


def write_report(run_dir: str | Path) -> list[Path]:
    """Write plots/curves.png and report.md for a run directory; returns their paths."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    k, baseline = read_baseline(run_dir)
    summary = summarise(metrics, k, baseline)
    png_path = run_dir / "plots" / "curves.png"
    plot_curves(metrics, summary.baseline, png_path)
    markdown_path = run_dir / "report.md"
    markdown_path.write_text(render_markdown(summary, run_dir))
    return [png_path, markdown_path]

