"""`python -m dnabert.tools.finetune_report <run dir>`: report.md and plots/finetune.png of a finetune.py run,
rewritten from its results.json (dnabert.run.finetune_report; the end of a run writes them too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dnabert.errors import command_line
from dnabert.run.finetune_report import write_finetune_report


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a fine-tuning run and write its report.md.")
    parser.add_argument("run_dir", type=Path, help="the finetune.py run directory (holds results.json)")
    for path in write_finetune_report(parser.parse_args(argv).run_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
