"""DISP hypernetwork: the budget term counts like the paper, masks in the model equal zeroed weights, and a short
training run reaches the target kept fraction."""

import copy
import math

import numpy as np
import pytest
import torch

from diet import disp as D
from diet.disp import learn as L
from diet.errors import DietError
from tests.test_disp import IDS, random_sets
from tests.tiny import tiny_model, tiny_tokenizer


def hard_masks(shape, sets):
    return {pos: [torch.zeros(w).index_fill(0, torch.as_tensor(k), 1.0) for w, k in
                  zip(shape.widths[pos], sets[pos], strict=True)] for pos in D.POSITIONS}


def test_kept_fraction_matches_a_hand_count():
    dense = tiny_model("llama")  # hidden 32, MLP 48, q 32 + k 16 + v 16 outputs, o 32 inputs, 3 layers
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=11)
    n = {pos: [len(k) for k in sets[pos]] for pos in D.POSITIONS}
    hand = sum(n["attn_in"][i] * 64 + n["attn_out"][i] * 32 + 2 * n["mlp_in"][i] * n["mlp_mid"][i]
               + n["mlp_mid"][i] * n["mlp_out"][i] for i in range(3))
    total = 3 * (32 * 64 + 32 * 32 + 2 * 32 * 48 + 48 * 32)
    ratio = L.kept_fraction(hard_masks(shape, sets), shape)
    assert float(ratio) == pytest.approx(hand / total, rel=1e-6)
    assert D.param_summary(shape, D.counts_of(sets))["block_kept_fraction"] == pytest.approx(hand / total)


def test_kept_fraction_gradient_is_the_hand_derivative():
    """d ratio / d (one mlp_mid dim of layer i) = (2·|mlp_in_i| + |mlp_out_i|) / total."""
    dense = tiny_model("llama")
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=12)
    masks = hard_masks(shape, sets)
    leaf = masks["mlp_mid"][1].clone().requires_grad_(True)
    masks["mlp_mid"][1] = leaf
    L.kept_fraction(masks, shape).backward()
    total = 3 * (32 * 64 + 32 * 32 + 3 * 32 * 48)
    expect = (2 * len(sets["mlp_in"][1]) + len(sets["mlp_out"][1])) / total
    assert torch.allclose(leaf.grad, torch.full_like(leaf.grad, expect))


def test_budget_loss_is_the_log_ratio_penalty():
    lam, p = 16.0, 0.5
    assert float(L.budget_loss(torch.tensor(0.8), p, lam)) == pytest.approx(lam * math.log(0.8 / 0.5), rel=1e-6)
    assert float(L.budget_loss(torch.tensor(0.25), p, lam)) == pytest.approx(lam * math.log(0.5 / 0.25), rel=1e-6)
    assert float(L.budget_loss(torch.tensor(0.5), p, lam)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("family", ("llama", "qwen2", "gemma2"))
def test_masks_in_the_model_equal_zeroed_weights(family):
    """The function the hypernetwork trains is the one that gets sliced and exported."""
    dense = tiny_model(family)
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=13)
    hooks = L.MaskHooks(dense)
    hooks.masks = hard_masks(shape, sets)
    with torch.no_grad():
        got = dense(IDS).logits
        hooks.masks = None
        plain = dense(IDS).logits
    hooks.close()
    with torch.no_grad():
        ref = D.zero_disp(copy.deepcopy(dense), sets)(IDS).logits
    assert (plain - ref).abs().max() > 1e-3
    assert (got - ref).abs().max() <= 1e-5


def test_straight_through_sample_is_hard_with_the_relaxed_gradient():
    logits = torch.tensor([-5.0, -0.5, 0.0, 2.0, 10.0], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    m = L.gumbel_sigmoid_st(logits, temperature=0.4, offset=0.0, generator=g)
    assert set(m.detach().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    g = torch.Generator().manual_seed(0)
    u = torch.rand(5, generator=g).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits.detach() + torch.log(u) - torch.log1p(-u)) / 0.4)
    assert torch.allclose(logits.grad, soft * (1 - soft) / 0.4, atol=1e-6)
    assert torch.equal(m.detach(), (soft > 0.5).float())


def test_final_masks_are_noise_free_and_never_empty():
    got = L.final_masks([torch.tensor([-4.0, -2.0, 1.0]), torch.tensor([-9.0, -8.0, -7.5])], offset=3.0)
    assert got[0].tolist() == [False, True, True]
    assert got[1].tolist() == [False, False, True]  # none passes: the best one is kept


TEXTS = [f"the number {i} plus {i + 1} is {2 * i + 1}. " * 3 for i in range(60)]


def test_short_training_reaches_the_budget_and_leaves_the_model_alone():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = L.LearnSettings(p=0.6, steps=80, tokens_per_step=64, seq_len=64, lr=3e-2)
    res = L.learn_index_sets(model, tok, TEXTS, settings)
    assert res.history[0]["ratio"] > 0.8, "training starts with (almost) everything kept"
    assert abs(res.summary["mode_kept_fraction"] - 0.6) <= 0.02, "training alone must bring p within 2 points"
    assert abs(res.summary["block_kept_fraction"] - 0.6) <= 0.01  # final="budget": the calibrated shift
    assert abs(res.history[-1]["mode_ratio"] - res.summary["mode_kept_fraction"]) < 0.01  # one step apart
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    with torch.no_grad():  # the learned sets are valid DISP index sets that prune exactly
        ref = D.zero_disp(copy.deepcopy(model), res.index_sets)(IDS).logits
        out = D.disp_copy(model, res.index_sets)(IDS).logits
    assert (out - ref).abs().max() <= 1e-5


def test_stop_request_ends_training_early():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    seen = []
    res = L.learn_index_sets(model, tok, TEXTS, L.LearnSettings(steps=50, tokens_per_step=64, seq_len=32),
                             progress=lambda s, n, rec: seen.append(s), should_stop=lambda: len(seen) >= 3)
    assert len(res.history) == 3 and res.summary["steps_done"] == 3
    assert set(res.index_sets) == set(D.POSITIONS)


def test_token_chunks_cut_one_stream_without_padding():
    tok = tiny_tokenizer()
    chunks = L.token_chunks(tok, ["abc", "de", "", "fghij"], seq_len=4)
    # 3 + 1 + 2 + 1 + 5 + 1 = 13 tokens (text chars + EOS each) -> 3 chunks of 4
    assert chunks.shape == (3, 4)
    assert chunks[0, 3].item() == tok.eos_token_id
    with pytest.raises(DietError, match="fewer than one sequence"):
        L.token_chunks(tok, ["ab"], seq_len=64)


@pytest.mark.parametrize("kw", [{"p": 0.0}, {"p": 1.5}, {"steps": 0}, {"lr": 0}, {"seq_len": 4096},
                                {"temperature": 0}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(DietError):
        L.LearnSettings(**kw)


def test_task_texts_interleave_the_tasks():
    from diet.tasks import MCItem, Task

    t = [Task(name=n, description="", source="test", metric="acc", calibration=c,
              evaluation=(MCItem("q", ("a", "b"), 0),)) for n, c in (("a", ("a1", "a2", "a3")), ("b", ("b1",)))]
    assert L.task_texts(t) == ["a1", "b1", "a2", "a3"]
    assert np.array_equal(np.array(L.task_texts(t[:1])), np.array(["a1", "a2", "a3"]))


def test_budget_shift_moves_one_threshold_to_meet_p():
    shape = D.disp_shape(tiny_model("llama"))
    widths = [shape.widths[pos][i] for i in range(shape.layers) for pos in D.POSITIONS]
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(w, generator=g) for w in widths]
    ratio = lambda t: float(L.kept_fraction(L.split_by_position(  # noqa: E731
        [m.float() for m in L.final_masks(logits, 0.0, t)], shape.layers), shape))
    assert abs(ratio(0.0) - 0.5) > 0.05, "the unshifted masks must miss p for the test to mean anything"
    t = L.budget_shift(logits, 0.0, shape, 0.5)
    assert abs(ratio(t) - 0.5) < 0.01
    kept = L.final_masks(logits, 0.0, t)
    for lg, m in zip(logits, kept, strict=True):  # the learned order is kept: every kept logit beats every dropped
        if m.any() and (~m).any():
            assert lg[m].min() > lg[~m].max()
