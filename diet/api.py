"""The service layer: what the CLI and the app call. No UI code here.

    from diet.api import build_mask, load_model, profile_tasks
    from diet.settings import MaskSettings, ProfileSettings

    lm = load_model("smollm2-135m")
    stats = profile_tasks(lm, ["arithmetic", "capitals"], ProfileSettings(samples=100))
    result = build_mask(stats, MaskSettings(sparsity=0.25))

Profiling and its cache keys live in `diet.statistics` (DISP and ShortGPT profile through them too); they are
served from here, so a front end needs this one module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from diet import masks as M
from diet.cache import ArtifactCache
from diet.compare import compare_models  # noqa: F401  the cached dense-vs-pruned comparison, served here
from diet.errors import DietError
from diet.methods import MethodInputs, get_method, needs_general, run_method, summarize, unit_scores, weight_stats
from diet.models import LoadedModel, load_model  # noqa: F401  served here
from diet.profile import Stats, choose_texts
from diet.results import MaskResult, mask_stats, rounded  # noqa: F401  served here
from diet.settings import MaskSettings, MethodSettings, ProfileSettings
from diet.statistics import (  # noqa: F401  served here: profiling and the one key function
    UNIT_PROBE,
    Probe,
    TaskProgress,
    estimate_seconds,
    is_profiled,
    model_key,
    profile,
    profile_tasks,
    stats_key,
    stats_meta,
)
from diet.tasks import resolve_task


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


def split_half_overlap(stats: Stats, settings: MaskSettings) -> float:
    """Jaccard between the masks of a task's two halves of samples: the task's own noise ceiling."""
    a = M.task_mask(unit_scores(stats.half(0), settings.score), settings)
    b = M.task_mask(unit_scores(stats.half(1), settings.score), settings)
    return float(M.jaccard_matrix(np.stack([a, b]))[0, 1])


def prune_copy(lm: LoadedModel, result: MaskResult, compensation=None, texts: Sequence[str] | None = None,
               stats: dict | None = None, in_place: bool = False):
    """A pruned deep copy of the model (the loaded one stays dense, so the app can compare side by side);
    `in_place`: the loaded model itself is cut (one model in memory: the CLI's dense-then-pruned generation).

    `compensation` (a `diet.settings.CompensationSettings`; default: what the result's summary asks for,
    `compensation_of`): with method "lstsq" the copy's output projections are refitted on `texts` (default:
    `compensation.samples` calibration texts of each task behind the mask — from `stats` when given, so uploaded
    files are found again — else of the result's task names) before slicing; FLAP's / "bias" compensation rides
    on `result.compensation`.
    """
    import copy

    from diet.prune import prune_units

    compensation = compensation or compensation_of(result)
    model = lm.model if in_place else copy.deepcopy(lm.model)
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


# ---------------------------------------------------------------- on a Ray cluster (diet/cluster/, docs/scale.md)


def cluster_pool(settings, spec, say: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
    """Workers on the Ray cluster `settings` names, each holding the model `spec` names (this process loads none):
    refused in one line before any unit when the cluster cannot take the work. Use it as a context manager and
    hand it to `profile_on_cluster`, `evaluate_on_cluster` (and `diet.sweep.sweep_on_cluster`); its `.model` stands
    in for a LoadedModel in every cache key (identity and concrete dtype as the workers loaded them, no weights)."""
    from diet.cluster import Pool

    return Pool(settings, spec, say, should_stop)


def profile_on_cluster(pool, tasks: Sequence, settings: ProfileSettings = ProfileSettings(), progress=None,
                       should_stop: Callable[[], bool] | None = None, cache: ArtifactCache | None = None
                       ) -> dict[str, Stats]:
    """`profile_tasks` with one unit per task not cached yet on the cluster's workers; each result is stored in
    this process's cache under `stats_key`, the moment it arrives. `progress(ClusterProgress)`."""
    from diet.cluster import Unit
    from diet.cluster.units import profile_unit

    cache = cache or ArtifactCache()
    lm = pool.model
    todo = []
    for task in map(resolve_task, tasks):
        texts = choose_texts(task.calibration, settings)
        key = stats_key(lm, texts, settings)
        if not cache.has("stats", key):
            todo.append((task, texts, key))

    def store(i: int, result) -> None:
        task, texts, key = todo[i]
        tensors, meta, seconds = result
        cache.save_tensors("stats", key, tensors, stats_meta(lm, task, texts, settings, tensors, meta, seconds))

    units = [Unit(f"profile {t.name}", profile_unit, (texts, settings)) for t, texts, _ in todo]
    pool.run(units, store, progress, should_stop)
    return profile_tasks(lm, tasks, settings, cache=cache)  # every entry is cached now: read, no forward pass


def evaluate_on_cluster(pool, tasks: Sequence, settings=None, progress=None,
                        should_stop: Callable[[], bool] | None = None, cache: ArtifactCache | None = None) -> list:
    """One unit per (model, task) evaluation not cached yet; each TaskResult is stored under the key the dense
    model's comparison uses (`diet.compare.eval_key`), so the app finds it. Results in task order (fresh ones carry
    their per-item logliks, cached ones do not)."""
    from diet.cluster import Unit
    from diet.cluster.units import eval_unit
    from diet.compare import eval_key
    from diet.evaluate import EvalSettings, TaskResult

    cache = cache or ArtifactCache()
    settings = settings or EvalSettings()
    tasks = [resolve_task(t) for t in tasks]
    keys = [eval_key(pool.model, t, settings, "dense") for t in tasks]
    results: list = []
    for k in keys:
        hit = cache.load_json("eval", k)
        if hit is not None:
            hit.pop("note", None)
        results.append(TaskResult(**hit) if hit is not None else None)
    todo = [i for i, r in enumerate(results) if r is None]

    def store(j: int, result) -> None:
        i = todo[j]
        cache.save_json("eval", keys[i], result.to_dict())
        results[i] = result

    pool.run([Unit(f"evaluate {tasks[i].name}", eval_unit, (tasks[i], settings)) for i in todo], store, progress,
             should_stop)
    return results


# ------------------------------------------------------------------------------------- what the model says


def generate(lm: LoadedModel, prompt: str, settings=None, label: str = "model", model=None, on_update=None,
             should_stop=None, tokenizer=None):
    """`lm`'s answer to `prompt` (a `diet.generate.Generation`), streamed through `on_update`; `model`: a pruned
    copy answers instead (with `lm`'s tokenizer unless `tokenizer` is given, e.g. a pruned folder's own). Greedy by
    default (`diet.generate.GenerateSettings`)."""
    from diet.generate import GenerateSettings
    from diet.generate import generate as run

    return run(model if model is not None else lm.model, tokenizer or lm.tokenizer, prompt,
               settings or GenerateSettings(), label, on_update, should_stop)


def generate_gguf(path, prompt: str, settings=None, label: str = "gguf", on_update=None, should_stop=None):
    """The same answer from an exported GGUF file through llama.cpp, in a child process (a crash keeps the
    partial answer and says so)."""
    from diet.generate import GenerateSettings
    from diet.llama_generate import generate_gguf as run

    return run(path, prompt, settings or GenerateSettings(), label, on_update, should_stop)


def changed_items(tasks: Sequence, dense: Sequence, pruned: Sequence):
    """Per task, the items one model answered right and the other wrong (`diet.changed.TaskChanges`), from the two
    comparisons' per-item log-likelihoods; `tasks` are names, files or Task objects."""
    from diet.changed import changed_items as run

    return run([resolve_task(t) for t in tasks], dense, pruned)


def sample_prompt(task, index: int = 0) -> str:
    """A prompt from a task's evaluation item (its question; the first by default), to prefill a Try-it box."""
    task = resolve_task(task)
    if task.evaluation:
        return task.evaluation[index % len(task.evaluation)].context.strip()
    return task.calibration[index % len(task.calibration)] if task.calibration else ""


def sample_prompts(tasks: Sequence, n: int = 3) -> list[str]:
    """`n` prompts for sample generations: the first item of each task in turn, then their second items, ..."""
    found = [resolve_task(t) for t in tasks]
    found = [t for t in found if t.evaluation or t.calibration]
    return [sample_prompt(found[i % len(found)], i // len(found)) for i in range(n)] if found else []


def embedded_models() -> dict:
    """The offline models (name -> `diet.models.Embedded`: what it is, its licence), for the app's model picker."""
    from diet.models import EMBEDDED

    return dict(EMBEDDED)


def embedded_licence(name: str):
    """The licence text file an embedded model's package ships (a Path), or None."""
    from diet.models import embedded_licence as find

    return find(name)
