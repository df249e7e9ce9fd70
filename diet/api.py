"""The high-level Python API: what the CLI and the app call. No UI code here.

    lm = load_model("smollm2-135m")
    stats = profile_tasks(lm, ["arithmetic", "capitals"], ProfileSettings(samples=100))
    result = build_mask(stats, MaskSettings(sparsity=0.25))
    export_model(lm, result, "out/pruned")

Why statistics are keyed by content: the cache key hashes the model's weights fingerprint, the exact calibration
texts and the settings that change the numbers, so a cached entry is reused exactly when it is still right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from diet import masks as M
from diet.cache import ArtifactCache
from diet.compare import compare_models  # noqa: F401  the cached dense-vs-pruned comparison, served here
from diet.errors import DietError
from diet.methods import MethodInputs, get_method, needs_general, run_method, summarize, unit_scores, weight_stats
from diet.models import LoadedModel, count_parameters
from diet.profile import Stats, choose_texts, profile_texts, texts_hash
from diet.results import MaskResult, mask_stats
from diet.settings import CACHE_FORMAT_VERSION, MaskSettings, MethodSettings, ProfileSettings, sha256_of

TaskProgress = Callable[[str, int, int], None]  # (task name, texts done, texts total)


def resolve_task(name_or_task):
    """A Task from a registered name, a file path, or a Task (returned as it is)."""
    from diet.tasks import get_task

    return get_task(name_or_task) if isinstance(name_or_task, str) else name_or_task


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
                     cache: ArtifactCache | None = None) -> float:
    """Seconds to profile the tasks not cached yet, from their token counts and this machine's measured speed."""
    cache = cache or ArtifactCache()
    tokens = 0
    for t in map(resolve_task, tasks):
        texts = choose_texts(t.calibration, settings)
        if cache.has("stats", stats_key(lm, texts, settings)):
            continue
        enc = lm.tokenizer(texts, truncation=True, max_length=settings.max_length)
        tokens += sum(len(ids) for ids in enc["input_ids"])
    return tokens / _tokens_per_second(lm, cache) if tokens else 0.0


def _speed_key(lm: LoadedModel) -> str:
    device = str(next(lm.model.parameters()).device)
    return sha256_of({"model": lm.identity, "dtype": lm.spec.dtype, "device": device})[:16]


def _tokens_per_second(lm: LoadedModel, cache: ArtifactCache) -> float:
    known = cache.load_json("speed", _speed_key(lm))
    if known:
        return float(known["tokens_per_second"])
    on_gpu = next(lm.model.parameters()).is_cuda
    return (1e13 if on_gpu else 3e11) / count_parameters(lm.model)  # rough first guess, replaced after one run


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
    tokens = float(tensors["count"].sum())
    meta = {**meta, "model": lm.spec.name, "model_identity": lm.identity, "task": task.name,
            "task_source": task.source, "task_fingerprint": task.fingerprint(), "texts": len(texts),
            "tokens": tokens, "settings": asdict(settings), "seconds": seconds}
    cache.save_tensors(probe.cache_kind, key, tensors, meta)
    cache.save_json("speed", _speed_key(lm), {"tokens_per_second": tokens / seconds})
    return tensors, meta


def profile_tasks(lm: LoadedModel, tasks: Sequence, settings: ProfileSettings = ProfileSettings(),
                  progress: TaskProgress | None = None, should_stop: Callable[[], bool] | None = None,
                  cache: ArtifactCache | None = None, on_wait: Callable[[str], None] | None = None
                  ) -> dict[str, Stats]:
    """Unit statistics per task (`profile` with the unit probe)."""
    return profile(lm, tasks, settings, UNIT_PROBE, progress, should_stop, cache, on_wait)


def build_mask(stats: dict[str, Stats], settings: MaskSettings = MaskSettings(),
               ranked: M.RankedScores | None = None) -> MaskResult:
    """DIET's mask: per-task masks, the vote and the summary statistics — from cached statistics only (no model).
    The registry's `diet` method (`run_method`), after checking the statistics belong together.

    `ranked`: `ranked_scores(stats, settings.score)`, computed once; the same mask then comes from comparisons
    (what a slider move runs; tests/test_app.py checks both paths agree on random statistics)."""
    if not stats:
        raise DietError("no task statistics: profile at least one task first")
    shapes = {s.shape.widths for s in stats.values()}
    if len(shapes) != 1:
        raise DietError("the task statistics come from models of different shapes")
    if ranked is None:
        return run_method("diet", MethodInputs(dict(stats)), settings)
    names = list(stats)
    if len(names) != len(ranked.scores):
        raise DietError("the ranked scores are not those of these statistics")
    if settings.merge == "threshold":
        settings.resolved_threshold(len(names))  # refuses k > T, as run_method does
    task_masks, mask = M.build_masks(None, settings, ranked)
    v = M.votes(task_masks)
    shape = stats[names[0]].shape
    summary = summarize(mask, task_masks, shape, "diet", MethodSettings(method="diet"))
    return MaskResult(names, settings, task_masks, mask, v, shape, summary,
                      ranking=M.vote_ranking(v, ranked.scores, ranked.tie))


def ranked_scores(stats: dict[str, Stats], score: str) -> M.RankedScores:
    """The tasks' scores with their per-layer ranks and tie scores: computed once per (statistics, score)."""
    return M.RankedScores.of(np.stack([unit_scores(stats[n], score) for n in stats]))


def rounded(result: MaskResult, multiple: int) -> MaskResult:
    """`result` with every layer's kept count rounded to a multiple of `multiple` by the mask's own ranking (the
    same object when nothing changes); the summary is recomputed so sizes and sparsity describe the rounded mask."""
    if multiple == 1:
        return result
    if result.unit != "mlp":
        raise DietError("--round-to applies to MLP channels only (attention KV groups are not rounded)")
    key = result.ranking if result.ranking is not None else result.votes
    mask = M.round_widths(result.mask, key, multiple, result.shape.widths)
    if np.array_equal(mask, result.mask):
        return result
    summary = {**result.summary, **M.param_summary(mask, result.shape),
               "kept_per_layer": M.kept_per_layer(mask).tolist(), "round_to": multiple,
               "kept_per_layer_unrounded": M.kept_per_layer(result.mask).tolist()}
    return replace(result, mask=mask, summary=summary)


def split_half_overlap(stats: Stats, settings: MaskSettings) -> float:
    """Jaccard between the masks of a task's two halves of samples: the task's own noise ceiling."""
    a = M.task_mask(unit_scores(stats.half(0), settings.score), settings)
    b = M.task_mask(unit_scores(stats.half(1), settings.score), settings)
    return float(M.jaccard_matrix(np.stack([a, b]))[0, 1])


def prune_copy(lm: LoadedModel, result: MaskResult, compensation=None, texts: Sequence[str] | None = None,
               stats: dict | None = None):
    """A pruned deep copy of the model (the loaded one stays dense, so the app can compare side by side).

    `compensation` (a `diet.settings.CompensationSettings`; default: what the result's summary asks for,
    `compensation_of`): with method "lstsq" the copy's output projections are refitted on `texts` (default:
    `compensation.samples` calibration texts of each task behind the mask — from `stats` when given, so uploaded
    files are found again — else of the result's task names) before slicing; FLAP's / "bias" compensation rides
    on `result.compensation`.
    """
    import copy

    from diet.prune import prune_units

    compensation = compensation or compensation_of(result)
    model = copy.deepcopy(lm.model)
    if compensation is not None and compensation.method == "lstsq":
        from diet.compensate import fit_lstsq

        texts = list(texts) if texts is not None else lstsq_texts(result, compensation, stats)
        fit_lstsq(model, lm.tokenizer, texts, result.keep(), result.unit, compensation)
        return prune_units(model, result.keep(), result.unit)
    return prune_units(model, result.keep(), result.unit, compensation=result.compensation)


def method_mask(lm, task_stats: dict, settings: MaskSettings, ms: MethodSettings, profile_settings,
                general: str = "auto", cache=None, progress=None, say=None, compensation: str = "none"):
    """Run `ms.method` for a loaded model: profiles general text (cached) and reads weight norms only if needed.

    `task_stats` are the cached per-task statistics (`profile_tasks`) for the unit in `profile_settings`.
    """
    from diet.adapters import model_shape

    method = get_method(ms.method)
    general_stats = None
    if needs_general(method.name, ms):
        from diet.general import general_task

        general_stats = profile_tasks(lm, [general_task(general, say)], profile_settings, progress=progress,
                                      cache=cache)["general"]
    weights = weight_stats(lm.model, profile_settings.unit) if "weights" in method.needs else None
    return mask_from(task_stats, settings, ms, model_shape(lm.model, profile_settings.unit), general_stats, weights,
                     general, compensation)


def mask_from(stats: dict, settings: MaskSettings, ms: MethodSettings, shape=None, general: Stats | None = None,
              weights: dict | None = None, general_source: str | None = None, compensation: str = "none"
              ) -> MaskResult:
    """`ms.method`'s mask from inputs already at hand: what `method_mask` returns once it has gathered them, and
    what the views call on every widget change (they hold the general statistics and weight norms once, so a
    slider move never resolves a source or re-reads weights). `shape` None: taken from the statistics (the
    methods that read neither weights nor general text need no model)."""
    result = run_method(ms.method, MethodInputs(stats, general, weights, shape), settings, ms, compensation)
    if general is not None:  # provenance (the source actually used: "auto" resolves to one); in the mask JSON too
        result.summary["general_source"] = str(general.meta.get("task_source") or general_source or "?"
                                               ).removeprefix("general:")
    return result


def with_compensation(result: MaskResult, comp: str, stats: dict, ms: MethodSettings,
                      general: Stats | None = None) -> MaskResult:
    """The mask with a compensation chosen after it was made: "bias" gives it the mean input of its calibration
    data (as `run_method` does); "lstsq" is marked in the summary and done when the model is pruned."""
    from diet.methods import calibration_means

    if comp == "none" or result.summary.get("compensation") == comp:
        return result
    means = result.compensation
    if comp == "bias" and means is None:
        means = calibration_means(MethodInputs(mask_stats(result, stats), general, shape=result.shape), ms)
    elif comp == "lstsq":
        means = None
    return replace(result, compensation=means, summary={**result.summary, "compensation": comp})


def lstsq_texts(result: MaskResult, compensation, stats: dict | None = None) -> list[str]:
    """The texts an lstsq refit of this mask reads: `compensation.samples` calibration texts of each task behind
    it — found through `stats` when given (an uploaded file is found again by its path), else by task name."""
    from diet.compensate import fit_texts

    tasks = tasks_of(mask_stats(result, stats)) if stats else [resolve_task(t) for t in result.tasks]
    return fit_texts(tasks, compensation)


def compensation_of(result: MaskResult):
    """The CompensationSettings pruning this result needs (None unless its summary asks for lstsq)."""
    from diet.settings import CompensationSettings

    return CompensationSettings(method="lstsq") if result.summary.get("compensation") == "lstsq" else None


# ---------------------------------------------------------------- what profiled statistics record


def tasks_of(stats: dict[str, Stats]) -> list:
    """The Task objects behind profiled statistics (their meta records where each task came from, so an uploaded
    file is found again by its path)."""
    out = []
    for name, s in stats.items():
        source = str(s.meta.get("task_source", ""))
        out.append(resolve_task(source.removeprefix("file:") if source.startswith("file:") else name))
    return out


def recorded_profile_settings(stats: dict[str, Stats], fallback: ProfileSettings) -> ProfileSettings:
    """The profiling settings the statistics were made with (so general text and a sweep use the same ones);
    `fallback` when the statistics do not record them."""
    recorded = next(iter(stats.values())).meta.get("settings") if stats else None
    if not isinstance(recorded, dict):
        return fallback
    try:
        return ProfileSettings(**recorded)
    except (TypeError, DietError):
        return fallback


def cached_general(lm: LoadedModel, source: str, settings: ProfileSettings) -> Stats | None:
    """General-text statistics read from the disk cache without a forward pass, or None. Only for local sources
    (the shipped corpus, a file): resolving a Hub source needs the network, which an interactive view never waits
    for."""
    from diet.general import HUB, general_task

    if source == "auto" or source in HUB:
        return None
    task = general_task(source)
    if not is_profiled(lm, task, settings):
        return None
    return profile_tasks(lm, [task], settings)["general"]


def embedded_models() -> dict:
    """The offline models (name -> `diet.models.Embedded`: what it is, its licence), for the app's model picker."""
    from diet.models import EMBEDDED

    return dict(EMBEDDED)


def embedded_licence(name: str):
    """The licence text file an embedded model's package ships (a Path), or None."""
    from diet.models import embedded_licence as find

    return find(name)
