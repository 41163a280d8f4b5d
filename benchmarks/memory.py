"""Memory of the data path at GRCh38 scale and at a 32 Gbp corpus, the first scan, and resuming deep into training.

Each figure comes from a fresh subprocess (`--scenario NAME`), which reports its peak RSS (VmHWM) and its RSS right
after the imports every data process has (torch, lightning, dnabert's data module): the difference is what the data
path itself holds. A dataloader worker is forked from the main process after the stream is built, so it holds the
same plan plus the groups it cuts: the plan scenarios measure one such process.

- plan scenarios: the window plan (the part that grew with the genome) from interval arrays only, built
  synthetically in the shape of the genome (the plan never reads sequence; the peak is reset after they are
  built, and data_path_mb counts them). 300 consecutive micro-batches of 64 are read, as training does, then
  20 positions spread over two epochs, as resumes would.
- scan: a GRCh38-shaped FASTA of `--scan-mbp` Mbp is written to /tmp and scanned (the first start of a run);
  with --bgzip, the same file compressed by Biopython's bgzf writer (decompressed copy + scan).
- resume: a fresh stream serves the micro-batch at the first position of epoch 30 (GRCh38, 512 tokens).
- loader: the real training loader with 2 workers on the scan's FASTA; per process the peak RSS, the FASTA's
  mapped pages in it (shared page cache) and the private memory (pages not shared with the other processes).

The `hasattr(stream, "plan")` / `"seek"` checks let the same script measure the previous, materialised plan
(run it from a copy outside the checkout with PYTHONPATH pointing at the older code) for before/after figures.

    python -m benchmarks.memory                   # every scenario, a table
    python -m benchmarks.memory --scenario grch38-512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRCH38_CHROMOSOMES = {  # primary assembly lengths (bp)
    "chr1": 248_956_422, "chr2": 242_193_529, "chr3": 198_295_559, "chr4": 190_214_555, "chr5": 181_538_259,
    "chr6": 170_805_979, "chr7": 159_345_973, "chr8": 145_138_636, "chr9": 138_394_717, "chr10": 133_797_422,
    "chr11": 135_086_622, "chr12": 133_275_309, "chr13": 114_364_328, "chr14": 107_043_718, "chr15": 101_991_189,
    "chr16": 90_338_345, "chr17": 83_257_441, "chr18": 80_373_285, "chr19": 58_617_616, "chr20": 64_444_167,
    "chr21": 46_709_983, "chr22": 50_818_468, "chrX": 156_040_895, "chrY": 57_227_415,
}
SCENARIOS = ("grch38-512", "grch38-64", "fragmented-512", "corpus32g-128", "resume-epoch30", "scan", "scan-bgzip",
             "loader")


def status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def gapped_intervals(lengths: list[int], gaps_per_contig: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) A/C/G/T intervals of contigs with `gaps_per_contig` N runs each (50 bp - 100 kbp, log-uniform) and a
    10 kbp telomere gap at each end of contigs over 1 Mbp, like an assembly's gap table."""
    parts = []
    for contig, length in enumerate(lengths):
        telomere = 10_000 if length > 1_000_000 else 0
        gap_starts = np.sort(rng.integers(telomere, length - telomere, gaps_per_contig))
        gap_lengths = np.exp(rng.uniform(np.log(50), np.log(100_000), gaps_per_contig)).astype(np.int64)
        starts = np.concatenate([[telomere], gap_starts + gap_lengths])
        ends = np.concatenate([gap_starts, [length - telomere]])
        keep = ends - starts >= 6
        parts.append(np.column_stack([np.full(keep.sum(), contig), starts[keep], ends[keep]]))
    return np.concatenate(parts).astype(np.int64)


def training_intervals(intervals: np.ndarray, names: list[str]) -> np.ndarray:
    """What training sees: the default held-out split (1% in 10 kbp blocks) taken out."""
    from dnabert.data.genome import HeldOut, held_out_split

    return held_out_split(intervals, names, HeldOut(), 6, "bench")[0]


def plan_interval_sets(scenario: str) -> tuple[list[np.ndarray], list[float], int, str]:
    rng = np.random.default_rng(0)
    if scenario.startswith("grch38") or scenario.startswith("resume"):
        lengths = list(GRCH38_CHROMOSOMES.values())
        intervals = gapped_intervals(lengths, 40, rng)
        shape = f"GRCh38-shaped: 24 chromosomes, {sum(lengths) / 1e9:.2f} Gbp, {len(intervals):,} A/C/G/T intervals"
        return [training_intervals(intervals, list(GRCH38_CHROMOSOMES))], [1.0], 0, shape
    if scenario.startswith("fragmented"):
        lengths = rng.integers(300, 3_001, 100_000).tolist()
        intervals = np.column_stack([np.arange(len(lengths)), np.zeros(len(lengths), np.int64), lengths])
        shape = f"fragmented assembly: 100,000 contigs of 0.3-3 kb, {sum(lengths) / 1e6:.0f} Mbp"
        return [training_intervals(intervals, [str(i) for i in range(len(lengths))])], [1.0], 0, shape
    # 135 genomes (DNABERT-2's multi-species count) of 32 Gbp in all: sizes log-uniform, each assembly with
    # 30 to 50,000 contigs (log-uniform) of log-normal lengths and N gaps in contigs over 100 kbp.
    sizes = np.exp(rng.uniform(np.log(20e6), np.log(3e9), 135))
    sizes *= 32e9 / sizes.sum()
    sets, total_intervals = [], 0
    for size in sizes:
        n_contigs = int(np.exp(rng.uniform(np.log(30), np.log(50_000))))
        weights = rng.lognormal(0, 1.5, n_contigs)
        lengths = np.maximum((weights / weights.sum() * size).astype(np.int64), 200).tolist()
        intervals = gapped_intervals(lengths, 0, rng) if n_contigs > 2000 else gapped_intervals(lengths, 30, rng)
        sets.append(training_intervals(intervals, [str(i) for i in range(len(lengths))]))
        total_intervals += len(sets[-1])
    shape = (f"32 Gbp corpus: 135 genomes of {sizes.min() / 1e6:.0f} Mbp - {sizes.max() / 1e9:.1f} Gbp, "
             f"{total_intervals:,} training intervals")
    return sets, [float(s) for s in sizes], 0, shape


def run_plan(scenario: str, max_tokens: int, micro_batch: int = 64) -> dict:
    from dnabert.data.datamodule import GenomeDataModule  # noqa: F401  (every data process imports it)
    from dnabert.data.windows import WindowRule, WindowStream

    baseline = status_kb("VmRSS")
    interval_sets, weights, _, shape = plan_interval_sets(scenario)
    reset_peak()  # building the synthetic intervals is the benchmark's own work, not the data path's
    with_intervals = status_kb("VmRSS")
    began = time.perf_counter()
    stream = WindowStream(interval_sets, weights, WindowRule(6, max_tokens), seed=0)
    if scenario.startswith("resume"):
        # A fresh process must find the first window of epoch 30: count epochs 0..29, then cut one group.
        probe = WindowStream(interval_sets, weights, WindowRule(6, max_tokens), seed=0)
        sizes = [len(probe.plan(0, epoch)) if hasattr(probe, "plan") else probe._epoch_size(0, epoch)
                 for epoch in range(30)]
        position = int(sum(sizes))
        del probe
        reset_peak()
        began, cpu_began = time.perf_counter(), time.process_time()
        if hasattr(stream, "seek"):
            stream.seek(position)
        stream.windows(position, micro_batch)
        return {"shape": shape, "position": position, "resume_seconds": time.perf_counter() - began,
                "resume_cpu_seconds": time.process_time() - cpu_began,
                "peak_mb": status_kb("VmHWM") / 1024, "data_path_mb": (status_kb("VmHWM") - baseline) / 1024}
    first = stream.windows(0, micro_batch)
    first_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for index in range(1, 301):  # training reads consecutive micro-batches
        stream.windows(index * micro_batch, micro_batch)
    sequential = 300 * micro_batch / (time.perf_counter() - began)
    genome_epoch = len(stream.plan(0, 0)) if hasattr(stream, "plan") else stream._epoch_size(0, 0)
    span = int(genome_epoch / max(stream.probabilities[0], 1e-9) * 2)  # about two epochs of genome 0
    for position in np.linspace(0, span, 20).astype(np.int64):  # and resumes anywhere (counting later epochs)
        assert len(stream.windows(int(position), micro_batch)) == micro_batch
    assert len(first) == micro_batch
    peak = status_kb("VmHWM")
    return {"shape": shape, "imports_mb": baseline / 1024, "intervals_mb": (with_intervals - baseline) / 1024,
            "peak_mb": peak / 1024, "data_path_mb": (peak - baseline) / 1024,
            "first_batch_seconds": first_seconds, "sequential_windows_per_s": sequential,
            "epoch_windows_genome0": genome_epoch}


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is that of what follows."""
    Path("/proc/self/clear_refs").write_text("5")


def grch38_shaped_fasta(megabases: int, directory: Path) -> Path:
    """chr1-like contigs of random sequence with N runs and soft-masked stretches, 60 bp lines, made once."""
    path = directory / f"dnabert_bench_grch38_{megabases}mbp.fa"
    if path.exists():
        return path
    rng = np.random.default_rng(1)
    letters = np.frombuffer(b"ACGTacgt", dtype=np.uint8)
    remaining, index = megabases * 1_000_000, 0
    partial = path.with_suffix(".partial")
    with partial.open("wb") as handle:
        while remaining > 0:
            length = min(remaining, 100_000_000)
            handle.write(f">chr{index + 1}\n".encode())
            for first in range(0, length, 6_000_000):  # bounded memory, whole 60 bp lines per piece
                size = min(6_000_000, length - first)
                bases = letters[rng.integers(0, 4, size) + 4 * (rng.random(size) < 0.5)]
                for gap in rng.integers(0, size, 3):
                    bases[gap : gap + int(rng.integers(50, 50_000))] = ord("N")
                lines = [bases[i : i + 60].tobytes() + b"\n" for i in range(0, size, 60)]
                handle.write(b"".join(lines))
            remaining -= length
            index += 1
    partial.rename(path)
    return path


def run_scan(megabases: int, bgzip: bool) -> dict:
    from dnabert.data.genome import Genome, GenomeSource, HeldOut

    directory = Path(tempfile.gettempdir())
    fasta = grch38_shaped_fasta(megabases, directory)
    if bgzip:
        from Bio import bgzf

        packed = fasta.with_name(fasta.name + ".gz")
        if not packed.exists():
            with fasta.open("rb") as source, bgzf.BgzfWriter(str(packed) + ".partial", "wb") as target:
                while chunk := source.read(1 << 24):
                    target.write(chunk)
            Path(str(packed) + ".partial").rename(packed)
        for stale in directory.glob(packed.name + ".dnabert-plain-*"):
            stale.unlink()
        fasta = packed
    for stale in list(directory.glob(fasta.name + ".fai")) + list(directory.glob(fasta.name + ".dnabert-int*")):
        stale.unlink()
    baseline = status_kb("VmRSS")
    reset_peak()
    began = time.perf_counter()
    genome = Genome.open(GenomeSource("scan", fasta), 6, HeldOut(), directory / "dnabert_bench_cache", rescan=True)
    seconds = time.perf_counter() - began
    peak = status_kb("VmHWM")
    bp = int(sum(s.length for s in genome.stats))
    return {"shape": f"GRCh38-shaped FASTA, {bp / 1e6:.0f} Mbp{' (bgzip, Biopython writer)' if bgzip else ''}",
            "baseline_mb": baseline / 1024, "peak_mb": peak / 1024, "data_path_mb": (peak - baseline) / 1024,
            "scan_seconds": seconds, "intervals": len(genome.intervals)}


def run_loader(megabases: int, workers: int = 2, batches: int = 400) -> dict:
    """The real training loader (GenomeDataModule, 512 tokens, the recipe's length rule) on the scan's FASTA: the
    main process and each worker, after `batches` micro-batches of 64."""
    from dnabert.data.datamodule import GenomeDataModule

    fasta = grch38_shaped_fasta(megabases, Path(tempfile.gettempdir()))
    data = GenomeDataModule([{"name": "bench", "fasta": str(fasta)}], micro_batch_size=64, num_workers=workers,
                            cache_dir=Path(tempfile.gettempdir()) / "dnabert_bench_cache", pin_memory=False)
    iterator = iter(data.train_dataloader())
    for _ in range(batches):
        next(iterator)
    me = os.getpid()
    worker_pids = [int(pid) for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split()]
    figures = {"shape": f"GRCh38-shaped FASTA, {megabases} Mbp, real loader, {workers} workers"}
    for label, pid in [("main", me)] + [(f"worker{i}", pid) for i, pid in enumerate(worker_pids)]:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()

        def field(name: str, text: str = status) -> float:
            return int(re.search(rf"{name}:\s+(\d+)", text).group(1)) / 1024

        figures[f"{label}_peak_mb"] = field("VmHWM")
        figures[f"{label}_file_pages_mb"] = field("RssFile")
        figures[f"{label}_private_mb"] = field("Private_Clean", rollup) + field("Private_Dirty", rollup)
    # The workers ignore SIGTERM (they must outlive a SLURM signal until the step ends): end them here for good.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for pid in worker_pids:
        os.kill(pid, signal.SIGKILL)
    return figures


def scenario_figures(scenario: str, scan_mbp: int) -> dict:
    if scenario == "loader":
        return run_loader(scan_mbp)
    if scenario == "scan":
        return run_scan(scan_mbp, bgzip=False)
    if scenario == "scan-bgzip":
        return run_scan(scan_mbp, bgzip=True)
    return run_plan(scenario, 512 if scenario.startswith("resume") else int(scenario.rsplit("-", 1)[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS, action="append",
                        help="run these scenarios (default: all), each in its own subprocess")
    parser.add_argument("--scan-mbp", type=int, default=300, help="size of the FASTA the scan scenarios write")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(scenario_figures(args.scenario[0], args.scan_mbp)))
        return 0
    print(f"# data-path memory, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or 'cpu'}"
          f" x {os.cpu_count()} cores, python {platform.python_version()}")
    for scenario in args.scenario or SCENARIOS:
        command = [sys.executable, "-m", "benchmarks.memory", "--child", "--scenario", scenario,
                   "--scan-mbp", str(args.scan_mbp)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode:
            print(f"{scenario}: failed\n{result.stderr[-2000:]}")
            continue
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        shape = figures.pop("shape")
        shown = ", ".join(f"{key} {value:,.2f}" if isinstance(value, float) else f"{key} {value:,}"
                          for key, value in figures.items())
        print(f"{scenario:<16} {shape}\n{'':<16} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
