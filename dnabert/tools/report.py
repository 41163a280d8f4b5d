"""`python -m dnabert.tools.report <run dir>`: plots/curves.png and report.md of a pretraining run
(dnabert.run.report draws them; the end of a run writes them too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dnabert.errors import command_line
from dnabert.run.report import write_report


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a run's curves and write report.md.")
    parser.add_argument("run_dir", type=Path, help="the run directory (holds csv/metrics.csv)")
    args = parser.parse_args(argv)
    paths = write_report(args.run_dir)
    markdown = paths[1].read_text()
    print(next(line for line in markdown.splitlines() if line.startswith("**Verdict")))
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
