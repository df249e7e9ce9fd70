"""Attention heads as a unit (whole KV groups): sliced == masked exactly; FLAP's bias equals its reference."""

import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from diet.adapters import get_unit, model_shape
from diet.errors import DietError
from diet.profile import profile_texts
from diet.prune import prune_units, unit_widths, zero_units
from diet.settings import ProfileSettings
from tests.tiny import COMMON, VOCAB, tiny_model, tiny_tokenizer

IDS = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
GQA_FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "gemma3_text")


def wide_gqa_llama() -> torch.nn.Module:
    """8 query heads over 4 KV heads (groups of 2): enough groups to keep different counts per layer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{**COMMON, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 4})
    return AutoModelForCausalLM.from_config(cfg).eval()


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_sliced_heads_equal_masked(family):
    dense = tiny_model(family)
    assert unit_widths(dense, "heads") == [2, 2, 2]  # 4 query heads over 2 KV heads: two groups per layer
    keep = [np.array([1]), np.array([0]), np.array([1])]
    masked = zero_units(copy.deepcopy(dense), keep, "heads")
    pruned = prune_units(copy.deepcopy(dense), keep, "heads")
    ref, out, orig = logits(masked), logits(pruned), logits(dense)
    assert (ref - orig).abs().max() > 1e-3, "dropping a group must change the output, or the test proves nothing"
    assert (out - ref).abs().max() <= 1e-5
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    assert unit_widths(pruned, "heads") == [1, 1, 1]
    attn = get_unit(pruned, "heads").family.layers(pruned)[0].self_attn
    assert attn.q_proj.out_features == 2 * attn.head_dim and attn.k_proj.out_features == attn.head_dim
    assert pruned.config.num_key_value_heads == 1 and pruned.config.num_attention_heads == 2


def test_sliced_heads_keep_the_right_rows_and_different_counts_per_layer():
    dense = wide_gqa_llama()
    keep = [np.array([0, 3]), np.array([2]), np.array([0, 1, 2, 3])]
    pruned = prune_units(copy.deepcopy(dense), keep, "heads")
    a0, p0 = dense.model.layers[0].self_attn, pruned.model.layers[0].self_attn
    q_rows = [*range(0, 8), *range(24, 32)]  # groups 0 and 3: query heads 0,1 and 6,7 (head_dim 4)
    kv_rows = [*range(0, 4), *range(12, 16)]
    assert torch.equal(p0.q_proj.weight, a0.q_proj.weight[q_rows])
    assert torch.equal(p0.k_proj.weight, a0.k_proj.weight[kv_rows])
    assert torch.equal(p0.v_proj.weight, a0.v_proj.weight[kv_rows])
    assert torch.equal(p0.o_proj.weight, a0.o_proj.weight[:, q_rows])
    assert (logits(pruned) - logits(zero_units(copy.deepcopy(dense), keep, "heads"))).abs().max() <= 1e-5
    assert pruned.config.num_key_value_heads == 4  # counts differ: the config keeps the dense numbers


def test_head_shape_and_parameter_count():
    dense = tiny_model("qwen2")  # q/k/v biases
    shape = model_shape(dense, "heads")
    assert shape.widths == (2, 2, 2) and shape.stat_widths == (32, 32, 32)  # 4 heads x head_dim 8
    pruned = prune_units(copy.deepcopy(dense), [np.array([0])] * 3, "heads")
    removed = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in pruned.parameters())
    assert removed == 3 * shape.params_per_unit[0]


def test_profiling_heads_hooks_o_proj_inputs():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    stats = profile_texts(model, tok, ["hello there", "a b c d e f"], ProfileSettings(unit="heads", batch_size=2))
    assert stats.abs_sum.shape == (2, 3, 32)
    assert stats.shape.unit == "heads" and stats.shape.widths == (2, 2, 2)
    assert stats.seq_sq_sum.shape == (2, 3, 32) and stats.seqs.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("unit", ["mlp", "heads"])
def test_flap_bias_compensation_equals_masked_plus_bias(unit):
    """Pruned-with-compensation == the dense model with pruned units zeroed plus the bias computed by hand."""
    dense = tiny_model("llama")
    u = get_unit(dense, unit)
    layers = u.family.layers(dense)
    rng = np.random.default_rng(0)
    width, channels = u.width(layers[0]), u.stat_width(layers[0])
    keep = [np.array([1])] * 3 if unit == "heads" else [np.sort(rng.choice(width, 30, replace=False))] * 3
    means = rng.normal(size=(3, channels))

    ref = zero_units(copy.deepcopy(dense), keep, unit)
    with torch.no_grad():  # the reference bias, written out: W[:, dropped] @ means[dropped]
        for i, (layer, dense_layer) in enumerate(zip(u.family.layers(ref), layers, strict=True)):
            w = u.out_proj(dense_layer).weight.double()
            kept_channels = np.concatenate([np.arange(k * channels // width, (k + 1) * channels // width)
                                            for k in keep[i]])
            drop = np.setdiff1d(np.arange(channels), kept_channels)
            bias = (w[:, drop] @ torch.as_tensor(means[i][drop])).float()
            out = u.out_proj(layer)
            out.bias = torch.nn.Parameter(bias)

    pruned = prune_units(copy.deepcopy(dense), keep, unit, compensation=means)
    masked = zero_units(copy.deepcopy(dense), keep, unit, compensation=means)
    r, p, m, d = logits(ref), logits(pruned), logits(masked), logits(zero_units(copy.deepcopy(dense), keep, unit))
    assert (r - d).abs().max() > 1e-3, "the bias must change the output, or the test proves nothing"
    assert (p - r).abs().max() <= 1e-5
    assert (m - r).abs().max() <= 1e-5


def test_phi3_heads_refused_clearly():
    with pytest.raises(DietError, match="fused qkv_proj"):
        unit_widths(tiny_model("phi3"), "heads")


def test_api_build_mask_on_head_statistics_prunes_groups():
    from diet.api import LoadedModel, build_mask, prune_copy
    from diet.settings import MaskSettings, ModelSpec

    model, tok = tiny_model("llama"), tiny_tokenizer()
    settings = ProfileSettings(unit="heads", batch_size=2)
    stats = {n: profile_texts(model, tok, texts, settings) for n, texts in
             (("a", ["one two three", "four five"]), ("b", ["x y z", "hello world again"]))}
    result = build_mask(stats, MaskSettings(sparsity=0.5))
    assert result.mask.shape == (3, 2) and result.mask.sum(1).tolist() == [1, 1, 1] and result.unit == "heads"
    pruned = prune_copy(LoadedModel(model, tok, ModelSpec(name="tiny"), "", "tiny"), result)
    assert unit_widths(pruned, "heads") == [1, 1, 1] and unit_widths(model, "heads") == [2, 2, 2]


def test_every_unit_name_has_one_unit_class():
    """The names settings accept (diet.settings.UNITS, no torch) and the classes that prune them are the same set."""
    from diet.adapters import UNIT_CLASSES
    from diet.settings import UNITS

    assert tuple(UNIT_CLASSES) == UNITS
