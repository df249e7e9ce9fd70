"""Profiled statistics, keyed by content and cached: the one key function, the probes, and `profile`.

Why statistics are keyed by content: the cache key hashes the model's weights fingerprint, the exact calibration
texts and the settings that change the numbers, so a cached entry is reused exactly when it is still right.

Why here, below the service layer: DISP's position statistics (`diet.disp.statistics`) and ShortGPT's block
influence (`diet.shortgpt`) are profiled and keyed the same way; they import this module downward. `diet.api`
serves these functions to the front ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from diet.cache import ArtifactCache
from diet.models import LoadedModel, count_parameters
from diet.profile import Stats, choose_texts, profile_texts, texts_hash
from diet.settings import CACHE_FORMAT_VERSION, ProfileSettings, sha256_of
from diet.tasks import resolve_task

TaskProgress = Callable[[str, int, int], None]  # (task name, texts done, texts total)


def model_key(lm: LoadedModel, **what) -> str:
    """The key of anything computed from a model's numbers: its content, dtype and quantization, plus `what` was
    computed (texts, settings, a probe, a source as the user named it). Statistics and the pages' in-session memos
    both key through here, so the same inputs always meet under the same key."""
    return sha256_of({"model": lm.identity, "dtype": lm.spec.dtype, "quantization": lm.spec.quantization, **what})[:24]


def stats_key(lm: LoadedModel, texts: list[str], settings: ProfileSettings, probe: str | None = None) -> str:
    """The one cache key of profiled statistics: format, model content, dtype/quantization, texts, settings, and
    what was probed (`probe`: None for the prunable unit in `settings.unit`, else e.g. DISP's positions)."""
    tag = {} if probe is None else {"kind": probe}  # unit statistics carry no tag: their keys predate probes
    return model_key(lm, format=CACHE_FORMAT_VERSION, texts=texts_hash(texts), settings=settings.key_fields(), **tag)


@dataclass(frozen=True)
class Probe:
    """What a profiling pass records, and how it is stored: statistics of the unit (`UNIT_PROBE`) or of other
    hook points (DISP's five positions, `diet.disp.statistics.POSITION_PROBE`). `profile` runs any of them."""

    cache_kind: str  # the cache folder ("stats", "disp_stats")
    tag: str | None  # added to the cache key; None for unit statistics
    run: Callable  # (model, tokenizer, texts, settings, progress, should_stop) -> (tensors, meta)
    load: Callable  # (tensors, meta) -> the statistics object handed to callers


def _run_unit(model, tokenizer, texts, settings, progress, should_stop) -> tuple[dict, dict]:
    stats = profile_texts(model, tokenizer, texts, settings, progress, should_stop)
    return stats.tensors(), stats.meta


UNIT_PROBE = Probe("stats", None, _run_unit, Stats.from_tensors)


def is_profiled(lm: LoadedModel, task, settings: ProfileSettings, cache: ArtifactCache | None = None) -> bool:
    task = resolve_task(task)
    return (cache or ArtifactCache()).has("stats", stats_key(lm, choose_texts(task.calibration, settings), settings))


def estimate_seconds(lm: LoadedModel, tasks: Sequence, settings: ProfileSettings,
                     cache: ArtifactCache | None = None, measure: bool = False) -> float:
    """Seconds to profile the tasks not cached yet: their token counts over this machine's profiling speed.

    The speed is the one the last finished profile of this model measured (kept in the cache); without one,
    `measure` times one batch of the first task's texts now (well under a second on a small model; kept like a
    profile's), else a rough guess from the parameter count stands in. `measure=False` where a forward pass now
    would collide with a running job (the app's pages while a job holds the gate)."""
    cache = cache or ArtifactCache()
    tokens, first = 0, None
    for t in map(resolve_task, tasks):
        texts = choose_texts(t.calibration, settings)
        if cache.has("stats", stats_key(lm, texts, settings)):
            continue
        first = first or texts
        enc = lm.tokenizer(texts, truncation=True, max_length=settings.max_length)
        tokens += sum(len(ids) for ids in enc["input_ids"])
    if not tokens:
        return 0.0
    return tokens / _tokens_per_second(lm, cache, settings, first if measure else None)


def _speed_key(lm: LoadedModel) -> str:
    device = str(next(lm.model.parameters()).device)
    return sha256_of({"model": lm.identity, "dtype": lm.spec.dtype, "device": device})[:16]


def _tokens_per_second(lm: LoadedModel, cache: ArtifactCache, settings: ProfileSettings,
                       texts: list[str] | None) -> float:
    """The measured profiling speed, else one batch of `texts` timed now (after a one-text warm-up: first-call
    allocations), else a rough first guess (replaced by the first profile that finishes)."""
    known = cache.load_json("speed", _speed_key(lm))
    if known:
        return float(known["tokens_per_second"])
    if texts:
        batch = texts[: settings.batch_size]
        profile_texts(lm.model, lm.tokenizer, batch[:1], settings)
        t0 = time.perf_counter()
        tokens = float(profile_texts(lm.model, lm.tokenizer, batch, settings).count.sum())
        speed = tokens / max(time.perf_counter() - t0, 1e-6)
        cache.save_json("speed", _speed_key(lm), {"tokens_per_second": speed})
        return speed
    on_gpu = next(lm.model.parameters()).is_cuda
    return (1e13 if on_gpu else 3e11) / count_parameters(lm.model)


def profile(lm: LoadedModel, tasks: Sequence, settings: ProfileSettings = ProfileSettings(), probe: Probe = UNIT_PROBE,
            progress: TaskProgress | None = None, should_stop: Callable[[], bool] | None = None,
            cache: ArtifactCache | None = None, on_wait: Callable[[str], None] | None = None) -> dict:
    """Statistics per task for any probe: from the cache when present (no forward pass), else profiled and cached
    atomically. Each task's texts are its seeded calibration choice; the meta records where they came from.

    Each entry is computed under its cache lock (`ArtifactCache.computing`): a second job (another app session, a
    CLI run) asking for the same statistics meanwhile waits — told through `on_wait` — and then reads them."""
    cache = cache or ArtifactCache()
    if probe is UNIT_PROBE:
        from diet.adapters import check_prunable

        check_prunable(lm.model, settings.unit)
    out: dict = {}
    for task in map(resolve_task, tasks):
        texts = choose_texts(task.calibration, settings)
        key = stats_key(lm, texts, settings, probe.tag)
        hit = cache.load_tensors(probe.cache_kind, key)
        if hit is None:
            with cache.computing(probe.cache_kind, key, f"the statistics of {task.name}", on_wait, should_stop):
                hit = cache.load_tensors(probe.cache_kind, key)  # whoever held the lock may have written it
                if hit is None:
                    hit = _profile_one(lm, task, texts, settings, probe, key, cache, progress, should_stop)
        if progress:  # also when the entry was read after waiting for another job: this task is done
            progress(task.name, len(texts), len(texts))
        out[task.name] = probe.load(*hit)
    return out


def _profile_one(lm: LoadedModel, task, texts: list[str], settings: ProfileSettings, probe: Probe, key: str,
                 cache: ArtifactCache, progress: TaskProgress | None, should_stop) -> tuple[dict, dict]:
    """One task's statistics computed and cached (with this machine's measured profiling speed)."""
    cb = (lambda d, n, name=task.name: progress(name, d, n)) if progress else None
    t0 = time.perf_counter()
    tensors, meta = probe.run(lm.model, lm.tokenizer, texts, settings, cb, should_stop)
    seconds = time.perf_counter() - t0
    meta = stats_meta(lm, task, texts, settings, tensors, meta, seconds)
    cache.save_tensors(probe.cache_kind, key, tensors, meta)
    cache.save_json("speed", _speed_key(lm), {"tokens_per_second": meta["tokens"] / seconds})
    return tensors, meta


def stats_meta(lm: LoadedModel, task, texts: list[str], settings: ProfileSettings, tensors: dict, meta: dict,
               seconds: float) -> dict:
    """What a statistics entry records beside its arrays, wherever they were computed (here or on a worker)."""
    return {**meta, "model": lm.spec.name, "model_identity": lm.identity, "task": task.name,
            "task_source": task.source, "task_fingerprint": task.fingerprint(), "texts": len(texts),
            "tokens": float(tensors["count"].sum()), "settings": asdict(settings), "seconds": seconds}


def profile_tasks(lm: LoadedModel, tasks: Sequence, settings: ProfileSettings = ProfileSettings(),
                  progress: TaskProgress | None = None, should_stop: Callable[[], bool] | None = None,
                  cache: ArtifactCache | None = None, on_wait: Callable[[str], None] | None = None
                  ) -> dict[str, Stats]:
    """Unit statistics per task (`profile` with the unit probe)."""
    return profile(lm, tasks, settings, UNIT_PROBE, progress, should_stop, cache, on_wait)
