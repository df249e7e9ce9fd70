"""Fixtures shared by the app tests (tests/test_app.py, tests/test_app_disp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diet.models import LoadedModel
from diet.settings import ModelSpec
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private artifact cache for one test (DIET_CACHE), so no test reads another's statistics."""
    d = tmp_path / "cache"
    monkeypatch.setenv("DIET_CACHE", str(d))
    return d


@pytest.fixture
def tiny_lm(tmp_path) -> LoadedModel:
    """A tiny random Llama behind the same LoadedModel the app uses for real models."""
    return LoadedModel(tiny_model("llama"), tiny_tokenizer(), ModelSpec(name="tiny-llama"), str(tmp_path),
                       "tiny:llama:0")
