"""The result card of a suite from the pairs finished so far: `python -m dnabert.tools.suite_summary <suite_dir>`
(after a SLURM sweep of suite.py, or while one runs); writes results.json, results.md and results.png there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dnabert.errors import command_line
from dnabert.run.suite_report import write_suite_card


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite_dir", type=Path, help="the suite's folder (suite_dir; holds suite.json)")
    write_suite_card(parser.parse_args(argv).suite_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
