"""The device kit (benchmarks/gpu/): which wheels travel and whether pip there takes them, the model cut into
carry-sized parts and joined back, each call's size against the tree, and on_device.sh's steps with a stand-in
torch, sweep and benchmark in a throwaway checkout (installing, failing without CUDA, what comes back)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

packaging_requirements = pytest.importorskip("packaging.requirements")
Requirement = packaging_requirements.Requirement

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"


def _kit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("device_kit", GPU / "kit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kit = _kit()


def test_device_package_list_parses_names_and_versions() -> None:
    packages = kit.read_device_packages(GPU / "device_packages.txt")
    assert packages["torch"] == "2.11.0"
    assert packages["transformers"] == "5.17.0"
    assert packages["huggingface-hub"] == "1.33.0"
    assert packages["pyarrow"] is None
    assert "trl" not in packages and "datasets" not in packages and "rouge-score" not in packages
    assert all(name == kit.canonical(name) for name in packages)


def _requirements(*lines: str) -> dict[str, tuple[str, list[object]]]:
    found: dict[str, tuple[str, list[object]]] = {}
    for line in lines:
        requirement = Requirement(line)
        found.setdefault(kit.canonical(requirement.name), ("9.9.9", []))[1].append(requirement)
    return found


def test_choose_carried_rules() -> None:
    device = {"known-ok": "1.5", "known-old": "1.0", "pinned": "2.0", "same-pin": "3.0", "bounded": None, "open": None}
    requirements = _requirements(
        "absent>=1",
        "known-ok>=1.2",
        "known-old>=1.2",
        "pinned",
        "same-pin",
        "bounded<3,>=1",
        "open>=1",
        "torch>=2.4",
        "nvidia-nccl-cu13",
        "triton",
        "neftune",
    )
    pins = {"pinned": "2.5", "same-pin": "3.0"}
    carried, unverified = kit.choose_carried(requirements, device, pins)
    assert carried == {"absent": "9.9.9", "known-old": "9.9.9", "pinned": "2.5", "bounded": "9.9.9"}
    assert unverified == ["open"]


def test_plan_carries_the_pinned_and_the_missing_and_walks_only_what_travels() -> None:
    pytest.importorskip("trl")
    pytest.importorskip("rouge_score")
    device = kit.read_device_packages(GPU / "device_packages.txt")
    pins = {n: v for n, v in kit.read_pins(ROOT / "constraints.txt").items() if n not in kit.NEVER_CARRY}
    carried, unverified = kit.plan_carried(kit.ROOT_REQUIREMENTS, device, pins)
    # constraints.txt's versions, where the image has another (accelerate 1.15.0 is there already)
    assert carried["transformers"] == pins["transformers"] and carried["trl"] == pins["trl"]
    assert carried["datasets"] == pins["datasets"] and carried["peft"] == pins["peft"]
    assert "accelerate" not in carried
    # missing from the image: the eval extra's and what carried packages need
    for name in ("rouge-score", "nltk", "gguf", "dill", "multiprocess"):
        assert name in carried, name
    assert not {"torch", "triton", "numpy"} & set(carried)
    assert not [name for name in carried if name.startswith("nvidia-")]
    # huggingface-hub stays the image's (1.33.0 meets transformers' >=1.31), so its own requirements here
    # (this environment may hold a newer hub with other dependencies) are not followed
    assert "huggingface-hub" not in carried and "httpx2" not in carried
    assert set(carried).isdisjoint(unverified)


def test_split_and_assemble_round_trip(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    payload = bytes(range(256)) * 41 + b"tail"
    model.write_bytes(payload)
    parts = kit.split(model, tmp_path / "parts", [1000, 4000, 4000, 1500])
    assert [p["bytes"] for p in parts] == [1000, 4000, 4000, 1500]
    assert sum(p["bytes"] for p in parts) == len(payload)
    manifest = {
        "model": {
            "name": "model.gguf",
            "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "parts": parts,
        }
    }
    joined = kit.assemble(tmp_path / "parts", manifest)
    assert joined.read_bytes() == payload
    assert kit.assemble(tmp_path / "parts", manifest) == joined  # already joined: kept


def test_assemble_refuses_missing_and_corrupt_parts(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"x" * 300)
    parts = kit.split(model, tmp_path / "parts", [100, 100, 100])
    manifest = {"model": {"name": "m.gguf", "bytes": 300, "sha256": kit.sha256(model), "parts": parts}}
    (tmp_path / "parts" / "part-01").unlink()
    with pytest.raises(FileNotFoundError, match=r"part-01"):
        kit.assemble(tmp_path / "parts", manifest)
    (tmp_path / "parts" / "part-01").write_bytes(b"y" * 100)
    with pytest.raises(ValueError, match=r"part-01 .* corrupt"):
        kit.assemble(tmp_path / "parts", manifest)
    assert not (tmp_path / "parts" / "m.gguf").exists()


def test_split_refuses_sizes_that_do_not_cut_the_file_exactly(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match=r"\[-5, 15\] must be positive"):
        kit.split(model, tmp_path / "parts", [-5, 15])
    with pytest.raises(ValueError, match=r"add up to 10 bytes"):
        kit.split(model, tmp_path / "parts", [4, 4])  # 2 bytes of the model would be lost
    assert not (tmp_path / "parts").exists()


def _on_device(root: Path, *steps: str, **env: str) -> subprocess.CompletedProcess[str]:
    """on_device.sh STEPS in the checkout `root`, its /tmp folders inside it; `env` adds or overrides variables."""
    python = Path(sys.executable).parent
    return subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu" / "on_device.sh"), *steps],
        cwd=root,
        capture_output=True,
        text=True,
        env={
            "PATH": f"{python}:/usr/bin:/bin",
            "OUT": str(root / "out"),
            "HOME": str(root),
            "NEFTUNE_SITE": str(root / "site"),
            "NEFTUNE_PARTS": str(root / "parts"),
            **env,
        },
        timeout=120,
    )


def _fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "benchmarks" / "gpu").mkdir(parents=True)
    for name in ("kit.py", "on_device.sh"):
        shutil.copy(GPU / name, root / "benchmarks" / "gpu" / name)
    return root


def test_on_device_refuses_unknown_steps_and_a_missing_kit(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path)
    unknown = _on_device(root, "tset")
    assert unknown.returncode == 2
    assert "unknown step 'tset'" in unknown.stderr
    missing = _on_device(root, "setup", "test")
    assert missing.returncode == 2
    assert "no .device/manifest.json" in missing.stdout
    assert "=== test" not in missing.stdout  # later steps need setup


def test_on_device_model_step_joins_parts_over_calls(tmp_path: Path) -> None:
    """Part 0 comes with the first call, part 1 with the next; the joined file lands in .gemma/."""
    root = _fake_checkout(tmp_path)
    payload = b"GGUF" + bytes(range(200)) * 5
    source = tmp_path / "SmolLM2.gguf"
    source.write_bytes(payload)
    staging = tmp_path / "kit-parts"
    parts = kit.split(source, staging, [600, len(payload) - 600])
    assert len(parts) == 2
    manifest = {"model": {"name": "SmolLM2.gguf", "bytes": len(payload), "sha256": kit.sha256(source), "parts": parts}}
    (root / ".device" / "model").mkdir(parents=True)
    (root / ".device" / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(staging / "part-00", root / ".device" / "model" / "part-00")
    first = _on_device(root, "model")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 of 2 parts here" in first.stdout
    assert not (root / ".gemma" / "SmolLM2.gguf").exists()
    (root / ".device" / "model" / "part-00").unlink()  # the next call carries only its own part
    shutil.copy(staging / "part-01", root / ".device" / "model" / "part-01")
    second = _on_device(root, "model")
    assert second.returncode == 0, second.stdout + second.stderr
    assert (root / ".gemma" / "SmolLM2.gguf").read_bytes() == payload
    replicate = _on_device(root, "replicate")  # this model is not SmolLM2-135M-Instruct.Q4_1.gguf
    assert replicate.returncode == 2
    assert "the model is not joined yet" in replicate.stdout


@pytest.mark.parametrize("script", ["benchmarks/gpu/on_device.sh", "benchmarks/quality/run_gpu.sh"])
def test_device_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_run_gpu_refuses_an_unknown_model(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "quality" / "run_gpu.sh"), str(tmp_path / "study")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GGUFS": "Llama-7B", "MODELS": str(tmp_path / "models")},
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown model Llama-7B in GGUFS" in result.stderr


MiB = 2**20


def test_part_sizes_put_the_smaller_part_last_and_fill_the_others() -> None:
    assert kit.part_sizes(100, capacity=40, last_capacity=25) == [35, 40, 25]
    assert kit.part_sizes(100, capacity=40, last_capacity=0) == [20, 40, 40]  # no room beside the wheels
    assert kit.part_sizes(10, capacity=40, last_capacity=25) == [10]
    with pytest.raises(ValueError, match=r"no room for a model part"):
        kit.part_sizes(100, capacity=0, last_capacity=0)


def _call_bytes(sizes: list[int], calls: list[list[str]], tree: int, with_wheels: int) -> list[int]:
    parts = {f".device/model/part-{i:02d}": size for i, size in enumerate(sizes)}
    return [
        tree + sum(parts.get(p, 0) for p in carry) + (with_wheels if ".device/whl" in carry else 0) for carry in calls
    ]


def test_plan_calls_today_two_calls_the_last_with_the_wheels() -> None:
    """The kit as built on 2026-12-02: a 98,362,432-byte GGUF, 2.2 MB of tree, 20.7 MB of wheels and data."""
    model, tree, with_wheels = 98_362_432, 2_205_245, 20_684_065
    sizes, calls = kit.plan_calls(model, tree, with_wheels)
    assert sum(sizes) == model and len(sizes) == 2
    assert calls == [
        [".device/manifest.json", ".device/model/part-00"],
        [".device/manifest.json", ".device/whl", ".device/data", ".device/model/part-01"],
    ]
    assert sizes[1] == kit.CARRY_LIMIT - kit.HEADROOM - tree - with_wheels  # the wheels' call filled to the brim
    assert all(total <= kit.CARRY_LIMIT - kit.HEADROOM for total in _call_bytes(sizes, calls, tree, with_wheels))


def test_plan_calls_when_the_committed_study_has_grown_the_tree() -> None:
    """A replication's cells committed (say 30 MiB of tree): more, smaller parts, each call still under 64 MiB."""
    model, tree, with_wheels = 98_362_432, 30 * MiB, 20_684_065
    sizes, calls = kit.plan_calls(model, tree, with_wheels)
    assert len(calls) == 4 and sum(sizes) == model
    assert calls[-1][:3] == [".device/manifest.json", ".device/whl", ".device/data"]
    assert all(total <= kit.CARRY_LIMIT - kit.HEADROOM for total in _call_bytes(sizes, calls, tree, with_wheels))
    # exactly no room beside the wheels: they travel in a last call of their own
    sizes, calls = kit.plan_calls(model, kit.CARRY_LIMIT - kit.HEADROOM - with_wheels, with_wheels)
    assert calls[-1] == [".device/manifest.json", ".device/whl", ".device/data"]
    with pytest.raises(SystemExit, match=r"leave no room under 60 MiB"):
        kit.plan_calls(model, 50 * MiB, with_wheels)


def test_unfit_wheels_names_what_pip_on_cpython_312_x86_64_refuses() -> None:
    fit = [
        "trl-1.16.0-py3-none-any.whl",
        "multiprocess-0.70.19-py312-none-any.whl",
        "defusedxml-0.7.1-py2.py3-none-any.whl",
        "xxhash-3.6.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
        "cryptography-46.0.0-cp38-abi3-manylinux_2_28_x86_64.whl",
    ]
    unfit = [
        "regex-2026.1.1-cp311-cp311-manylinux_2_17_x86_64.whl",  # `pip wheel` here, on the venv's Python 3.11
        "regex-2026.1.1-cp312-cp312-manylinux_2_34_x86_64.whl",  # newer glibc than the tags asked for
        "regex-2026.1.1-cp312-cp312-manylinux_2_17_aarch64.whl",
        "regex-2026.1.1-cp312-cp312-macosx_11_0_arm64.whl",
        "tomli-2.0.0-py311-none-any.whl",
    ]
    assert kit.unfit_wheels(fit + unfit) == unfit


def _kit_root(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    root = tmp_path / "repo"
    (root / "benchmarks" / "gpu").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "benchmarks/gpu/device_packages.txt"):
        shutil.copy(ROOT / name, root / name)
    (root / ".device" / "model").mkdir(parents=True)
    (root / ".device" / "whl").mkdir()
    (root / ".device" / "model" / "part-00").write_bytes(b"p" * 1000)
    (root / ".device" / "model" / "part-01").write_bytes(b"q" * 500)
    (root / ".device" / "whl" / "a-1-py3-none-any.whl").write_bytes(b"w" * 300)
    calls = [
        [".device/manifest.json", ".device/model/part-00"],
        [".device/manifest.json", ".device/whl", ".device/model/part-01"],
    ]
    manifest: dict[str, object] = {"inputs": kit.inputs_digest(root), "calls": calls}
    (root / ".device" / "manifest.json").write_text(json.dumps(manifest))
    return root, manifest


def test_stale_kit_is_caught_before_the_calls(tmp_path: Path) -> None:
    root, manifest = _kit_root(tmp_path)
    assert kit.stale(manifest, root, tree=1000) == []
    manifest_bytes = (root / ".device" / "manifest.json").stat().st_size
    # the tree grew (results committed since the build): call 1 is one byte over
    grown = kit.CARRY_LIMIT - 1000 - manifest_bytes + 1
    assert kit.stale(manifest, root, tree=grown) == [
        f"call 1: {(grown + 1000 + manifest_bytes) / MiB:.1f} MiB with the tree, over 64"
    ]
    (root / ".device" / "model" / "part-01").unlink()
    assert kit.stale(manifest, root, tree=1000) == ["call 2: .device/model/part-01 missing"]
    (root / ".device" / "model" / "part-01").write_bytes(b"q")
    with (root / "constraints.txt").open("a") as handle:
        handle.write("trl==9.0.0\n")
    assert kit.stale(manifest, root, tree=1000) == [
        "pyproject.toml, constraints.txt or device_packages.txt changed since the kit was built"
    ]


def test_merge_missing_copies_only_what_the_destination_lacks(tmp_path: Path) -> None:
    kept, study = tmp_path / "kept", tmp_path / "study"
    (kept / "m" / "cells").mkdir(parents=True)
    (kept / "m" / "cells" / "a-seed0.json").write_text("kept a")
    (kept / "m" / "cells" / "b-seed0.json").write_text("kept b")
    (study / "m" / "cells").mkdir(parents=True)
    (study / "m" / "cells" / "a-seed0.json").write_text("tree a")
    assert kit.merge_missing(kept, study) == ["m/cells/b-seed0.json"]
    assert (study / "m" / "cells" / "a-seed0.json").read_text() == "tree a"
    assert (study / "m" / "cells" / "b-seed0.json").read_text() == "kept b"
    assert kit.merge_missing(tmp_path / "nothing-kept-yet", study) == []


def _fake_torch(root: Path, cuda: bool) -> None:
    """A stand-in `torch` under the checkout's src/ (on_device.sh puts src/ on PYTHONPATH): says whether CUDA is
    there, and fails the setup's import line fast either way (it has no __version__)."""
    (root / "src" / "torch").mkdir(parents=True)
    (root / "src" / "torch" / "__init__.py").write_text(
        f"class cuda:\n    is_available = staticmethod(lambda: {cuda})\n"
    )


def _wheel(directory: Path, name: str, version: str) -> str:
    """A minimal pure-Python wheel, for pip to install without an index."""
    import zipfile

    filename = f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / filename, "w") as archive:
        archive.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(
            f"{info}/RECORD", f"{name}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n"
        )
    return filename


def _manifest(root: Path, wheels: list[str], parts: list[dict[str, object]] | None = None) -> None:
    model = {"name": "m.gguf", "bytes": 0, "sha256": "", "parts": parts or []}
    (root / ".device").mkdir(exist_ok=True)
    (root / ".device" / "manifest.json").write_text(json.dumps({"wheels": wheels, "carried": {}, "model": model}))


def test_on_device_setup_installs_once_per_kit_and_names_a_fresh_machine(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path)
    _fake_torch(root, cuda=False)
    first = _wheel(root / ".device" / "whl", "kitprobe", "1.0")
    _manifest(root, [first])
    installed = _on_device(root, "setup", "test")
    assert (root / "site" / "kitprobe" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    assert (root / "site" / ".installed").read_text() == first + "\n"
    # no CUDA (here: the stand-in torch): setup stops the run, the tests would all skip and "pass"
    assert installed.returncode == 2
    assert "setup: import or CUDA failed" in installed.stdout and "=== test" not in installed.stdout
    # the next call to the same machine carries no wheels: installed already, nothing to say about them
    shutil.rmtree(root / ".device" / "whl")
    warm = _on_device(root, "setup")
    assert "is not here" not in warm.stdout and "setup: import or CUDA failed" in warm.stdout
    # a rebuilt kit (another wheel) on that machine, without its wheels: a fresh install is needed and impossible
    _manifest(root, ["kitprobe-2.0-py3-none-any.whl"])
    rebuilt = _on_device(root, "setup", "test")
    assert rebuilt.returncode == 2
    assert ".device/whl/kitprobe-2.0-py3-none-any.whl is not here" in rebuilt.stdout
    assert "=== test" not in rebuilt.stdout
    # with it: reinstalled, 1.0 gone
    second = _wheel(root / ".device" / "whl", "kitprobe", "2.0")
    _on_device(root, "setup")
    assert (root / "site" / "kitprobe" / "__init__.py").read_text() == "VERSION = '2.0'\n"
    assert (root / "site" / ".installed").read_text() == second + "\n"


def test_on_device_test_step_refuses_to_pass_without_cuda_and_a_bad_model_stops_nothing(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path)
    _fake_torch(root, cuda=False)
    payload = b"GGUF" * 100
    source = tmp_path / "m.gguf"
    source.write_bytes(payload)
    parts = kit.split(source, root / ".device" / "model", [400])
    parts[0]["sha256"] = "0" * 64  # corrupt in transit
    _manifest(root, [], parts)
    result = _on_device(root, "model", "test")
    assert "part-00 in" in result.stderr and "corrupt" in result.stderr
    assert "=== model: exit 1" in result.stdout
    assert "=== test: exit 2" in result.stdout  # ran after the failed model step, and did not pass
    assert "test: torch sees no CUDA GPU" in result.stderr
    assert not (root / "out" / "gpu-test.log").exists()  # pytest never started
    assert result.returncode == 2


def _fake_gpu_checkout(tmp_path: Path) -> Path:
    """A checkout whose `torch` sees CUDA, whose `neftune sweep` writes one new cell and records its arguments, and
    whose benchmark writes its result files and the README block."""
    root = _fake_checkout(tmp_path)
    (root / "benchmarks" / "quality").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "quality" / "run_gpu.sh", root / "benchmarks" / "quality" / "run_gpu.sh")
    _fake_torch(root, cuda=True)
    (root / "src" / "neftune").mkdir(parents=True)
    (root / "src" / "neftune" / "__init__.py").write_text("")
    (root / "src" / "neftune" / "__main__.py").write_text(
        "import json, sys\nfrom pathlib import Path\n"
        "args = sys.argv[1:]\nout = Path(args[args.index('--output-dir') + 1])\n"
        "(out / 'cells').mkdir(parents=True, exist_ok=True)\n"
        "scaling = args[args.index('--scalings') + 1]\n"
        "(out / 'cells' / f'new-{scaling}-seed0.json').write_text('{}')\n"
        "(out / 'config.json').write_text('{}')\n"
        "Path('sweep-args.json').write_text(json.dumps(args))\n"
    )
    (root / "benchmarks" / "overhead.py").write_text(
        "from pathlib import Path\nresults = Path('benchmarks/results')\nresults.mkdir(parents=True, exist_ok=True)\n"
        "(results / 'overhead_cuda.md').write_text('| gpu table |\\n')\n"
        "readme = Path('README.md')\nreadme.write_text(readme.read_text().replace('old block', '| gpu table |'))\n"
    )
    (root / "README.md").write_text("intro\nold block\n")
    (root / ".gemma").mkdir()
    (root / ".gemma" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    return root


def _members(archive: Path) -> list[str]:
    import tarfile

    with tarfile.open(archive) as handle:
        return sorted(member.name for member in handle.getmembers() if member.isfile())


def test_on_device_bench_returns_the_results_not_the_readme(tmp_path: Path) -> None:
    root = _fake_gpu_checkout(tmp_path)
    result = _on_device(root, "bench")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _members(root / "out" / "bench.tar.gz") == ["benchmarks/results/overhead_cuda.md"]


def test_on_device_replicate_keeps_cells_across_calls_and_returns_only_new_files(tmp_path: Path) -> None:
    root = _fake_gpu_checkout(tmp_path)
    study = root / "benchmarks" / "quality" / "gpu-replication" / "SmolLM2-135M-Instruct"
    (study / "cells").mkdir(parents=True)
    (study / "cells" / "committed-seed0.json").write_text("{}")  # in the tree as carried
    kept = tmp_path / "kept"  # what an earlier call to this machine finished, lost from the tree copy
    (kept / "SmolLM2-135M-Instruct" / "cells").mkdir(parents=True)
    (kept / "SmolLM2-135M-Instruct" / "cells" / "earlier-seed0.json").write_text("{}")
    result = _on_device(root, "replicate", NEFTUNE_STUDY=str(kept), BUDGET="60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SmolLM2-135M-Instruct 4 of 25 cells" in result.stdout
    prefix = "benchmarks/quality/gpu-replication/SmolLM2-135M-Instruct/"
    assert _members(root / "out" / "replication.tar.gz") == [
        prefix + name
        for name in [
            "cells/earlier-seed0.json",
            "cells/new-padded-seed0.json",
            "cells/new-per_sequence-seed0.json",
            "config.json",
        ]
    ]
    assert sorted(p.name for p in (kept / "SmolLM2-135M-Instruct" / "cells").iterdir()) == [
        "committed-seed0.json",
        "earlier-seed0.json",
        "new-padded-seed0.json",
        "new-per_sequence-seed0.json",
    ]
    # the same --model and --dataset as run_gpu.sh's defaults on any other machine: the study resumes anywhere
    arguments = json.loads((root / "sweep-args.json").read_text())
    assert arguments[arguments.index("--model") + 1] == ".gemma/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert arguments[arguments.index("--dataset") + 1] == "../shared/data/dolly/dolly-6400.jsonl"
