"""The DISP page's background work and pure helpers — no Streamlit import, so it runs in worker threads and in tests.

Why a module of its own (and not pages/_work.py): DISP keeps *five* index sets per layer instead of DIET's one MLP
mask, so its accounting and jobs differ; the DIET pages' helpers stay as they are. Everything goes
through the engine's public API (diet.disp, diet.evaluate; figures from diet.disp.views) and the evaluation cache of
pages/_work.py, so a dense number measured on the Prune and evaluate page is reused here and vice versa.

How results come back: a job body writes its result into a plain dict that the page keeps in its session
(`memo` / `box`, as `compare_job` does with the evaluation memo) and also returns it. The page reads that dict, so
the result arrives whichever page happens to collect the finished job.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from diet.api import model_key
from diet.disp import (
    DispMaskResult,
    DispSettings,
    build_disp_masks,
    disp_copy,
    disp_shape,
    is_disp_profiled,
    profile_disp,
)
from diet.errors import DietError
from diet.evaluate import EvalSettings
from diet.folders import default_export_folder
from diet.jobs import JobContext
from diet.settings import ProfileSettings
from pages._work import evaluate_dense_and_pruned

# ----------------------------------------------------------------------------------------------- statistics


def disp_key(lm, tasks: list, ps: ProfileSettings) -> str:
    """Session key of DISP statistics (the tasks' data, the profiling settings) through the engine's one key
    function."""
    return model_key(lm, kind="disp-page/1", tasks=[t.fingerprint() for t in tasks], profile=ps.key_fields())


def missing_tasks(lm, tasks: list, ps: ProfileSettings) -> list:
    """The tasks whose statistics at the five positions are not cached yet (they need a forward pass).

    Refuses a model DISP cannot cut (another family, or one already DISP-sliced) first, with the engine's message:
    said when the page opens, not after a profiling job."""
    disp_shape(lm.model)
    return [t for t in tasks if not is_disp_profiled(lm, t, ps)]


def load_cached(lm, tasks: list, ps: ProfileSettings) -> dict:
    """{task: {position: Stats}} from the disk cache. Refuses rather than silently running the model: a page run
    must never block on a forward pass (that is the profiling job's work)."""
    missing = missing_tasks(lm, tasks, ps)
    if missing:
        raise DietError(f"not profiled at the five positions yet: {', '.join(t.name for t in missing)}")
    return profile_disp(lm, tasks, ps)


def disp_profile_job(lm, tasks: list, ps: ProfileSettings, memo: dict):
    """Job body: DISP statistics per task (cached ones load without a forward pass), progress per task and batch,
    cancel between batches (nothing is written then). The result goes into `memo` under `disp_key`."""
    key = disp_key(lm, tasks, ps)

    def run(ctx: JobContext) -> dict:
        for t in tasks:
            ctx.report(t.name, 0, min(ps.samples, len(t.calibration)))
        stats = profile_disp(lm, tasks, ps, progress=ctx.report, should_stop=ctx.should_stop)
        memo[key] = stats
        return {key: stats}

    return run


# ----------------------------------------------------------------------------------------------- index sets


def timed_build(stats: dict, settings: DispSettings) -> tuple[DispMaskResult, float]:
    """build_disp_masks and the seconds it took: numpy on the cached statistics, no model involved."""
    t0 = time.perf_counter()
    result = build_disp_masks(stats, settings)
    return result, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------- evaluation


def disp_compare_job(lm, result: DispMaskResult, tasks: list, settings: EvalSettings, memo: dict, box: dict):
    """Job body: dense vs the DISP-pruned copy (`disp_copy` with these index sets) on the same tasks, plus
    parameters, size in memory and measured forward speed — page 3's loop (`evaluate_dense_and_pruned`), so the
    dense numbers are shared with the Prune and evaluate page. The result also lands in box["comparison"]."""
    digest = result.digest()

    def run(ctx: JobContext) -> dict:
        out = {"model": lm.identity, "digest": digest, "settings": asdict(result.settings), "eval": asdict(settings),
               "block_kept_fraction": result.summary["block_kept_fraction"],
               "param_sparsity": result.summary["param_sparsity"]}
        out.update(evaluate_dense_and_pruned(ctx, lm, lambda: disp_copy(lm.model, result.index_sets()), digest,
                                             tasks, settings, memo, shown="DISP"))
        box["comparison"] = out
        return out

    return run


# ----------------------------------------------------------------------------------------------- export


def default_folder(lm, settings: DispSettings) -> str:
    return str(default_export_folder(lm.spec.name, "disp", settings.sparsity))


def disp_export_job(lm, tasks: list, out: str, ps: ProfileSettings, settings: DispSettings, overwrite: bool,
                    box: dict):
    """Job body: `diet.disp.prune_disp` — the very folder the CLI's `prune --method disp` writes (index sets
    from the same cached statistics and settings, sliced copy, own config + modelling file, disp.json,
    summary.json). It refuses a non-empty folder before any work. The folder's path lands in box["exported"]."""

    def run(ctx: JobContext) -> str:
        from diet.disp import prune_disp

        ctx.report("export", 0, 1)
        ctx.note(f"writing {out}")
        folder, _ = prune_disp(lm, tasks, out, method="disp", profile=ps, disp=settings, overwrite=overwrite)
        ctx.report("export", 1, 1)
        box["exported"] = str(folder)
        return str(folder)

    return run
