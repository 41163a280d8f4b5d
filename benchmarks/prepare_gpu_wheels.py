"""Wheels for the GPU device's image: exactly what pyproject.toml needs beyond the image, for Python 3.12 x86-64.

The device machine reaches no package index, and its image (benchmarks/gpu_image.txt) lacks hydra-core, omegaconf,
pyfaidx, datasets, wandb, biopython, submitit and some of their dependencies. They travel as wheels in the
git-ignored folder .gpu_wheels/ (named in the device call's `carry`), so a lease is never spent on an import error.

    python -m benchmarks.prepare_gpu_wheels            # download (PyPI) into .gpu_wheels/, prove it complete

Steps, each rerun safely (idempotent: pip skips wheels already there, wheels no longer needed are removed):
1. The carried roots: pyproject.toml's dependencies not in the image, pinned to the versions installed here (what
   the CPU tests ran against). antlr4-python3-runtime 4.9.3 (omegaconf's) exists only as a source archive: it is
   built here into a pure-Python wheel.
2. A dry-run resolution of the roots for Python 3.12 / manylinux x86-64 against the index gives every
   dependency; walking it from the roots and stopping at image packages gives the missing ones, which are
   downloaded as binary wheels. (Constraining it to the image's versions made pip backtrack through the image's
   own dependencies for minutes; step 3 checks those versions instead.)
3. Proof, offline: the image is stood in for by empty wheels (name and version, no files, no dependencies), and
   `pip install --dry-run --no-index --find-links .gpu_wheels --find-links <stand-ins>` must resolve ALL of
   pyproject.toml's dependencies for Python 3.12 from those two folders, using every carried wheel. The stand-ins
   carry the image's known versions (gpu_image.txt); where the image's version is unknown, the version the
   resolution in step 2 chose (else the one installed here) is assumed, and the device preflight checks it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu_wheels"
IMAGE_LIST = ROOT / "benchmarks" / "gpu_image.txt"
# The device README's flags for its platform: pip matches each manylinux tag exactly.
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
          "--abi", "abi3", "--abi", "none"] + [
    arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64", "any")
    for arg in ("--platform", tag)
]
# Python 3.12 on Linux x86-64, for the markers of dependencies (e.g. `; python_version < "3.11"`).
TARGET_MARKERS = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython"}
SOURCE_ONLY = {"antlr4-python3-runtime"}  # no wheel on PyPI: built here (pure Python)
MIB = 2**20


def image_packages(path: Path = IMAGE_LIST) -> dict[str, str | None]:
    """The image's packages: canonical name -> version where known, else None."""
    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[canonicalize_name(name)] = version or None
    return packages


def project_requirements() -> list[Requirement]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return [Requirement(text) for text in tomllib.load(handle)["project"]["dependencies"]]


def applies(requirement: Requirement, extras: set[str], environment: dict[str, str] = TARGET_MARKERS) -> bool:
    """Whether a dependency line applies on a Python (default: the device's), for a package asked with these extras."""
    marker = requirement.marker
    return marker is None or any(marker.evaluate({**environment, "extra": extra}) for extra in extras | {""})


def pip(*args: str, capture: bool = False) -> str:
    result = subprocess.run([sys.executable, "-m", "pip", *args], cwd=ROOT, text=True,
                            capture_output=capture, check=False)
    if result.returncode:
        sys.exit(f"pip {' '.join(args[:2])} failed (exit {result.returncode}):\n{result.stderr if capture else ''}")
    return result.stdout


def dry_run(requirements: list[str], *options: str) -> dict[str, dict]:
    """pip's resolution for the device's Python and platform: canonical name -> report metadata."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
            "--target", str(Path(scratch) / "target"), "--report", str(report), *TARGET, *options, *requirements,
            capture=True)
        resolved = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): {**item["metadata"], "url": item["download_info"]["url"]}
            for item in resolved}


def missing_packages(roots: list[Requirement], resolved: dict[str, dict], image: dict) -> dict[str, str]:
    """Walk the resolution from the roots, stopping at the image's packages: name -> version to carry."""
    wanted: dict[str, str] = {}
    queue = [(canonicalize_name(root.name), set(root.extras)) for root in roots]
    while queue:
        name, extras = queue.pop()
        if name in image or name in wanted:
            continue
        wanted[name] = resolved[name]["version"]
        for line in resolved[name].get("requires_dist", []):
            requirement = Requirement(line)
            if applies(requirement, extras):
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


def prove_complete(image: dict[str, str | None], resolved: dict[str, dict], carried: dict[str, str]) -> list[str]:
    """Resolve all of pyproject.toml offline from the folder plus the image's stand-ins; return what it used."""
    with tempfile.TemporaryDirectory() as scratch:
        stand_ins = Path(scratch)
        for name, version in image.items():
            assumed = version or resolved.get(name, {}).get("version") or installed_version(name) or "0"
            stand_in_wheel(stand_ins, name, assumed)
        used = dry_run([str(requirement) for requirement in project_requirements()], "--no-index",
                       "--isolated", "--find-links", str(WHEELS), "--find-links", str(stand_ins))
    from_folder = {name for name, item in used.items() if Path(item["url"]).parent.name == WHEELS.name}
    unused = set(carried) - from_folder
    if unused:
        sys.exit(f"carried but not needed: {sorted(unused)}")
    return sorted(f"{item['name']}=={item['version']}" for name, item in used.items() if name in from_folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-only", action="store_true",
                        help="change nothing in the folder: resolve (step 2) and prove it complete (step 3)")
    args = parser.parse_args(argv)
    WHEELS.mkdir(exist_ok=True)
    if subprocess.run(["git", "check-ignore", "-q", str(WHEELS)], cwd=ROOT, check=False).returncode:
        sys.exit(f"{WHEELS.name}/ is not git-ignored: add it to .gitignore (it travels through `carry`, not git)")
    image = image_packages()
    roots = []
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        if name not in image:
            version = installed_version(name)
            if version is None:
                sys.exit(f"{name} is not installed here: install the project's dependencies first")
            roots.append(Requirement(f"{name}=={version}"))
    if not args.check_only:
        for name in SOURCE_ONLY:
            version = installed_version(name)
            if not list(WHEELS.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
                pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(WHEELS), f"{name}=={version}")
    resolved = dry_run([str(root) for root in roots], "--find-links", str(WHEELS))
    carried = missing_packages(roots, resolved, image)
    if not args.check_only:
        downloads = [f"{name}=={version}" for name, version in carried.items() if name not in SOURCE_ONLY]
        pip("download", "--no-deps", "--quiet", "--dest", str(WHEELS), *TARGET, *downloads)
        for wheel in WHEELS.glob("*.whl"):  # one version of each, nothing stale: two versions stop the install there
            name, version = wheel.name.split("-")[:2]
            if carried.get(canonicalize_name(name)) != version.replace("_", "-"):
                print(f"removing {wheel.name}: no longer needed")
                wheel.unlink()
    used = prove_complete(image, resolved, carried)
    size = sum(wheel.stat().st_size for wheel in WHEELS.glob("*.whl"))
    print(f"{len(used)} wheels in {WHEELS.relative_to(ROOT)}/, {size / MIB:.1f} MiB: {', '.join(used)}")
    print("complete: pyproject.toml resolves for Python 3.12 x86-64 from the image (benchmarks/gpu_image.txt) "
          f"plus {WHEELS.relative_to(ROOT)}/ alone (pip --dry-run --no-index)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
