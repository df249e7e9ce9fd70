"""The app's background work and pure helpers — no Streamlit import, so it runs in worker threads and in tests.

Why a separate module: every function here is called either from a worker thread (`diet.jobs.Job`), where calling
`st.*` is not allowed, or from tests without a running app. The pages only wire widgets to these functions.
Everything goes through the engine's public API (diet.api, diet.evaluate, diet.export, diet.tasks, diet.viz).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from diet import masks as M
from diet.api import MaskResult, is_profiled, model_key, profile_tasks, prune_copy
from diet.cache import ArtifactCache
from diet.compare import compare_models
from diet.errors import DietError
from diet.evaluate import EvalSettings
from diet.jobs import JobContext
from diet.methods import MethodInputs, get_method, needs_general, run_method, summarize
from diet.profile import choose_texts
from diet.report import mask_stats, settings_summary
from diet.settings import MaskSettings, MethodSettings, ProfileSettings

# ----------------------------------------------------------------------------------------------- uploads


def save_upload(name: str, data: bytes, root: Path | None = None) -> Path:
    """Write an uploaded task file to a temp folder named by its content hash (same file, same path), keeping its
    base name so the task is named after it. Returns the path to hand to `diet.tasks.get_task`."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name).strip("._") or "task.jsonl"
    folder = (root or Path(tempfile.gettempdir()) / "diet-uploads") / hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / stem
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------- shared cache

COUNT_ENV = "DIET_COUNT_COMPUTED"  # tests: a file that gets one line per cache entry computed (not read) by the app


class CountingCache(ArtifactCache):
    """The engine's cache; with DIET_COUNT_COMPUTED set, each entry written (= computed, never a cache hit) also
    appends "<kind> <key>" to that file. Why: the several-viewers test counts computations from outside the
    server process, at the one place every computed statistic and score passes through."""

    def _count(self, kind: str, key: str) -> None:
        path = os.environ.get(COUNT_ENV)
        if path and kind in ("stats", "eval"):
            with open(path, "a") as f:  # one short append per entry: atomic on a local file system
                f.write(f"{kind} {key}\n")

    def save_tensors(self, kind: str, key: str, tensors: dict, meta: dict) -> None:
        super().save_tensors(kind, key, tensors, meta)
        self._count(kind, key)

    def save_json(self, kind: str, key: str, obj: dict) -> None:
        super().save_json(kind, key, obj)
        self._count(kind, key)


# ----------------------------------------------------------------------------------------------- profiling


def profile_shared(ctx: JobContext, lm, tasks: list, settings: ProfileSettings, progress=None) -> dict:
    """profile_tasks for a job: statistics of the same (model, settings, task) are computed once, whoever asks for
    them first (the engine's cache lock); the others say they wait, then read them."""
    return profile_tasks(lm, tasks, settings, progress=progress or ctx.report, should_stop=ctx.should_stop,
                         cache=CountingCache(), on_wait=ctx.wait_for)


_PROFILE_SPEED: dict = {}  # model identity -> profiling tokens per second measured in this server process


def record_profile_speed(stats: dict) -> None:
    """Learn profiling speed from finished statistics (their tokens and seconds, as the profiler recorded them)."""
    for st_ in stats.values():
        meta = st_.meta
        if meta.get("model_identity") and meta.get("seconds", 0) > 0 and meta.get("tokens", 0) > 0:
            _PROFILE_SPEED[meta["model_identity"]] = float(meta["tokens"]) / float(meta["seconds"])


def estimate_profile_seconds(lm, tasks: list, settings: ProfileSettings, measure: bool = True) -> float | None:
    """Seconds to profile `tasks` (none cached): their token count over profiling speed on this machine — measured
    on one batch of their calibration texts the first time (well under a second on a small model), then remembered
    and refreshed by every profile that finishes. None when there is no measurement and `measure` is False (a job
    is running: a forward pass now would slow it and be slowed by it)."""
    from diet.profile import profile_texts

    if lm.identity not in _PROFILE_SPEED:
        if not measure:
            return None
        texts = choose_texts(tasks[0].calibration, settings)[: settings.batch_size]
        profile_texts(lm.model, lm.tokenizer, texts[:1], settings)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        batch = profile_texts(lm.model, lm.tokenizer, texts, settings)
        _PROFILE_SPEED[lm.identity] = float(batch.count.sum()) / max(time.perf_counter() - t0, 1e-6)
    tokens = 0
    for t in tasks:
        enc = lm.tokenizer(choose_texts(t.calibration, settings), truncation=True, max_length=settings.max_length)
        tokens += sum(len(ids) for ids in enc["input_ids"])
    return tokens / _PROFILE_SPEED[lm.identity]


def profile_job(lm, tasks: list, settings: ProfileSettings):
    """Job body: statistics per task (cached ones load without a forward pass); progress per task, per batch."""

    def run(ctx: JobContext) -> dict:
        for t in tasks:
            ctx.report(t.name, 0, min(settings.samples, len(t.calibration)))
        return profile_shared(ctx, lm, tasks, settings)

    return run


def tasks_of(stats: dict) -> list:
    """The Task objects behind profiled statistics (their meta records where each task came from)."""
    from diet.tasks import get_task

    out = []
    for name, st_ in stats.items():
        source = str(st_.meta.get("task_source", ""))
        out.append(get_task(source.removeprefix("file:") if source.startswith("file:") else name))
    return out


# ----------------------------------------------------------------------------------------------- methods

def needs_model(method: str, ms: MethodSettings) -> bool:
    """True when the mask needs the loaded model: weight norms, or general text profiled through it."""
    return "weights" in get_method(method).needs or needs_general(method, ms)


def stats_profile_settings(stats: dict, fallback: ProfileSettings) -> ProfileSettings:
    """The profiling settings the statistics were made with (so general text and the sweep use the same ones);
    `fallback` when the statistics do not record them."""
    recorded = next(iter(stats.values())).meta.get("settings") if stats else None
    if not isinstance(recorded, dict):
        return fallback
    try:
        return ProfileSettings(**recorded)
    except (TypeError, DietError):
        return fallback


def general_key(lm, source: str, ps: ProfileSettings) -> str:
    """Session key of general-text statistics: the source as chosen (before a Hub source is resolved, which the
    page never waits for) through the engine's one key function."""
    return model_key(lm, source=source, profile=ps.key_fields())


def cached_general(lm, source: str, ps: ProfileSettings):
    """General-text statistics read from the disk cache without a forward pass, or None. Only for local sources
    (the shipped corpus, a file): resolving a Hub source needs the network, which a page never waits for."""
    from diet.general import HUB, general_task

    if source == "auto" or source in HUB:
        return None
    task = general_task(source)
    if not is_profiled(lm, task, ps):
        return None
    return profile_tasks(lm, [task], ps)["general"]


def general_job(lm, source: str, ps: ProfileSettings):
    """Job body: profile general text once (a forward pass; cached on disk), progress per batch, cancellable.
    Returns {general_key: Stats} for the session's memo."""

    def run(ctx: JobContext) -> dict:
        from diet.general import general_task

        ctx.note(f"reading the general text ({source})")
        task = general_task(source, ctx.note)
        ctx.report("general text", 0, min(ps.samples, len(task.calibration)))
        out = profile_shared(ctx, lm, [task], ps, progress=lambda _n, d, t: ctx.report("general text", d, t))
        return {general_key(lm, source, ps): out["general"]}

    return run


def method_result(lm, stats: dict, settings: MaskSettings, ms: MethodSettings, unit: str = "mlp",
                  general=None, weights: dict | None = None, general_source: str | None = None) -> MaskResult:
    """The mask of `ms.method`: what diet.api.method_mask computes, from inputs the page already holds.

    Why not call method_mask on every widget change: it resolves the general-text source (the network for a Hub
    source) and re-reads the weight norms each time; the page holds both once (general statistics from a job,
    weight norms per model), so a slider move stays instant. `lm` None: the shape comes from the statistics (the
    methods that read neither weights nor general text need no model)."""
    shape = None
    if lm is not None:
        from diet.adapters import model_shape

        shape = model_shape(lm.model, unit)
    result = run_method(ms.method, MethodInputs(stats, general, weights, shape), settings, ms)
    if general is not None:  # provenance (the source actually used: "auto" resolves to one); in the mask JSON too
        result.summary["general_source"] = str(general.meta.get("task_source") or general_source or "?"
                                               ).removeprefix("general:")
    return result


# ----------------------------------------------------------------------------------------------- masks


COMPENSATION = {"none": "none (the method's own: FLAP keeps its bias)",
                "bias": "bias: removed units' mean contribution added back",
                "lstsq": "lstsq: refit the output projection from the kept units (layer by layer, at pruning)"}


def with_compensation(result: MaskResult, comp: str, stats: dict, ms: MethodSettings, general=None) -> MaskResult:
    """The mask with the compensation chosen next to the method: "bias" gives it the mean input of its calibration
    data (as diet.methods.run_method does); "lstsq" is marked in the summary and done when the model is pruned."""
    from dataclasses import replace

    from diet.methods import calibration_means

    if comp == "none" or result.summary.get("compensation") == comp:
        return result
    means = result.compensation
    if comp == "bias" and means is None:
        means = calibration_means(MethodInputs(mask_stats(result, stats), general, shape=result.shape), ms)
    elif comp == "lstsq":
        means = None
    return replace(result, compensation=means, summary={**result.summary, "compensation": comp})


def lstsq_settings(result: MaskResult):
    """CompensationSettings for pruning this result (None unless its compensation is lstsq)."""
    from diet.settings import CompensationSettings

    return CompensationSettings(method="lstsq") if result.summary.get("compensation") == "lstsq" else None


def pruned_copy(lm, result: MaskResult, stats: dict):
    """The pruned model of a mask, with its lstsq refit (on the calibration texts of the mask's tasks) if any."""
    comp = lstsq_settings(result)
    if comp is None:
        return prune_copy(lm, result)
    from diet.compensate import fit_texts

    return prune_copy(lm, result, comp, fit_texts(tasks_of(mask_stats(result, stats)), comp))


def ranked_scores(stats: dict, score: str) -> M.RankedScores:
    """The tasks' scores with their per-layer ranks and tie scores: computed once per (statistics, score)."""
    from diet.methods import unit_scores

    return M.RankedScores.of(np.stack([unit_scores(stats[n], score) for n in stats]))


def diet_mask(stats: dict, settings: MaskSettings, ranked: M.RankedScores) -> MaskResult:
    """diet.api.build_mask(stats, settings), the same result, from `ranked_scores(stats, settings.score)`: what a
    slider move on the Masks page runs (tests/test_app.py checks the two agree on random statistics)."""
    names = list(stats)
    if len(names) != len(ranked.scores):
        raise DietError("the ranked scores are not those of these statistics")
    if settings.merge == "threshold":
        settings.resolved_threshold(len(names))  # refuses k > T, as build_mask does
    task_masks, mask = M.build_masks(None, settings, ranked)
    v = M.votes(task_masks)
    shape = stats[names[0]].shape
    summary = summarize(mask, task_masks, shape, "diet", MethodSettings(method="diet"))
    return MaskResult(names, settings, task_masks, mask, v, shape, summary,
                      ranking=M.vote_ranking(v, ranked.scores, ranked.tie))


# ----------------------------------------------------------------------------------------------- evaluation


def evaluate_dense_and_pruned(ctx: JobContext, lm, make_pruned, digest: str, tasks: list, settings: EvalSettings,
                              memo: dict, shown: str = "pruned") -> dict:
    """The body both comparison jobs share (DIET masks on page 3, DISP index sets on the DISP page): the engine's
    cached comparison (`diet.compare.compare_models`) wired to the job's progress, notes, cancel and waits."""
    return compare_models(lm, make_pruned, digest, tasks, settings, memo, progress=ctx.report, note=ctx.note,
                          should_stop=ctx.should_stop, on_wait=ctx.wait_for, cache=CountingCache(), shown=shown)


def compare_job(lm, result: MaskResult, tasks: list, settings: EvalSettings, memo: dict, stats: dict | None = None):
    """Job body: dense vs pruned on the same tasks, parameters, size and measured forward speed."""

    def run(ctx: JobContext) -> dict:
        digest = result.digest()
        out = {"digest": digest, "settings": asdict(result.settings), "eval": asdict(settings),
               "sparsity": result.summary["unit_sparsity"], "described": settings_summary(result)}
        out.update(evaluate_dense_and_pruned(ctx, lm, lambda: pruned_copy(lm, result, stats or {}), digest, tasks,
                                             settings, memo))
        return out

    return run


def export_folder(lm, tag: str, sparsity: float) -> str:
    """Default export folder ~/diet-exports/<model>-<tag>-s<percent>: a readable, model-safe name per mask."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(lm.spec.name).name)
    return str(Path.home() / "diet-exports" / f"{name}-{tag}-s{round(sparsity * 100)}")


def sweep_total(settings) -> int:
    """Cells of a sweep: (dense + every pruned model) × evaluation tasks; each is one cached number."""
    from diet.sweep import cells

    return (1 + len(cells(settings))) * len(settings.eval_tasks or settings.tasks)


def sweep_job(lm, settings, ps: ProfileSettings, mask: MaskSettings, ms: MethodSettings):
    """Job body: diet.sweep.run_sweep (methods × sparsities × tasks, each cell cached on disk), with its progress
    per cell and its cancel between cells (finished cells stay cached: run again to resume).

    The statistics it needs are loaded (or profiled, with progress) first, so run_sweep then finds them cached."""
    from diet.sweep import run_sweep

    total = sweep_total(settings)

    def run(ctx: JobContext) -> dict:
        from diet.general import general_task
        from diet.tasks import get_task

        tasks = [get_task(t) for t in settings.tasks]
        if any(needs_general(m, ms) for m in settings.methods):
            ctx.note(f"reading the general text ({settings.general})")
            tasks.append(general_task(settings.general, ctx.note))
        for t in tasks:
            ctx.report(f"statistics: {t.name}", 0, min(ps.samples, len(t.calibration)))
        profile_shared(ctx, lm, tasks, ps, progress=lambda n, d, t: ctx.report(f"statistics: {n}", d, t))
        ctx.report("cells", 0, total)
        counts = {"cached": 0, "evaluated": 0}

        def progress(cached: int, evaluated: int, all_cells: int) -> None:
            counts.update(cached=cached, evaluated=evaluated)
            ctx.report("cells", cached + evaluated, all_cells)

        rows = run_sweep(lm, settings, ps, mask, ms, say=ctx.note, progress=progress, should_stop=ctx.should_stop)
        return {"rows": rows, **counts, "total": total, "settings": asdict(settings), "mask": asdict(mask),
                "method": asdict(ms), "profile": asdict(ps)}

    return run


def counts_notes(results: list) -> list[str]:
    """One line per kind of note on the item counts of evaluation results: previews, then tasks whose file gave
    items to calibration (the automatic split) or repeats items. [] when every task was scored whole and plain."""
    out = []
    previews = [r for r in results if r.preview]
    if previews:
        out.append("Preview: " + ", ".join(f"{r.task} first {r.n} of {r.total} items" for r in previews)
                   + ". Preview numbers are noisy and not comparable with published ones; set items to 0 for all.")
    held = [r for r in results if r.calibration_items or r.repeats]
    if held:
        out.append("Item counts: " + "; ".join(f"{r.task}: {r.note}" for r in held) + ".")
    return out


# ----------------------------------------------------------------------------------------------- export


def export_job(lm, result: MaskResult, out: str, mode: str | None, overwrite: bool, optional: dict,
               stats: dict | None = None):
    """Job body: export_model with the page's `optional` arguments (GGUF type, rounding, speed, evaluation table)
    and, for an lstsq mask, the refit's settings and texts. The loaded model is shared: export prunes a copy."""

    def run(ctx: JobContext) -> str:
        from diet.export import export_model

        ctx.report("export", 0, 1)
        ctx.note(f"writing {out}")
        comp = lstsq_settings(result)
        if comp is not None:
            from diet.compensate import fit_texts

            optional.update(compensation=comp, texts=fit_texts(tasks_of(mask_stats(result, stats or {})), comp))
        path = export_model(lm, result, out, mode=mode, overwrite=overwrite, say=ctx.note, **optional)
        ctx.report("export", 1, 1)
        return str(path)

    return run
