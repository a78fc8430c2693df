"""API meta-tests: the public surface, lazy extras, and a torch-only import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import neftune
import neftune._lazy


def test_all_is_sorted_and_every_name_imports() -> None:
    assert neftune.__all__ == sorted(neftune.__all__)
    for name in neftune.__all__:
        assert getattr(neftune, name) is not None


def test_lazy_names_are_public_and_documented_in_all() -> None:
    for name in neftune._lazy.LAZY_NAMES:
        assert name in neftune.__all__
        assert name in dir(neftune)


def test_import_needs_only_torch() -> None:
    code = (
        "import sys, neftune; "
        "heavy = sorted(m for m in ('transformers', 'trl', 'peft', 'datasets', 'accelerate') if m in sys.modules); "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(neftune._lazy.LAZY_NAMES, "Imaginary", ("neftune_test_missing_module", "trl"))
    expected = r'neftune\.Imaginary needs the \'trl\' extra .* pip install "neftune\[trl\]"'
    with pytest.raises(ImportError, match=expected):
        neftune.Imaginary  # noqa: B018


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        neftune.nope  # noqa: B018
