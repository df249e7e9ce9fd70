"""The cached dense-vs-pruned comparison (diet.compare): the numbers evaluate_task gives, each computed once."""

from __future__ import annotations

import pytest

from diet import compare as C
from diet.api import build_mask, profile_tasks, prune_copy
from diet.cache import ArtifactCache
from diet.errors import Cancelled
from diet.evaluate import EvalSettings, evaluate_task
from diet.models import LoadedModel
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
