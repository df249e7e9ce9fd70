"""Profiling sums are exact over non-padding tokens; the cache hits without a forward pass and never serves junk."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from diet import api
from diet.adapters import get_family
from diet.cache import ArtifactCache
from diet.models import LoadedModel
from diet.profile import Cancelled, choose_texts, profile_texts
from diet.settings import ModelSpec, ProfileSettings
from tests.tiny import tiny_model, tiny_tokenizer

TEXTS = ["a short one", "a much longer calibration text, padded less", "mid length text", "x", "yes\nno maybe"]


@dataclass(frozen=True)
class FakeTask:
    name: str
    calibration: tuple
    source: str = "test"

    def fingerprint(self) -> str:
        return "fp-" + self.name


def reference_sums(model, tok, texts):
    """Unbatched: capture the down_proj input of each text alone (no padding at all) and sum by hand."""
    fam = get_family(model)
    layers = fam.layers(model)
    L, width = len(layers), fam.mlp(layers[0]).down.in_features
    out = {k: np.zeros((2, L, width)) for k in ("abs_sum", "sq_sum", "sum")}
    count = np.zeros(2)
    for i, t in enumerate(texts):
        caught: dict[int, torch.Tensor] = {}
        hooks = [fam.mlp(layer).down.register_forward_pre_hook(
            lambda m, a, j=j, store=caught: store.__setitem__(j, a[0][0].double())) for j, layer in enumerate(layers)]
        with torch.no_grad():
            model(**tok(t, return_tensors="pt"))
        for h in hooks:
            h.remove()
        for j in range(L):
            x = caught[j].numpy()
            out["abs_sum"][i % 2, j] += np.abs(x).sum(0)
            out["sq_sum"][i % 2, j] += (x * x).sum(0)
            out["sum"][i % 2, j] += x.sum(0)
        count[i % 2] += caught[0].shape[0]
    return out, count


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3"])
def test_profile_sums_match_unbatched_reference_and_ignore_padding(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    stats = profile_texts(model, tok, TEXTS, ProfileSettings(batch_size=3))
    ref, count = reference_sums(model, tok, TEXTS)
    assert stats.count.tolist() == count.tolist()
    for k in ref:
        np.testing.assert_allclose(getattr(stats, k), ref[k], rtol=1e-4, atol=1e-4)
    assert stats.shape.widths == (48, 48, 48)


def test_choose_texts_is_seeded_and_bounded():
    pool = [f"text {i}" for i in range(50)]
    a = choose_texts(pool, ProfileSettings(samples=10, seed=1))
    assert a == choose_texts(pool, ProfileSettings(samples=10, seed=1))
    assert a != choose_texts(pool, ProfileSettings(samples=10, seed=2))
    assert len(choose_texts(pool, ProfileSettings(samples=500))) == 50


def loaded(family="llama"):
    return LoadedModel(tiny_model(family), tiny_tokenizer(), ModelSpec(name="tiny"), path="-",
                       identity=f"tiny-{family}")


def count_forwards(model):
    calls = []
    model.base_model.register_forward_pre_hook(lambda *a, **k: calls.append(1))
    return calls


def test_cache_hit_does_no_forward_pass(tmp_path):
    lm, cache = loaded(), ArtifactCache(tmp_path)
    task = FakeTask("t1", tuple(TEXTS))
    calls = count_forwards(lm.model)
    s = ProfileSettings(samples=4, batch_size=2)
    first = api.profile_tasks(lm, [task], s, cache=cache)["t1"]
    n = len(calls)
    assert n == 2
    assert api.is_profiled(lm, task, s, cache)
    second = api.profile_tasks(lm, [task], s, cache=cache)["t1"]
    assert len(calls) == n, "a cache hit must not run the model"
    np.testing.assert_array_equal(first.abs_sum, second.abs_sum)
    assert second.meta["task"] == "t1"


def test_key_changes_with_every_input():
    lm = loaded()
    base = api.stats_key(lm, TEXTS, ProfileSettings())
    other_model = LoadedModel(lm.model, lm.tokenizer, lm.spec, "-", identity="other")
    assert api.stats_key(other_model, TEXTS, ProfileSettings()) != base
    assert api.stats_key(lm, TEXTS[:-1], ProfileSettings()) != base
    assert api.stats_key(lm, TEXTS, ProfileSettings(max_length=128)) != base
    assert api.stats_key(lm, TEXTS, ProfileSettings(seed=5)) != base
    assert api.stats_key(lm, TEXTS, ProfileSettings(samples=7)) != base
    bf16 = LoadedModel(lm.model, lm.tokenizer, ModelSpec(name="tiny", dtype="bfloat16"), "-", lm.identity)
    assert api.stats_key(bf16, TEXTS, ProfileSettings()) != base
    assert api.stats_key(lm, TEXTS, ProfileSettings(batch_size=3)) == base  # batch size does not change numbers


def test_stats_key_is_the_model_key_of_its_inputs_and_unchanged_by_it():
    """Statistics and the pages' memos key through api.model_key; the statistics' keys (so existing caches) are
    exactly what they were before it existed."""
    from diet.profile import texts_hash
    from diet.settings import CACHE_FORMAT_VERSION, sha256_of

    lm, ps = loaded(), ProfileSettings()
    old = {"format": CACHE_FORMAT_VERSION, "model": lm.identity, "dtype": lm.spec.dtype,
           "quantization": lm.spec.quantization, "texts": texts_hash(TEXTS), "settings": ps.key_fields()}
    assert api.stats_key(lm, TEXTS, ps) == sha256_of(old)[:24]
    assert api.stats_key(lm, TEXTS, ps, probe="disp") == sha256_of({**old, "kind": "disp"})[:24]
    assert api.model_key(lm, source="corpus") != api.model_key(lm, source="file.txt")


@pytest.mark.parametrize("damage", ["flip", "truncate", "json"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, damage):
    lm, cache = loaded(), ArtifactCache(tmp_path)
    task = FakeTask("t1", tuple(TEXTS))
    s = ProfileSettings(samples=4)
    good = api.profile_tasks(lm, [task], s, cache=cache)["t1"]
    st = next((tmp_path / "stats").glob("*.safetensors"))
    js = st.with_suffix(".json")
    data = bytearray(st.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
        st.write_bytes(bytes(data))
    elif damage == "truncate":
        st.write_bytes(bytes(data[: len(data) // 2]))
    else:
        js.write_text("{not json")
    calls = count_forwards(lm.model)
    with pytest.warns(UserWarning, match="corrupt"):
        again = api.profile_tasks(lm, [task], s, cache=cache)["t1"]
    assert calls, "a corrupt entry must be recomputed, not used"
    np.testing.assert_allclose(again.abs_sum, good.abs_sum, rtol=1e-6)
    assert json.loads(js.read_text())["key"] == st.stem


def test_interrupted_write_leaves_nothing_that_would_be_read(tmp_path, monkeypatch):
    lm, cache = loaded(), ArtifactCache(tmp_path)
    task = FakeTask("t1", tuple(TEXTS))
    import diet.cache as C

    real = C.atomic_write_json

    def crash(path, obj):
        raise KeyboardInterrupt  # dies after the tensors were renamed, before the JSON commit

    monkeypatch.setattr(C, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        api.profile_tasks(lm, [task], ProfileSettings(samples=4), cache=cache)
    monkeypatch.setattr(C, "atomic_write_json", real)
    assert not api.is_profiled(lm, task, ProfileSettings(samples=4), cache)
    assert not list((tmp_path / "stats").glob("*.tmp")), "no temporary file may be left behind"


def test_cancel_writes_nothing(tmp_path):
    lm, cache = loaded(), ArtifactCache(tmp_path)
    task = FakeTask("t1", tuple(TEXTS))
    with pytest.raises(Cancelled):
        api.profile_tasks(lm, [task], ProfileSettings(samples=5, batch_size=1), cache=cache,
                          should_stop=lambda: True)
    assert not (tmp_path / "stats").exists() or not list((tmp_path / "stats").iterdir())


def test_build_mask_and_split_half_from_profiled_stats(tmp_path):
    from diet.settings import MaskSettings

    lm, cache = loaded(), ArtifactCache(tmp_path)
    tasks = [FakeTask("a", tuple(TEXTS)), FakeTask("b", tuple(reversed(TEXTS)) + ("another text",))]
    stats = api.profile_tasks(lm, tasks, ProfileSettings(samples=6), cache=cache)
    res = api.build_mask(stats, MaskSettings(sparsity=0.25))
    assert res.mask.shape == (3, 48) and (res.mask.sum(1) == 36).all()
    assert res.summary["uniform"] and 0 < res.summary["param_sparsity"] < 0.25
    assert 0.0 <= api.split_half_overlap(stats["a"], MaskSettings(sparsity=0.25)) <= 1.0
    pruned = api.prune_copy(lm, res)
    assert pruned.config.intermediate_size == 36 and lm.model.config.intermediate_size == 48


def test_a_second_job_waits_for_the_first_and_reads_its_statistics(tmp_path):
    """Two jobs asking for the same statistics at once (two app sessions, the CLI): one computes, the other waits
    (and says so), then reads the cached entry without a forward pass of its own."""
    import threading
    import time

    lm, cache = loaded(), ArtifactCache(tmp_path)
    task, settings = FakeTask("t1", tuple(TEXTS)), ProfileSettings(samples=5)
    key = api.stats_key(lm, choose_texts(task.calibration, settings), settings)
    waits, done, forwards = [], {}, []
    handle = lm.model.model.register_forward_hook(lambda *a: forwards.append(threading.current_thread().name))
    with cache.computing("stats", key, "the first job's statistics"):
        second = threading.Thread(target=lambda: done.update(api.profile_tasks(lm, [task], settings, cache=cache,
                                                                                on_wait=waits.append)), name="second")
        second.start()
        deadline = time.monotonic() + 10
        while not waits and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waits and "is computing" in waits[0] and not done  # it waits, and says so
        first = api.profile_tasks(lm, [task], settings, cache=ArtifactCache(tmp_path / "other"))  # the first job's
        cache.save_tensors("stats", key, first["t1"].tensors(), first["t1"].meta)  # ... result, cached
        forwards.clear()
    second.join(10)
    handle.remove()
    assert not forwards and waits[-1] == ""  # no forward pass of its own; the wait is over
    np.testing.assert_array_equal(done["t1"].abs_sum, first["t1"].abs_sum)


def test_profile_estimate_comes_from_a_measured_batch_then_from_finished_profiles(tmp_path):
    """One estimate for the CLI and page 1: a guess without a forward pass when measuring is not allowed (a job
    runs), else one batch measured and kept; then the speed a finished profile measured."""
    from diet.tasks import get_task

    lm = LoadedModel(tiny_model("llama"), tiny_tokenizer(), ModelSpec(name="tiny"), str(tmp_path), "tiny:llama:0")
    cache, ps = ArtifactCache(tmp_path / "cache"), ProfileSettings(samples=8)
    arithmetic, capitals = get_task("arithmetic"), get_task("capitals")
    enc = {t.name: lm.tokenizer(choose_texts(t.calibration, ps), truncation=True, max_length=ps.max_length)
           for t in (arithmetic, capitals)}
    tokens = {name: sum(map(len, e["input_ids"])) for name, e in enc.items()}
    forwards = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: forwards.append(m))
    try:
        guess = api.estimate_seconds(lm, [arithmetic], ps, cache, measure=False)
        assert forwards == [] and guess > 0  # no measurement, no forward pass
        measured = api.estimate_seconds(lm, [arithmetic], ps, cache, measure=True)
        assert forwards and measured > 0 and measured != guess
        n = len(forwards)
        assert api.estimate_seconds(lm, [arithmetic], ps, cache, measure=True) == measured and len(forwards) == n
    finally:
        hook.remove()
    stats = api.profile_tasks(lm, [arithmetic], ps, cache=cache)["arithmetic"]  # a finished profile's own speed
    speed = stats.meta["tokens"] / stats.meta["seconds"]
    assert api.estimate_seconds(lm, [arithmetic], ps, cache) == 0.0  # cached: nothing to profile
    assert api.estimate_seconds(lm, [arithmetic, capitals], ps, cache) == pytest.approx(tokens["capitals"] / speed)
