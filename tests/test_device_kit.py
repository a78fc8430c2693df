"""The device kit (benchmarks/gpu/): which wheels travel, the model cut into carry-sized parts and joined back,
and on_device.sh's steps that need no GPU (argument checks, joining the model)."""

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
    parts = kit.split(model, tmp_path / "parts", first=1000, later=4000)
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
    parts = kit.split(model, tmp_path / "parts", first=100, later=100)
    manifest = {"model": {"name": "m.gguf", "bytes": 300, "sha256": kit.sha256(model), "parts": parts}}
    (tmp_path / "parts" / "part-01").unlink()
    with pytest.raises(FileNotFoundError, match=r"part-01"):
        kit.assemble(tmp_path / "parts", manifest)
    (tmp_path / "parts" / "part-01").write_bytes(b"y" * 100)
    with pytest.raises(ValueError, match=r"part-01 .* corrupt"):
        kit.assemble(tmp_path / "parts", manifest)
    assert not (tmp_path / "parts" / "m.gguf").exists()


def test_split_refuses_a_part_size_that_cannot_hold_anything(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"first=-5"):
        kit.split(model, tmp_path / "parts", first=-5, later=10)


def _on_device(root: Path, *steps: str) -> subprocess.CompletedProcess[str]:
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
    parts = kit.split(source, staging, first=600, later=600)
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
