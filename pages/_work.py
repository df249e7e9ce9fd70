"""The app's background work and pure helpers — no Streamlit import, so it runs in worker threads and in tests.

Why a separate module: every function here is called either from a worker thread (`diet.jobs.Job`), where calling
`st.*` is not allowed, or from tests without a running app. The pages only wire widgets to these functions.
Everything goes through the engine's public API (diet.api, diet.evaluate, diet.export, diet.tasks, diet.viz).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import asdict
from pathlib import Path

from diet.api import MaskResult, cluster_pool, is_profiled, model_key, profile_on_cluster, profile_tasks, prune_copy
from diet.compare import compare_models, pruned_speed
from diet.errors import Cancelled, DietError
from diet.evaluate import EvalSettings
from diet.jobs import JobContext
from diet.methods import needs_general
from diet.report import settings_summary
from diet.settings import ClusterSettings, MaskSettings, MethodSettings, ProfileSettings

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


# ----------------------------------------------------------------------------------------------- profiling


def profile_shared(ctx: JobContext, lm, tasks: list, settings: ProfileSettings, progress=None) -> dict:
    """profile_tasks for a job: statistics of the same (model, settings, task) are computed once, whoever asks for
    them first (the engine's cache lock); the others say they wait, then read them."""
    return profile_tasks(lm, tasks, settings, progress=progress or ctx.report, should_stop=ctx.should_stop,
                         on_wait=ctx.wait_for)


# ----------------------------------------------------------------------------------------------- cluster


def cluster_settings(address: str) -> ClusterSettings | None:
    """The Model and tasks page's cluster address in settings: None (this process) when it is empty."""
    address = address.strip()
    return ClusterSettings(address=address) if address else None


def cluster_report(ctx: JobContext):
    """A cluster run in the job panel: one progress line of units, and the retries and every worker's status as
    the job's note (the CLI's bar shows the same)."""

    def report(p) -> None:
        ctx.report("cluster units", p.done, p.total)
        ctx.note(p.line())

    return report


def on_cluster(ctx: JobContext, lm, cluster: ClusterSettings):
    """Workers on `cluster` holding the session's model; refused when they loaded other weights than this
    session's (their results would land under other cache keys than the pages read)."""
    pool = cluster_pool(cluster, lm.spec, say=ctx.note, should_stop=ctx.should_stop)
    if pool.model.identity != lm.identity:
        pool.close()
        raise DietError(f"the cluster's workers loaded other weights ({pool.model.identity}) than this app "
                        f"({lm.identity}): give them the same model path")
    return pool


def profile_job(lm, tasks: list, settings: ProfileSettings, cluster: ClusterSettings | None = None):
    """Job body: statistics per task (cached ones load without a forward pass); progress per task, per batch.
    With `cluster`, the tasks not cached yet are profiled there first (one unit per task), then read."""

    def run(ctx: JobContext) -> dict:
        missing = [t for t in tasks if not is_profiled(lm, t, settings)]
        if cluster is not None and missing:
            with on_cluster(ctx, lm, cluster) as pool:
                profile_on_cluster(pool, missing, settings, progress=cluster_report(ctx),
                                   should_stop=ctx.should_stop)
        for t in tasks:
            ctx.report(t.name, 0, min(settings.samples, len(t.calibration)))
        return profile_shared(ctx, lm, tasks, settings)

    return run


# ----------------------------------------------------------------------------------------------- methods


def general_key(lm, source: str, ps: ProfileSettings) -> str:
    """Session key of general-text statistics: the source as chosen (before a Hub source is resolved, which the
    page never waits for) through the engine's one key function."""
    return model_key(lm, source=source, profile=ps.key_fields())


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


# ----------------------------------------------------------------------------------------------- masks


COMPENSATION = {"none": "none (the method's own: FLAP keeps its bias)",
                "bias": "bias: removed units' mean contribution added back",
                "lstsq": "lstsq: refit the output projection from the kept units (layer by layer, at pruning)"}


# ----------------------------------------------------------------------------------------------- evaluation


def evaluate_dense_and_pruned(ctx: JobContext, lm, make_pruned, digest: str, tasks: list, settings: EvalSettings,
                              memo: dict, shown: str = "pruned", speed: bool = True) -> dict:
    """The body both comparison jobs share (DIET masks on page 3, DISP index sets on the DISP page): the engine's
    cached comparison (`diet.compare.compare_models`) wired to the job's progress, notes, cancel and waits.
    `speed` False: no forward-speed measurement (page 3 measures it on demand, `speed_job`)."""
    return compare_models(lm, make_pruned, digest, tasks, settings, memo, progress=ctx.report, note=ctx.note,
                          should_stop=ctx.should_stop, on_wait=ctx.wait_for, shown=shown, speed=speed)


def compare_job(lm, result: MaskResult, tasks: list, settings: EvalSettings, memo: dict, stats: dict | None = None):
    """Job body: dense vs pruned on the same tasks, parameters and size — the work `diet eval` does on the dense
    model and on the pruned folder, plus pruning the copy. The forward speed is `speed_job`'s, on demand."""

    def run(ctx: JobContext) -> dict:
        digest = result.digest()
        out = {"digest": digest, "settings": asdict(result.settings), "eval": asdict(settings),
               "sparsity": result.summary["unit_sparsity"], "described": settings_summary(result)}
        out.update(evaluate_dense_and_pruned(ctx, lm, lambda: prune_copy(lm, result, stats=stats), digest, tasks,
                                             settings, memo, speed=False))
        return out

    return run


def speed_job(lm, result: MaskResult, memo: dict, stats: dict | None = None, again: bool = False):
    """Job body: the dense and pruned models' forward speed, side by side (`diet.compare.pruned_speed`), kept in
    the session's `memo` by the mask's digest; `again` measures anew. Progress in two steps: prune, time."""

    def run(ctx: JobContext) -> dict:
        ctx.report("forward speed", 0, 2)

        def make():
            pruned = prune_copy(lm, result, stats=stats)
            if ctx.should_stop():  # the last moment before the timing (which runs to its end, a few seconds)
                raise Cancelled("speed measurement cancelled")
            ctx.report("forward speed", 1, 2)
            return pruned

        out = pruned_speed(lm, make, result.digest(), memo, ctx.note, again)
        ctx.report("forward speed", 2, 2)
        return out

    return run


def sweep_job(lm, settings, ps: ProfileSettings, mask: MaskSettings, ms: MethodSettings,
              cluster: ClusterSettings | None = None):
    """Job body: diet.sweep.run_sweep (methods × sparsities × tasks, each cell cached on disk), with its progress
    per cell and its cancel between cells (finished cells stay cached: run again to resume).

    The statistics it needs are loaded (or profiled, with progress) first, so run_sweep then finds them cached.
    With `cluster`, statistics and cells not cached yet are computed by the cluster's workers instead."""
    from diet.sweep import run_sweep, sweep_on_cluster, total_cells

    total = total_cells(settings)

    def run(ctx: JobContext) -> dict:
        from diet.general import general_task
        from diet.tasks import get_task

        counts = {"cached": 0, "evaluated": 0}

        def progress(cached: int, evaluated: int, all_cells: int) -> None:
            counts.update(cached=cached, evaluated=evaluated)
            ctx.report("cells", cached + evaluated, all_cells)

        if cluster is not None:
            with on_cluster(ctx, lm, cluster) as pool:
                rows = sweep_on_cluster(pool, settings, ps, mask, ms, say=ctx.note, progress=cluster_report(ctx),
                                        should_stop=ctx.should_stop, sweep_progress=progress)
            return {"rows": rows, **counts, "total": total, "settings": asdict(settings), "mask": asdict(mask),
                    "method": asdict(ms), "profile": asdict(ps)}
        tasks = [get_task(t) for t in settings.tasks]
        if any(needs_general(m, ms) for m in settings.methods):
            ctx.note(f"reading the general text ({settings.general})")
            tasks.append(general_task(settings.general, ctx.note))
        for t in tasks:
            ctx.report(f"statistics: {t.name}", 0, min(ps.samples, len(t.calibration)))
        profile_shared(ctx, lm, tasks, ps, progress=lambda n, d, t: ctx.report(f"statistics: {n}", d, t))
        ctx.report("cells", 0, total)
        rows = run_sweep(lm, settings, ps, mask, ms, say=ctx.note, progress=progress, should_stop=ctx.should_stop)
        return {"rows": rows, **counts, "total": total, "settings": asdict(settings), "mask": asdict(mask),
                "method": asdict(ms), "profile": asdict(ps)}

    return run


# ----------------------------------------------------------------------------------------------- export


def export_job(lm, result: MaskResult, out: str, mode: str | None, overwrite: bool, optional: dict,
               stats: dict | None = None, profile: ProfileSettings | None = None):
    """Job body: the CLI's pipeline (`diet.pipeline.prune_to_folder`: compensation, prune, export, summary.json)
    with the page's `optional` arguments (GGUF type, rounding, speed, evaluation table). `profile`: the settings
    the statistics were profiled with (default: what they record). The loaded model is shared: export prunes a
    copy."""

    def run(ctx: JobContext) -> str:
        from diet.api import recorded_profile_settings
        from diet.pipeline import prune_to_folder

        ctx.report("export", 0, 1)
        ctx.note(f"writing {out}")
        ps = profile or recorded_profile_settings(stats or {}, ProfileSettings())
        path, _ = prune_to_folder(lm, result, out, ps, stats, mode=mode, overwrite=overwrite, say=ctx.note,
                                  **optional)
        ctx.report("export", 1, 1)
        return str(path)

    return run


# ----------------------------------------------------------------------------------------------- try it

TRY_MODE = "one after the other (dense, then pruned)"  # what the panel says: this machine runs them in turn


def pruned_for_try(lm, result: MaskResult, held: dict, stats: dict | None = None):
    """The pruned copy the Try-it panel answers with, kept in `held` (the session's) for the latest mask only: a
    second prompt on the same mask costs no pruning, and only one pruned copy is ever held next to the dense."""
    digest = result.digest()
    if held.get("digest") != digest:
        held.clear()
        held.update(digest=digest, model=prune_copy(lm, result, stats=stats))
    return held["model"]


def generate_job(lm, result: MaskResult, prompt: str, settings, held: dict, stats: dict | None = None):
    """Job body: the dense answer, then the pruned one (one model at a time computes), each streamed into the
    job's snapshot as {"dense": Generation, "pruned": Generation} (`JobContext.share`). Stop (the job's cancel)
    ends the answer being written and keeps it; the other one is then not started."""
    from diet.api import generate

    def run(ctx: JobContext) -> dict:
        answers: dict = {}

        def show(label):
            def update(g) -> None:
                answers[label] = g
                ctx.share(dict(answers))  # a new dict each time: the page reads a consistent pair
                ctx.report(label, g.new_tokens, settings.max_new_tokens)
            return update

        ctx.note("dense model answering")
        generate(lm, prompt, settings, "dense", on_update=show("dense"), should_stop=ctx.should_stop)
        if not ctx.should_stop():
            ctx.note("pruning a copy for the pruned answer" if held.get("digest") != result.digest() else
                     "pruned model answering")
            model = pruned_for_try(lm, result, held, stats)
            generate(lm, prompt, settings, "pruned", model=model, on_update=show("pruned"),
                     should_stop=ctx.should_stop)
        return {"prompt": prompt, "digest": result.digest(), "settings": asdict(settings), "mode": TRY_MODE,
                "answers": dict(answers)}

    return run
