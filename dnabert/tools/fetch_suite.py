"""Download a benchmark suite into a folder, verified: `python -m dnabert.tools.fetch_suite <gue|genomic_benchmarks|nt>
<dir>`, then `python suite.py suite=<suite> suite.data_dir=<dir>` (GUE: <dir>/GUE).

Every file's URL and sha256 are in dnabert/tools/suite_registry.yaml; pooch downloads each file and keeps it only
when its sha256 matches (a mismatch stops the fetch, naming both checksums, and nothing of that file is kept).
A file whose checksum the registry does not know is refused unless --accept-unknown-checksum; it is then fetched
and its sha256 printed, to be recorded in the registry. Files already in <dir> with the right checksum are kept.
Where a suite is not directly downloadable (GUE is a Google Drive page), save it by hand and pass --archive.

Where the registry records how many sequences each dataset holds per split and class (`sequences:`, Genomic
Benchmarks: counted from the publisher's own tables), the unpacked folders are counted after the fetch, so an
incomplete unpack or another version of the data stops here rather than in the results. `--check` counts a folder
that is already there (e.g. written by genomic_benchmarks' download_dataset) without downloading anything.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from dnabert.data.suites import class_counts
from dnabert.errors import DnabertError, command_line

REGISTRY = Path(__file__).with_name("suite_registry.yaml")


def load_registry(path: Path = REGISTRY) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DnabertError(f"cannot read the suite registry {path} ({err}).") from err


def fetch_file(entry: dict[str, Any], out_dir: Path, accept_unknown: bool, archive: Path | None = None) -> Path:
    """One registry entry into out_dir/<save>, verified; `archive`: a local copy instead of the URL."""
    import pooch

    target = out_dir / entry["save"]
    url = archive.resolve().as_uri() if archive is not None else entry["url"]
    known = entry.get("sha256")
    if known is None and not accept_unknown:
        raise DnabertError(f"{entry['save']}: the registry records no sha256 for {entry['url']}, so the download "
                           "cannot be verified; pass --accept-unknown-checksum to fetch it anyway (its sha256 is "
                           "then printed, to be recorded in dnabert/tools/suite_registry.yaml).")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if archive is not None:
            shutil.copyfile(archive, target.with_suffix(target.suffix + ".part"))
            got = pooch.file_hash(str(target.with_suffix(target.suffix + ".part")))
            if known is not None and got != known:
                target.with_suffix(target.suffix + ".part").unlink()
                raise ValueError(f"SHA256 hash of {archive} ({got}) does not match the known hash {known}")
            target.with_suffix(target.suffix + ".part").replace(target)
        else:
            print(f"{entry['save']}: from {url}", flush=True)
            pooch.get_logger().setLevel("WARNING")  # its own "Downloading ..." line would repeat the one above
            pooch.retrieve(url, known_hash=f"sha256:{known}" if known else None, fname=target.name,
                           path=target.parent, progressbar=False)
    except ValueError as err:  # pooch's checksum mismatch
        raise DnabertError(f"{url}: checksum mismatch, nothing kept ({err}); the download is damaged or the file "
                           "changed upstream. Fetch again; if it persists, check the publisher's checksum.") from err
    except OSError as err:
        raise DnabertError(f"{url}: cannot download ({err}); without network, download it elsewhere and pass it "
                           "with --archive.") from err
    if known is None:
        print(f"{entry['save']}: sha256 {pooch.file_hash(str(target))} (unverified; record it in the registry)")
    if entry.get("unpack") == "zip":
        shutil.unpack_archive(str(target), str(out_dir), format="zip")
        target.unlink()
    return target


def check_sequence_counts(suite: str, expected: dict[str, dict[str, dict[str, int]]], out_dir: Path) -> None:
    """Every dataset folder holds the recorded number of sequences per split and class, and no other class."""
    for dataset, splits in expected.items():
        folder = out_dir / dataset
        if not folder.is_dir():
            raise DnabertError(f"{folder} is missing; fetch the suite into {out_dir} "
                               f"(python -m dnabert.tools.fetch_suite {suite} {out_dir}).")
        found = class_counts(folder)
        wrong = [f"{split} {found.get(split)} instead of {classes}" for split, classes in splits.items()
                 if found.get(split) != classes]
        if wrong:
            raise DnabertError(f"{folder} does not hold the publisher's sequences per class ({'; '.join(wrong)}): "
                               "an incomplete download or another version of the data. Delete the folder and "
                               f"fetch again (python -m dnabert.tools.fetch_suite {suite} {out_dir}).")
    print(f"{suite}: {len(expected)} dataset(s) hold the publisher's number of sequences per split and class")


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="gue, genomic_benchmarks or nt")
    parser.add_argument("out_dir", type=Path, help="the folder to fill (suite.data_dir)")
    parser.add_argument("--accept-unknown-checksum", action="store_true",
                        help="fetch files whose sha256 the registry does not know, printing theirs")
    parser.add_argument("--archive", type=Path, help="a local copy of the suite's single archive (GUE)")
    parser.add_argument("--check", action="store_true",
                        help="download nothing: count the sequences of a folder already there")
    parser.add_argument("--registry", type=Path, default=REGISTRY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    registry = load_registry(args.registry)
    if args.suite not in registry:
        raise DnabertError(f"suite {args.suite!r} is not in the registry; choose one of {', '.join(registry)}.")
    files, counts = registry[args.suite]["files"], registry[args.suite].get("sequences")
    out_dir = args.out_dir.expanduser()
    if args.check:
        if not counts:
            raise DnabertError(f"--check: the registry records no sequence counts for suite {args.suite}; only "
                               "the checksums of a fetch verify it.")
        check_sequence_counts(args.suite, counts, out_dir)
        return 0
    if args.archive is not None and (len(files) != 1 or not args.archive.is_file()):
        raise DnabertError(f"--archive={args.archive}: give an existing file, for a suite of one archive (gue).")
    for entry in files:
        fetch_file(entry, out_dir, args.accept_unknown_checksum, args.archive)
    print(f"{args.suite}: {len(files)} file(s) in {args.out_dir}")
    if counts:
        check_sequence_counts(args.suite, counts, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
