"""The cached dense-vs-pruned comparison (diet.compare): the numbers evaluate_task gives, each computed once."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from diet import compare as C
from diet.adapters import get_unit
from diet.api import build_mask, profile_tasks, prune_copy
from diet.cache import ArtifactCache
from diet.errors import Cancelled
from diet.evaluate import EvalSettings, evaluate_task
from diet.models import LoadedModel
from diet.prune import prune_units, unit_widths, zero_units
from diet.settings import MaskSettings, ModelSpec, ProfileSettings
from diet.tasks import get_task
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture
def lm():
    return LoadedModel(tiny_model("llama"), tiny_tokenizer(), ModelSpec(name="tiny"), "", "tiny-llama-cmp")


def test_compare_equals_direct_evaluation_and_is_computed_once(lm, tmp_path, monkeypatch):
    tasks, settings = [get_task("arithmetic"), get_task("capitals")], EvalSettings(limit=3)
    stats = profile_tasks(lm, tasks, ProfileSettings(samples=6), cache=ArtifactCache(tmp_path))
    result = build_mask(stats, MaskSettings(sparsity=0.5))
    cache, seen = ArtifactCache(tmp_path), []
    out = C.compare_models(lm, lambda: prune_copy(lm, result), "m1", tasks, settings, {}, cache=cache,
                           progress=lambda *a: seen.append(a))
    pruned = prune_copy(lm, result)
    for label, model in (("dense", lm.model), ("pruned", pruned)):
        assert [r.value for r in out[label]] == [evaluate_task(model, lm.tokenizer, t, settings).value for t in tasks]
    assert out["size"]["pruned"]["params"] < out["size"]["dense"]["params"] and out["speed"]["dense"] > 0
    assert "speed" not in C.compare_models(lm, lambda: prune_copy(lm, result), "m1", tasks, settings, {},
                                           cache=cache, speed=False)  # the app's comparison: no timing
    assert seen[-1][1] == seen[-1][2]  # progress reached its total

    calls = []
    monkeypatch.setattr(C, "evaluate_task", lambda *a, **k: calls.append(a) or evaluate_task(*a, **k))
    again = C.compare_models(lm, lambda: prune_copy(lm, result), "m1", tasks, settings, {}, cache=cache)
    assert not calls and [r.value for r in again["pruned"]] == [r.value for r in out["pruned"]]  # all from cache
    C.compare_models(lm, lambda: prune_copy(lm, result), "m2", tasks, settings, {}, cache=cache)
    assert len(calls) == len(tasks)  # another mask: only its pruned numbers; the dense ones are shared


def test_compare_cancels_between_tasks(lm, tmp_path):
    with pytest.raises(Cancelled):
        C.compare_models(lm, lambda: lm.model, "x", [get_task("arithmetic")], EvalSettings(limit=2), {},
                         cache=ArtifactCache(tmp_path), should_stop=lambda: True)
    assert not list(tmp_path.glob("eval/*.json"))  # nothing was written


def test_speed_is_measured_on_demand_and_kept_by_mask_digest(lm, monkeypatch):
    """pruned_speed times dense vs make_pruned() once per mask digest (the session's memo); `again` re-measures."""
    timed, built = [], []
    monkeypatch.setattr(C, "forward_speed", lambda models: timed.append(set(models)) or {"dense": 2.0, "pruned": 3.0})

    def make(tag):
        return lambda: built.append(tag) or lm.model

    memo = {}
    first = C.pruned_speed(lm, make("a"), "digest-a", memo)
    assert first == {"dense": 2.0, "pruned": 3.0} and timed == [{"dense", "pruned"}] and built == ["a"]
    assert C.pruned_speed(lm, make("a"), "digest-a", memo) is first and built == ["a"]  # cached: no copy, no timing
    C.pruned_speed(lm, make("b"), "digest-b", memo)
    assert built == ["a", "b"] and len(memo) == 2  # another mask: measured
    C.pruned_speed(lm, make("a"), "digest-a", memo, again=True)
    assert built == ["a", "b", "a"] and len(timed) == 3  # asked again: measured again
    assert C.speed_key(lm, "digest-a") != C.speed_key(lm, "digest-b")


def test_forward_speed_times_both_models(lm):
    out = C.forward_speed({"dense": lm.model, "pruned": lm.model})
    assert out["dense"] > 0 and out["pruned"] > 0 and out["detail"]["rows"][0]["batch"] == C.SPEED_BATCH


@pytest.mark.parametrize("unit", ["mlp", "heads"])
@pytest.mark.parametrize("compensated", [False, True])
def test_pruned_layers_are_built_without_random_init(unit, compensated):
    """The pruned copy's new layers (sliced, and re-biased by FLAP's compensation) are built without drawing the
    random weights nn.Linear's constructor draws (`torch.nn.utils.skip_init`), in the source's dtype, and the
    pruned model still computes the masked model's function."""
    dense = tiny_model("llama")
    keep = [np.arange(0, w, 2) for w in unit_widths(dense, unit)]
    u = get_unit(dense, unit)
    channels = [u.stat_width(layer) for layer in u.family.layers(dense)]
    means = np.random.default_rng(0).normal(size=(len(channels), channels[0])) if compensated else None
    masked = zero_units(copy.deepcopy(dense), keep, unit, compensation=means)
    before = torch.get_rng_state()
    pruned = prune_units(copy.deepcopy(dense), keep, unit, compensation=means)
    assert torch.equal(torch.get_rng_state(), before), "pruning drew random numbers (a layer was initialised)"
    ids = torch.randint(3, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = masked(ids).logits, pruned(ids).logits
        assert (ref - dense(ids).logits).abs().max() > 1e-3  # the cut changes the function: the test can fail
    assert (out - ref).abs().max() <= 1e-5 and torch.equal(out.argmax(-1), ref.argmax(-1))
    half = prune_units(copy.deepcopy(dense).to(torch.bfloat16), keep, unit, compensation=means)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
