"""The DISP page's background work and pure helpers — no Streamlit import, so it runs in worker threads and in tests.

Why a module of its own (and not pages/_work.py): DISP keeps *five* index sets per layer instead of DIET's one MLP
mask, so its accounting, labels and figures differ; the DIET pages' helpers stay as they are. Everything goes
through the engine's public API (diet.disp, diet.evaluate, diet.viz) and the evaluation cache of
pages/_work.py, so a dense number measured on the Prune and evaluate page is reused here and vice versa.

How results come back: a job body writes its result into a plain dict that the page keeps in its session
(`memo` / `box`, as `compare_job` does with the evaluation memo) and also returns it. The page reads that dict, so
the result arrives whichever page happens to collect the finished job.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from diet import masks as M
from diet import viz
from diet.api import model_key
from diet.disp import POSITION_SHORT as SHORT
from diet.disp import POSITION_WHAT as WHAT
from diet.disp import (
    POSITIONS,
    RESIDUAL,
    DispMaskResult,
    DispSettings,
    build_disp_masks,
    disp_copy,
    disp_shape,
    is_disp_profiled,
    profile_disp,
    unit_word,
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


def position_rows(result: DispMaskResult) -> list[dict]:
    """One row per position: what it selects, its width, how much is kept, how much the task masks agree."""
    rows = []
    for pos in POSITIONS:
        kept = M.kept_per_layer(result.masks[pos])
        width = int(result.masks[pos].shape[1])
        lo, hi = int(kept.min()), int(kept.max())
        row = {"position": pos, "selects": WHAT[pos], "pruned": pos in result.settings.positions, "width": width,
               "kept per layer": f"{lo}" if lo == hi else f"{lo}–{hi}", "kept": float(kept.sum() / kept.size / width)}
        T = len(result.tasks)
        if T > 1:
            J = np.asarray(result.summary["jaccard"][pos], dtype=np.float64)
            C = viz.chance_matrix(result.task_masks[pos])
            off = ~np.eye(T, dtype=bool)
            row["mean Jaccard between tasks"] = float(J[off].mean())
            row["chance"] = float(C[off].mean())
        rows.append(row)
    return rows


def _retitle(fig, title: str, **axes):
    fig.update_layout(title_text=title, **axes)
    return fig


def position_figures(result: DispMaskResult, stats: dict, pos: str) -> list[tuple[str, str, object]]:
    """(key, caption, figure) for one position: kept dims per layer, votes, kept count per layer, task overlap.

    Residual dims are shown in their own order: dim d is the same residual coordinate in every layer, so vertical
    stripes mean the layers keep the same dims. MLP channels carry no order: they are sorted by score (DIET's view).
    """
    names, T = list(result.tasks), len(result.tasks)
    mask, width = result.masks[pos], result.masks[pos].shape[1]
    what, word = WHAT[pos], unit_word(pos)
    order = None
    if pos not in RESIDUAL:
        score = np.mean([M.normalise(M.scores_from(stats[n][pos], result.settings.score)) for n in names], axis=0)
        order = viz.order_by(score)
    bins = len(viz.bin_edges(width)) - 1
    xtitle = (f"{word}s sorted by mean score, highest first" if order is not None
              else f"{word} (the same dim in every layer)") + f" — {width} per layer" + (
        f", {bins} bins" if bins < width else "")
    out = [(f"{pos}-kept", f"Each row is a layer, each column {'a bin of ' if bins < width else ''}{what}; colour = "
            "fraction kept (dark = kept, light = removed)."
            + (" Vertical stripes: the layers keep the same residual dims." if order is None else ""),
            _retitle(viz.kept_overview(mask, "", order, unit=word), f"{SHORT[pos]}: which {what} are kept",
                     xaxis_title=xtitle))]
    if T > 1:  # MLP channels: each layer's sorted by votes (their order means nothing); residual dims in place
        sort = order is not None
        out.append((f"{pos}-votes", f"Colour = in how many of the {T} task masks each {word} is kept; the merged "
                    "index set keeps the most-voted ones.",
                    _retitle(viz.votes_map(result.votes[pos], T, sort=sort, unit=word),
                             f"{SHORT[pos]}: votes per {word}",
                             xaxis_title=f"{word}s sorted by votes, most first" if sort
                             else f"{word} (the same dim in every layer)")))
    per_task = result.task_masks[pos].sum(-1) if T > 1 else None
    out.append((f"{pos}-layers", f"{word[0].upper()}{word[1:]}s kept per layer by the merged index set (bars) out of "
                "the width (line); one line per task where their counts differ.",
                _retitle(viz.kept_per_layer(M.kept_per_layer(mask), [width] * mask.shape[0], per_task, names),
                         f"{SHORT[pos]}: kept {word}s per layer", yaxis_title=f"{word}s")))
    if T > 1:
        out.append((f"{pos}-jaccard", "Jaccard overlap |A∩B| / |A∪B| of two task masks at this position over all "
                    "layers (1 = identical); hover for the chance level of independent masks of the same sizes.",
                    _retitle(viz.jaccard_matrix(np.asarray(result.summary["jaccard"][pos]), names,
                                                viz.chance_matrix(result.task_masks[pos])),
                             f"{SHORT[pos]}: overlap between task masks (Jaccard)")))
    return out


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
