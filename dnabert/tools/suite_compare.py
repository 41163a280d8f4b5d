"""Two suite results side by side: `python -m dnabert.tools.suite_compare A B [--out compare.md]`, where A and B
are suite folders (or their results.json) of the same suite, e.g. two backbones.

Per dataset: A and B as mean +- sd, the difference B - A over the seeds both have, and a paired t-test over those
seeds (the same seed is the same data order and head initialisation). For the suite: the Wilcoxon signed-rank
test of B - A over the datasets both have (their seed means), with wins and losses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dnabert.errors import DnabertError, command_line
from dnabert.run.suite_stats import paired_difference, suite_wilcoxon


def load_results(path: Path) -> dict[str, Any]:
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise DnabertError(f"{file} does not exist; give a suite folder with results.json "
                           "(python -m dnabert.tools.suite_summary <suite_dir> writes it).")
    results = json.loads(file.read_text())
    if "datasets" not in results or "suite" not in results:
        raise DnabertError(f"{file} is not a suite's results.json.")
    return results


def number(value: float | None, scale: float = 100, digits: int = 2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def compare(a: dict[str, Any], b: dict[str, Any], label_a: str, label_b: str) -> str:
    if a["suite"] != b["suite"]:
        raise DnabertError(f"{label_a} is suite {a['suite']} but {label_b} is suite {b['suite']}; compare one suite.")
    lines = [f"# Suite {a['suite']}: B = {label_b} vs A = {label_a}", "",
             "Scores x 100, mean ± sd (n seeds); difference B - A over the seeds both have; paired t-test over them.",
             "", "| dataset | metric | A | B | B - A | seeds | p (paired t) |", "|---|---|---|---|---|---|---|"]
    means_a, means_b = {}, {}
    for name, entry_a in a["datasets"].items():
        entry_b = b["datasets"].get(name)
        if entry_b is None:
            continue
        values_a = {int(seed): value for seed, value in entry_a["values"].items()}
        values_b = {int(seed): value for seed, value in entry_b["values"].items()}
        paired = paired_difference(values_a, values_b)
        if entry_a["mean"] is not None and entry_b["mean"] is not None:
            means_a[name], means_b[name] = entry_a["mean"], entry_b["mean"]
        shown = [f"{number(e['mean'])} ± {number(e['sd'])} ({e['n']})" for e in (entry_a, entry_b)]
        lines.append(f"| {name} | {entry_a['metric']} | {shown[0]} | {shown[1]} | "
                     f"{number(paired.difference) if paired else '-'} | {paired.n if paired else 0} | "
                     f"{number(paired.p, 1, 4) if paired else '-'} |")
    test = suite_wilcoxon(means_a, means_b)
    lines += ["", f"Suite: B better on {test.wins}, worse on {test.losses} of {test.n} datasets; Wilcoxon "
                  f"signed-rank over datasets: statistic {number(test.statistic, 1, 1)}, p {number(test.p, 1, 4)}."]
    return "\n".join(lines) + "\n"


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="suite folder or results.json (A, the reference)")
    parser.add_argument("b", type=Path, help="suite folder or results.json (B)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    table = compare(load_results(args.a), load_results(args.b), str(args.a), str(args.b))
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
