"""Fixtures shared by several test files (the app tests, the CLI tests on a saved tiny model)."""

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


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch) -> Path:
    """A tiny random Llama saved as a model folder (what a user passes as --model), with a private cache."""
    monkeypatch.setenv("DIET_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
