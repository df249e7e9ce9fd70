"""Compensation after removal (diet/compensate.py) on tiny random models of every family."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from diet.adapters import get_unit
from diet.compensate import bias_supported, enable_output_bias, fit_lstsq
from diet.errors import DietError
from diet.prune import prune_units, zero_units
from diet.settings import CompensationSettings
from tests.tiny import FAMILIES, tiny_model, tiny_tokenizer

LSTSQ = CompensationSettings(method="lstsq", ridge=0.01, batch_size=8)


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghij klmnop=+0123") for _ in range(rng.randint(20, 40))) for _ in range(n)]


FIT, HELD = texts(48, 0), texts(24, 1)


def half_mask(model, unit: str = "mlp", seed: int = 0) -> np.ndarray:
    u = get_unit(model, unit)
    layers = u.family.layers(model)
    n = u.width(layers[0])
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) < n // 2 for _ in layers])


def out_proj_outputs(model, tok, unit: str = "mlp") -> list[torch.Tensor]:
    """Every layer's output-projection output on the held-out texts (real tokens only)."""
    u = get_unit(model, unit)
    layers = u.family.layers(model)
    got: list[list[torch.Tensor]] = [[] for _ in layers]
    enc = tok(HELD, return_tensors="pt", padding=True)
    m = enc["attention_mask"].reshape(-1).bool()
    hooks = [u.out_proj(layer).register_forward_hook(
        lambda mod, a, out, i=i: got[i].append(out.reshape(-1, out.shape[-1])[m])) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(g) for g in got]


def layer_error(model, dense, tok, unit: str = "mlp") -> float:
    a, b = out_proj_outputs(model, tok, unit), out_proj_outputs(dense, tok, unit)
    return float(sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True)) / sum((y**2).sum() for y in b))


@pytest.mark.parametrize("family", FAMILIES)
def test_no_removal_reproduces_the_dense_layers(family):
    dense, tok = tiny_model(family), tiny_tokenizer()
    model = copy.deepcopy(dense)
    keep = np.ones((3, 48), dtype=bool)
    report = fit_lstsq(model, tok, FIT, keep, "mlp", LSTSQ)
    for a, b in zip(out_proj_outputs(model, tok), out_proj_outputs(dense, tok), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert max(report.error_fitted) < 1e-6 and report.tokens > 48


@pytest.mark.parametrize("family", FAMILIES)
def test_lstsq_beats_plain_removal_on_held_out_tokens(family):
    dense, tok = tiny_model(family), tiny_tokenizer()
    keep = half_mask(dense)
    removed = zero_units(copy.deepcopy(dense), keep)
    fitted = copy.deepcopy(dense)
    report = fit_lstsq(fitted, tok, FIT, keep, "mlp", LSTSQ)
    assert all(f < r for f, r in zip(report.error_fitted, report.error_removed, strict=True))  # on the fit tokens
    e_removed, e_fitted = layer_error(removed, dense, tok), layer_error(fitted, dense, tok)
    assert e_fitted < 0.8 * e_removed, (e_fitted, e_removed)  # on held-out tokens


def test_lstsq_on_attention_heads():
    dense, tok = tiny_model("llama"), tiny_tokenizer()
    keep = np.array([[True, False]] * 3)  # one of the two KV groups per layer
    removed = zero_units(copy.deepcopy(dense), keep, "heads")
    fitted = copy.deepcopy(dense)
    fit_lstsq(fitted, tok, FIT, keep, "heads", LSTSQ)
    assert layer_error(fitted, dense, tok, "heads") < layer_error(removed, dense, tok, "heads")


def test_sliced_after_lstsq_equals_masked_lstsq():
    dense, tok = tiny_model("qwen2"), tiny_tokenizer()
    keep = half_mask(dense)
    masked = copy.deepcopy(dense)
    fit_lstsq(masked, tok, FIT, keep, "mlp", LSTSQ)
    sliced = prune_units(copy.deepcopy(masked), keep)
    enc = tok(HELD[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = masked(**enc).logits, sliced(**enc).logits
    assert torch.allclose(a, b, atol=1e-5) and sliced.config.intermediate_size == 24


def test_too_few_tokens_names_the_minimum():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(DietError, match="at least 24 calibration tokens"):
        fit_lstsq(model, tok, ["ab", "cd"], half_mask(model), "mlp", LSTSQ)


def test_singular_second_moments_are_damped_not_fatal():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    mlp = model.model.layers[0].mlp
    with torch.no_grad():  # channels 0 and 1 identical, channel 2 always 0: E[x xᵀ] is singular
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight[1] = lin.weight[0]
        mlp.up_proj.weight[2] = 0
    keep = np.ones((3, 48), dtype=bool)
    keep[:, 40:] = False
    report = fit_lstsq(model, tok, FIT, keep, "mlp", CompensationSettings(method="lstsq", ridge=0.0))
    assert all(np.isfinite(report.ridge)) and report.ridge[0] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bias_export_is_refused_where_a_stock_config_cannot_carry_it():
    assert bias_supported(tiny_model("llama"), "mlp") is None
    assert bias_supported(tiny_model("llama"), "heads") is None
    assert "mlp_bias" in bias_supported(tiny_model("mistral"), "mlp")
    assert "o_proj" in bias_supported(tiny_model("qwen2"), "heads")
    with pytest.raises(DietError, match="cannot be exported.*lstsq"):
        enable_output_bias(tiny_model("gemma2"), "mlp")


def test_enabling_the_bias_keeps_the_function():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = copy.deepcopy(model)
    enable_output_bias(model, "mlp")
    enc = tok(HELD[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, before(**enc).logits)
    assert model.config.mlp_bias and model.model.layers[0].mlp.gate_proj.bias is not None


def _lm_and_result(family: str, tmp_path, compensation: str):
    from diet.adapters import model_shape
    from diet.api import profile_tasks
    from diet.cache import ArtifactCache
    from diet.methods import MethodInputs, run_method
    from diet.models import LoadedModel
    from diet.settings import MaskSettings, ModelSpec, ProfileSettings

    lm = LoadedModel(tiny_model(family), tiny_tokenizer(), ModelSpec(name=f"tiny-{family}"), str(tmp_path / "base"),
                     f"tiny:{family}:0")
    stats = profile_tasks(lm, ["arithmetic", "capitals"], ProfileSettings(samples=8, max_length=64),
                          cache=ArtifactCache(tmp_path / "cache"))
    inputs = MethodInputs(stats, shape=model_shape(lm.model))
    return lm, run_method("diet", inputs, MaskSettings(sparsity=0.5), compensation=compensation)


@pytest.mark.parametrize(("family", "comp", "mode"), [("llama", "bias", "uniform"), ("llama", "bias", "padded"),
                                                      ("qwen2", "lstsq", "uniform"), ("gemma2", "lstsq", "padded")])
def test_exported_compensated_model_reloads_with_plain_transformers(tmp_path, family, comp, mode):
    from transformers import AutoModelForCausalLM

    from diet.api import prune_copy
    from diet.export import export_model

    lm, result = _lm_and_result(family, tmp_path, comp)
    lstsq = LSTSQ if comp == "lstsq" else None
    folder = export_model(lm, result, tmp_path / "out", mode=mode, compensation=lstsq, texts=FIT)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    in_memory = prune_copy(lm, result, lstsq, FIT)
    dense = lm.model
    enc = tiny_tokenizer()(HELD[:6], return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b, d = reloaded(**enc).logits, in_memory(**enc).logits, dense(**enc).logits
    m = enc["attention_mask"].bool()
    assert torch.allclose(a[m], b[m], atol=1e-5), (a[m] - b[m]).abs().max()
    assert not torch.allclose(a[m], d[m], atol=1e-3)  # it is the pruned model, not the dense one
    assert reloaded.num_parameters() < dense.num_parameters() or mode == "padded"


def test_bias_export_refused_for_a_family_without_the_flag(tmp_path):
    from diet.export import export_model

    lm, result = _lm_and_result("mistral", tmp_path, "bias")
    with pytest.raises(DietError, match="mlp_bias.*lstsq"):
        export_model(lm, result, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("method", "comp"), [("pooled", "lstsq"), ("diet-weighted", "bias")])
def test_cli_prune_with_new_methods_and_compensation(tmp_path, monkeypatch, capsys, method, comp):
    import json

    from transformers import AutoModelForCausalLM

    from diet.cli import main

    monkeypatch.setenv("DIET_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    rc = main(["prune", "--method", method, "--compensation", comp, "--compensation-samples", "16", "--model",
               str(folder), "--device", "cpu", "--tasks", "arithmetic,capitals", "--samples", "8", "--sparsity",
               "0.5", "--speed-repeats", "0", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    settings = json.loads((out / "diet_settings.json").read_text())
    assert settings["method"] == method and settings["compensation"]["method"] == comp
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 24 and bool(getattr(model.config, "mlp_bias", False)) == (comp == "bias")
    rc = main(["prune", "--method", method, "--compensation", "obs", "--model", str(folder), "--tasks", "arithmetic",
               "--sparsity", "0.5", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "unknown compensation 'obs'" in capsys.readouterr().err


def test_dense_target_also_beats_plain_removal():
    dense, tok = tiny_model("gemma3_text"), tiny_tokenizer()
    keep = half_mask(dense)
    fitted = copy.deepcopy(dense)
    fit_lstsq(fitted, tok, FIT, keep, "mlp", CompensationSettings(method="lstsq", target="dense"))
    removed = zero_units(copy.deepcopy(dense), keep)
    assert layer_error(fitted, dense, tok) < 0.8 * layer_error(removed, dense, tok)
