"""Wheels for an offline GPU node: exactly what pyproject.toml needs beyond the packages the node already has.

Compute nodes of many clusters reach no package index. Prepare the wheels on a machine that does (a login node),
for the node's Python and platform, given the node's package list; copy the git-ignored folder .gpu_wheels/ with
the checkout to the node, where `bash benchmarks/gpu_session.sh --install-wheels` installs them offline
(benchmarks/README.md, "GPU session").

    python -m benchmarks.prepare_gpu_wheels            # the example node (benchmarks/gpu_node_packages.txt)
    python -m benchmarks.prepare_gpu_wheels --node-packages node_packages.txt --python 3.11 --arch aarch64

`--node-packages` takes what `python3 -m pip list --format=freeze` prints on the node; `--python` and `--arch`
are the node's interpreter (X.Y or X.Y.Z) and machine (`uname -m`).

Steps, each rerun safely (idempotent: pip skips wheels already there, wheels no longer needed are removed):
1. The roots: pyproject.toml's dependencies the node lacks, pinned to the versions installed here (what the CPU
   tests ran against). antlr4-python3-runtime 4.9.3 (omegaconf's) exists only as a source archive: it is built
   here into a pure-Python wheel.
2. A dry-run resolution of the roots for the node's Python / manylinux platform gives every dependency; walking
   it from the roots and stopping at the node's packages gives the missing ones, which are downloaded as binary
   wheels. (Constraining it to the node's versions made pip backtrack through the node's own dependencies for
   minutes; step 3 checks those versions instead.)
3. Proof, offline: the node's packages are stood in for by empty wheels (name and version, no files, no
   dependencies), and `pip install --dry-run --no-index --find-links .gpu_wheels --find-links <stand-ins>` must
   resolve ALL of pyproject.toml's dependencies for the node's Python from those two folders, using every wheel
   prepared. The stand-ins have the listed versions; where the list gives none, the version the resolution in
   step 2 chose (else the one installed here) is assumed, and the node's preflight checks it.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu_wheels"
NODE_PACKAGES = ROOT / "benchmarks" / "gpu_node_packages.txt"
# glibc baselines that pip matches tag by tag (it does not infer older ones for a foreign platform)
MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014")


@dataclasses.dataclass(frozen=True)
class Target:
    """The GPU node's Python (X.Y or X.Y.Z) and machine: pip's platform flags and the dependency markers."""

    python: str = "3.12.3"
    arch: str = "x86_64"

    @property
    def python_short(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def abi(self) -> str:
        return "cp" + self.python_short.replace(".", "")

    def platforms(self) -> list[str]:
        legacy = ["manylinux1_x86_64"] if self.arch == "x86_64" else []
        return [*(f"{tag}_{self.arch}" for tag in MANYLINUX), *legacy, f"linux_{self.arch}"]

    def pip_args(self) -> list[str]:
        return ["--only-binary=:all:", "--python-version", self.python_short, "--implementation", "cp",
                "--abi", self.abi, "--abi", "abi3", "--abi", "none",
                *(arg for tag in [*self.platforms(), "any"] for arg in ("--platform", tag))]

    def preference(self, wheel_tags: frozenset[Tag]) -> int | None:
        """Rank of a wheel on the node, 0 best (pip prefers the most specific tags); None: pip would not take it."""
        version = tuple(int(part) for part in self.python_short.split("."))
        supported = [*cpython_tags(version, [self.abi, "abi3", "none"], self.platforms()),
                     *compatible_tags(version, self.abi, self.platforms())]
        return min((rank for rank, tag in enumerate(supported) if tag in wheel_tags), default=None)

    def markers(self) -> dict[str, str]:
        full = self.python if self.python.count(".") == 2 else f"{self.python}.0"
        return {**default_environment(), "python_version": self.python_short, "python_full_version": full,
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": self.arch,
                "implementation_name": "cpython", "platform_python_implementation": "CPython"}

    def __str__(self) -> str:
        return f"Python {self.python_short} Linux {self.arch}"


EXAMPLE_NODE = Target()  # the node of benchmarks/gpu_node_packages.txt: Python 3.12.3, x86-64
SOURCE_ONLY = {"antlr4-python3-runtime"}  # no wheel on PyPI: built here (pure Python)
MIB = 2**20


def node_packages(path: Path = NODE_PACKAGES) -> dict[str, str | None]:
    """The node's packages from `pip list --format=freeze` (or a bare name a line): canonical name -> version,
    None where unknown. `name @ url` lines (pip freeze's form for local installs) count with an unknown version;
    `-e` and option lines are skipped."""
    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.split(" @ ")[0].partition("==")
        packages[canonicalize_name(name.strip())] = version.strip() or None
    return packages


def project_requirements() -> list[Requirement]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return [Requirement(text) for text in tomllib.load(handle)["project"]["dependencies"]]


def applies(requirement: Requirement, extras: set[str], environment: dict[str, str]) -> bool:
    """Whether a dependency line applies on a Python (its marker environment), for a package asked with these extras."""
    marker = requirement.marker
    return marker is None or any(marker.evaluate({**environment, "extra": extra}) for extra in extras | {""})


def pip(*args: str, capture: bool = False) -> str:
    result = subprocess.run([sys.executable, "-m", "pip", *args], cwd=ROOT, text=True,
                            capture_output=capture, check=False)
    if result.returncode:
        sys.exit(f"pip {' '.join(args[:2])} failed (exit {result.returncode}):\n{result.stderr if capture else ''}")
    return result.stdout


def dry_run(requirements: list[str], *options: str, target: Target = EXAMPLE_NODE) -> dict[str, dict]:
    """pip's resolution for the node's Python and platform: canonical name -> report metadata."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
            "--target", str(Path(scratch) / "target"), "--report", str(report), *target.pip_args(), *options,
            *requirements, capture=True)
        resolved = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): {**item["metadata"], "url": item["download_info"]["url"]}
            for item in resolved}


def missing_packages(roots: list[Requirement], resolved: dict[str, dict], node: dict,
                     target: Target = EXAMPLE_NODE) -> dict[str, str]:
    """Walk the resolution from the roots, stopping at the node's packages: name -> version to bring."""
    wanted: dict[str, str] = {}
    queue = [(canonicalize_name(root.name), set(root.extras)) for root in roots]
    while queue:
        name, extras = queue.pop()
        if name in node or name in wanted:
            continue
        wanted[name] = resolved[name]["version"]
        for line in resolved[name].get("requires_dist", []):
            requirement = Requirement(line)
            if applies(requirement, extras, target.markers()):
                queue.append((canonicalize_name(requirement.name), set(requirement.extras)))
    return wanted


def stand_in_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel that tells pip `name==version` is installed and needs nothing."""
    stem = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: dnabert\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
        f"{len(text.encode())}\n" for path, text in files.items()) + f"{stem}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
        for path, text in {**files, f"{stem}.dist-info/RECORD": record}.items():
            wheel.writestr(path, text)


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def surplus_wheels(folder: Path, wanted: dict[str, str], target: Target) -> list[Path]:
    """Every wheel but the one pip on the node would take for each wanted package and version: a stale version,
    or a second wheel of a package (left by a run for another node), stops the node's install."""
    best: dict[str, tuple[int, Path]] = {}
    surplus = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
        rank = target.preference(wheel_tags)
        not_for_the_node = name not in wanted or Version(wanted[name]) != version or rank is None
        if not_for_the_node or (name in best and best[name][0] <= rank):
            surplus.append(wheel)
        else:
            if name in best:
                surplus.append(best[name][1])
            best[name] = (rank, wheel)
    return surplus


def prove_complete(node: dict[str, str | None], resolved: dict[str, dict], wanted: dict[str, str],
                   target: Target) -> list[str]:
    """Resolve all of pyproject.toml offline from the folder plus the node's stand-ins; return what it used."""
    with tempfile.TemporaryDirectory() as scratch:
        stand_ins = Path(scratch)
        for name, version in node.items():
            assumed = version or resolved.get(name, {}).get("version") or installed_version(name) or "0"
            stand_in_wheel(stand_ins, name, assumed)
        used = dry_run([str(requirement) for requirement in project_requirements()], "--no-index",
                       "--isolated", "--find-links", str(WHEELS), "--find-links", str(stand_ins), target=target)
    from_folder = {name for name, item in used.items() if Path(item["url"]).parent.name == WHEELS.name}
    unused = set(wanted) - from_folder
    if unused:
        sys.exit(f"prepared but not needed: {sorted(unused)}")
    return sorted(f"{item['name']}=={item['version']}" for name, item in used.items() if name in from_folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-packages", type=Path, default=NODE_PACKAGES,
                        help="what `python3 -m pip list --format=freeze` prints on the GPU node "
                             f"(default: the example node, {NODE_PACKAGES.relative_to(ROOT)})")
    parser.add_argument("--python", default=EXAMPLE_NODE.python, help="the node's Python, X.Y or X.Y.Z")
    parser.add_argument("--arch", default=EXAMPLE_NODE.arch, help="the node's machine (uname -m): x86_64, aarch64")
    parser.add_argument("--check-only", action="store_true",
                        help="change nothing in the folder: resolve (step 2) and prove it complete (step 3)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+(\.\d+)?", args.python):
        sys.exit(f"--python {args.python}: give the node's Python as X.Y or X.Y.Z (python3 --version there), e.g. 3.11")
    target = Target(args.python, args.arch)
    WHEELS.mkdir(exist_ok=True)
    if subprocess.run(["git", "check-ignore", "-q", str(WHEELS)], cwd=ROOT, check=False).returncode:
        sys.exit(f"{WHEELS.name}/ is not git-ignored: add it to .gitignore (it is copied to the node, not committed)")
    if not args.node_packages.is_file():
        sys.exit(f"--node-packages {args.node_packages}: no such file; on the GPU node run "
                 "`python3 -m pip list --format=freeze > node_packages.txt` and pass that file")
    node = node_packages(args.node_packages)
    roots = []
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        if name not in node:
            version = installed_version(name)
            if version is None:
                sys.exit(f"{name} is not installed here: install the project's dependencies first")
            roots.append(Requirement(f"{name}=={Version(version).public}"))  # 2.13.0+cpu: PyPI has 2.13.0
    if not args.check_only:
        for name in SOURCE_ONLY:
            version = installed_version(name)
            if not list(WHEELS.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
                pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(WHEELS), f"{name}=={version}")
    resolved = dry_run([str(root) for root in roots], "--find-links", str(WHEELS), target=target)
    wanted = missing_packages(roots, resolved, node, target)
    if not args.check_only:
        downloads = [f"{name}=={version}" for name, version in wanted.items() if name not in SOURCE_ONLY]
        if downloads:
            pip("download", "--no-deps", "--quiet", "--dest", str(WHEELS), *target.pip_args(), *downloads)
        for wheel in surplus_wheels(WHEELS, wanted, target):
            print(f"removing {wheel.name}: not the wheel {target} needs")
            wheel.unlink()
    used = prove_complete(node, resolved, wanted, target)
    size = sum(wheel.stat().st_size for wheel in WHEELS.glob("*.whl"))
    print(f"{len(used)} wheels in {WHEELS.relative_to(ROOT)}/, {size / MIB:.1f} MiB: {', '.join(used)}")
    print(f"complete: pyproject.toml resolves for {target} from the node's packages ({args.node_packages}) "
          f"plus {WHEELS.relative_to(ROOT)}/ alone (pip --dry-run --no-index)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
