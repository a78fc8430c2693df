import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Triton reads TRITON_INTERPRET when it is first imported, and transformers may import it at collection time:
# set it before anything does, so tests/test_kernel.py runs the kernel on CPU tensors through the interpreter.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _reset_once_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    import neftune.apply

    monkeypatch.setattr(neftune.apply, "_warned_alpha_zero", False)


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    from neftune.toy import tiny_tokenizer

    return tiny_tokenizer()
