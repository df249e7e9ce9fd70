"""Exactness: the physically pruned model computes the same function as the masked-dense model."""

import copy

import numpy as np
import pytest
import torch

from diet.adapters import get_family, model_shape
from diet.errors import DietError
from diet.prune import prune_units, unit_widths, zero_units
from tests.tiny import FAMILIES, VOCAB, tiny_model

IDS = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))


def random_keep(widths, seed, frac_low=0.3):
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(w, size=int(rng.integers(max(1, int(frac_low * w)), w)), replace=False))
            for w in widths]


@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_equals_masked_with_different_widths(family):
    dense = tiny_model(family)
    keep = random_keep(unit_widths(dense), seed=1)
    assert len({len(k) for k in keep}) > 1, "the test must use different widths per layer"
    masked = zero_units(copy.deepcopy(dense), keep)
    pruned = prune_units(copy.deepcopy(dense), keep)
    assert unit_widths(pruned) == [len(k) for k in keep]
    with torch.no_grad():
        ref, out, orig = masked(IDS).logits, pruned(IDS).logits, dense(IDS).logits
    assert (ref - orig).abs().max() > 1e-3, "zeroing must change the output, or the test proves nothing"
    assert (out - ref).abs().max() <= 1e-5
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_reproduces_the_model(family):
    dense = tiny_model(family)
    keep = [np.arange(w) for w in unit_widths(dense)]
    pruned = prune_units(copy.deepcopy(dense), keep)
    with torch.no_grad():
        assert (pruned(IDS).logits - dense(IDS).logits).abs().max() <= 1e-6


def test_uniform_prune_updates_config_and_parameter_count():
    dense = tiny_model("llama")
    shape = model_shape(dense)
    keep = [np.arange(0, 48, 2) for _ in range(3)]  # 24 of 48 in each layer
    pruned = prune_units(copy.deepcopy(dense), keep)
    assert pruned.config.intermediate_size == 24
    removed = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in pruned.parameters())
    assert removed == 3 * 24 * shape.params_per_unit[0]


def test_fused_phi3_slices_gate_and_up_halves():
    dense = tiny_model("phi3")
    keep = [np.array([0, 5, 47])] * 3
    pruned = prune_units(copy.deepcopy(dense), keep)
    fam = get_family(pruned)
    gu = fam.mlp(fam.layers(pruned)[0]).gate_up.weight
    orig = fam.mlp(fam.layers(dense)[0]).gate_up.weight
    assert torch.equal(gu, orig[[0, 5, 47, 48, 53, 95]])


@pytest.mark.parametrize("bad", [[np.array([], dtype=int)] * 3, [np.array([0, 0])] * 3, [np.array([48])] * 3,
                                 [np.arange(4)] * 2])
def test_bad_masks_are_refused_clearly(bad):
    with pytest.raises(DietError):
        prune_units(tiny_model("llama"), bad)


def test_unsupported_architecture_names_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    with pytest.raises(DietError, match="supported: llama"):
        prune_units(m, [np.arange(4)])
