"""Sweep: methods × sparsities × tasks → a tidy results table and an accuracy-vs-sparsity plot.

Why cell-level caching: a sweep is dozens of prune-and-evaluate runs; each (method, sparsity, evaluation task) cell
is stored in the ArtifactCache under a key that hashes everything that determines its number (model identity, the
statistics' keys, every setting, the evaluation task's fingerprint and limit). Re-running the same command skips
finished cells, so an interrupted sweep resumes where it stopped and a wider sweep reuses the narrower one.

Masks come from cached statistics (no forward pass); each cell then prunes a copy of the model (physical slicing,
with FLAP's bias where the method has one) and evaluates it. `single-task` expands into one row per task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from diet.errors import DietError
from diet.settings import CompensationSettings, MaskSettings, MethodSettings, ProfileSettings, sha256_of

Say = Callable[[str], None]
COLUMNS = ("method", "variant", "sparsity", "unit", "unit_sparsity", "param_sparsity", "task", "metric", "value",
           "acc", "acc_norm", "n", "preview", "seconds", "compensation")


@dataclass(frozen=True)
class SweepSettings:
    """One sweep. Every field is part of each cell's cache key (except where noted)."""

    methods: tuple[str, ...] = ("diet", "task-agnostic", "wanda-sp", "random")  # registry names (diet.methods)
    sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)  # fractions of the unit removed
    tasks: tuple[str, ...] = ()  # calibration tasks of the task-aware methods; also the evaluation tasks
    eval_tasks: tuple[str, ...] | None = None  # evaluation tasks when different from `tasks`
    limit: int | None = None  # evaluation items per task (None = all; a limit marks the rows as a preview)
    general: str = "auto"  # general text source (diet.general) for the task-agnostic baselines and task fusion
    batch_size: int = 16  # evaluation batch size (does not change a number; not in the key)
    compensations: tuple[str, ...] = ("none",)  # after removal: "none", "bias", "lstsq" (diet.compensate); each
    #                                             method × sparsity is evaluated once per compensation

    def __post_init__(self) -> None:
        from diet.methods import get_method

        if not self.methods or not self.sparsities or not self.tasks:
            raise DietError("a sweep needs at least one method, one sparsity and one task")
        for m in self.methods:
            get_method(m)
        for s in self.sparsities:
            if not 0.0 <= s < 1.0:
                raise DietError(f"sparsity must be in [0, 1), got {s}")
        if self.limit is not None and self.limit < 1:
            raise DietError(f"limit must be at least 1, got {self.limit}")
        from diet.settings import COMPENSATIONS

        for c in self.compensations:
            if c not in COMPENSATIONS:
                raise DietError(f"unknown compensation {c!r}: use one of {', '.join(COMPENSATIONS)}")


def cells(settings: SweepSettings) -> list[tuple[str, str, float, str]]:
    """(method, variant, sparsity, compensation) of every pruned model the sweep evaluates; variant = task for
    single-task."""
    out = []
    for method in settings.methods:
        variants = list(settings.tasks) if method == "single-task" else [""]
        out += [(method, v, s, c) for v in variants for s in settings.sparsities for c in settings.compensations]
    return out


def total_cells(settings: SweepSettings) -> int:
    """Evaluated numbers of a sweep: (dense + every pruned model) × evaluation tasks; each is one cached cell."""
    return (1 + len(cells(settings))) * len(settings.eval_tasks or settings.tasks)


def _cell_key(base: dict, method: str, variant: str, sparsity: float, ms: MethodSettings, task,
              comp: dict | None = None) -> str:
    extra = {"compensation": comp} if comp and comp.get("method") != "none" else {}
    return sha256_of({**base, "method": method, "variant": variant, "sparsity": sparsity,
                      "method_settings": asdict(ms), "eval_task": task.fingerprint(), **extra})[:24]


def _row(method: str, variant: str, sparsity: float, summary: dict, unit: str, r, comp: str = "none") -> dict:
    return {"method": method, "variant": variant, "sparsity": sparsity, "unit": unit,
            "unit_sparsity": float(summary.get("unit_sparsity", 0.0)),
            "param_sparsity": float(summary.get("param_sparsity", 0.0)), "task": r.task, "metric": r.metric,
            "value": r.value, "acc": r.acc, "acc_norm": r.acc_norm, "n": r.n, "preview": r.preview,
            "seconds": round(r.seconds, 3), "compensation": comp}


@dataclass
class SweepInputs:
    """What every cell of one sweep shares: statistics, method inputs, the base of the cell keys, the lstsq texts."""

    inputs: object  # diet.methods.MethodInputs: task and general statistics, weight norms, shape
    base: dict  # everything of a cell key that is the same for every cell
    eval_tasks: list
    eval_settings: object  # diet.evaluate.EvalSettings
    lstsq: CompensationSettings
    fit: list[str] | None  # the lstsq fit texts (None when no cell refits)


def prepare(lm, settings: SweepSettings, profile: ProfileSettings, mask: MaskSettings, method: MethodSettings,
            cache, say: Say, lstsq: CompensationSettings) -> SweepInputs:
    """Statistics (cached or profiled), general text when a method needs it, weight norms and the key base."""
    from diet.adapters import model_shape
    from diet.api import profile_tasks, stats_key
    from diet.compensate import fit_texts
    from diet.evaluate import EvalSettings
    from diet.general import general_task
    from diet.methods import MethodInputs, needs_general, weight_stats
    from diet.profile import choose_texts
    from diet.tasks import get_task

    tasks = [get_task(t) for t in settings.tasks]
    stats = profile_tasks(lm, tasks, profile, cache=cache)
    general, g = None, None
    if any(needs_general(m, method) for m in settings.methods):
        g = general_task(settings.general, say)
        general = profile_tasks(lm, [g], profile, cache=cache)["general"]
    keys = {t.name: stats_key(lm, choose_texts(t.calibration, profile), profile) for t in tasks}
    if g is not None:
        keys["general"] = stats_key(lm, choose_texts(g.calibration, profile), profile)
    eval_settings = EvalSettings(limit=settings.limit, batch_size=settings.batch_size)
    base = {"kind": "sweep-cell/1", "model": lm.identity, "dtype": lm.spec.dtype, "stats": keys,
            "profile": profile.key_fields(), "mask": asdict(mask), "limit": settings.limit,
            "max_length": eval_settings.max_length}
    held = lm.model is not None  # a cluster's driver holds no model: each worker computes these from its own
    inputs = MethodInputs(stats, general, weight_stats(lm.model, profile.unit) if held else None,
                          model_shape(lm.model, profile.unit) if held else None)
    lstsq = replace(lstsq, method="lstsq")
    fit = fit_texts(tasks, lstsq) if "lstsq" in settings.compensations else None
    return SweepInputs(inputs, base, [get_task(t) for t in (settings.eval_tasks or settings.tasks)], eval_settings,
                       lstsq, fit)


def evaluate_cell(lm, si: SweepInputs, cell: tuple, mask: MaskSettings, ms: MethodSettings, unit: str,
                  hits: dict, keys: dict, cache) -> list[dict]:
    """Prune a copy for one cell (or use the dense model) and evaluate the tasks not cached yet; rows in task order.
    The cell's mask comes from the pipeline's mask step (`diet.pipeline.mask_for`) on the inputs gathered once."""
    from diet.api import prune_copy
    from diet.evaluate import evaluate_task
    from diet.pipeline import mask_for

    name, _variant, sparsity, comp = cell
    if name == "dense":
        model, summary = lm.model, {"unit_sparsity": 0.0, "param_sparsity": 0.0}
    else:
        result = mask_for(lm, None, replace(mask, sparsity=sparsity), ms, None, compensation=comp, inputs=si.inputs)
        model = prune_copy(lm, result, si.lstsq if comp == "lstsq" else None, si.fit)
        summary = result.summary
    rows = []
    for t in si.eval_tasks:
        if hits[t.name] is None:
            hits[t.name] = _row(name, cell[1], sparsity, summary, unit, evaluate_task(model, lm.tokenizer, t,
                                                                                      si.eval_settings), comp)
            if cache is not None:  # None on a cluster worker: the driver stores the rows
                cache.save_json("sweep", keys[t.name], hits[t.name])
        rows.append(hits[t.name])
    return rows


SweepProgress = Callable[[int, int, int], None]  # (cells read from the cache, cells evaluated now, cells in all)


@dataclass
class PendingCell:
    """A pruned model with at least one evaluation task not cached yet: what a `remote` runner computes."""

    slot: int  # its place among the sweep's models (rows come back in the in-process order)
    cell: tuple  # (method, variant, sparsity, compensation)
    ms: MethodSettings  # the method settings of this cell
    keys: dict  # evaluation task name -> cache key of its row
    hits: dict  # evaluation task name -> cached row, or None while missing

    @property
    def missing(self) -> list[str]:
        return [n for n, h in self.hits.items() if h is None]


Remote = Callable[[SweepInputs, list[PendingCell], Callable[[PendingCell, list[dict]], None]], None]


def run_sweep(lm, settings: SweepSettings, profile: ProfileSettings = ProfileSettings(),
              mask: MaskSettings = MaskSettings(), method: MethodSettings = MethodSettings(), cache=None,
              say: Say | None = None, lock: Callable | None = None,
              lstsq: CompensationSettings = CompensationSettings(method="lstsq"),
              progress: SweepProgress | None = None, should_stop: Callable[[], bool] | None = None,
              remote: Remote | None = None) -> list[dict]:
    """Every cell's rows (cached cells are read, not recomputed), plus the dense model's rows (sparsity 0).

    A cell here is one (model, evaluation task) number. `progress` is told after every cell; `should_stop` is polled
    between models and ends the sweep with `Cancelled` (finished cells stay cached: run it again to resume).
    `lock`: an optional context-manager factory held around each model evaluation (the heavy part), so a long
    sweep lets other torch jobs on a shared machine take turns between cells. `lstsq`: the knobs of the lstsq
    cells (ridge, texts per task...); it fits on the sweep's calibration tasks' texts.
    `remote(si, pending, store)`: computes every model with a cell not cached, elsewhere (a Ray cluster,
    diet/cluster/), calling `store(pending cell, rows)` as each arrives; the rows are cached here, under the same
    keys, the moment they arrive.
    """
    from contextlib import nullcontext

    from diet.cache import ArtifactCache
    from diet.profile import Cancelled

    cache = cache or ArtifactCache()
    say = say or (lambda m: None)
    lock = lock or nullcontext
    with lock():
        si = prepare(lm, settings, profile, mask, method, cache, say, lstsq)
    todo = [("dense", "", 0.0, "none")] + cells(settings)
    total, cached, evaluated = len(todo) * len(si.eval_tasks), 0, 0
    slots: list[list[dict] | None] = []
    pending: list[PendingCell] = []
    for i, (name, variant, sparsity, comp) in enumerate(todo):
        ms = replace(method, method=name, single_task=variant or method.single_task)
        knobs = si.lstsq.key_fields() if comp == "lstsq" else {"method": comp}
        keys = {t.name: _cell_key(si.base, name, variant, sparsity, ms, t, knobs) for t in si.eval_tasks}
        hits = {n: cache.load_json("sweep", k) for n, k in keys.items()}
        hit = sum(h is not None for h in hits.values())
        if hit == len(hits):
            slots.append(list(hits.values()))
            cached += hit
            if progress:
                progress(cached, evaluated, total)
            continue
        if remote is not None:
            pending.append(PendingCell(len(slots), (name, variant, sparsity, comp), ms, keys, hits))
            slots.append(None)
            cached += hit
            continue
        if should_stop is not None and should_stop():
            raise Cancelled("sweep cancelled: the finished cells are kept in the cache, run it again to resume")
        t0 = time.perf_counter()
        with lock():
            done = evaluate_cell(lm, si, (name, variant, sparsity, comp), mask, ms, profile.unit, hits, keys, cache)
        slots.append(done)
        cached, evaluated = cached + hit, evaluated + len(hits) - hit
        if progress:
            progress(cached, evaluated, total)
        say(f"[{i + 1}/{len(todo)}] {cell_label((name, variant, sparsity, comp))}: mean "
            f"{np.mean([r['value'] for r in done]):.4f} ({time.perf_counter() - t0:.0f} s)")
    if pending:
        def store(p: PendingCell, new: list[dict]) -> None:
            nonlocal evaluated
            for name, row in zip(p.missing, new, strict=True):
                cache.save_json("sweep", p.keys[name], row)
                p.hits[name] = row
                evaluated += 1
            slots[p.slot] = [p.hits[t.name] for t in si.eval_tasks]
            if progress:
                progress(cached, evaluated, total)

        remote(si, pending, store)
    return [r for s in slots for r in s]


# ---------------------------------------------------------------- on a Ray cluster (diet/cluster/, docs/scale.md)


def sweep_cell_unit(lm, memo: dict, si, cell: tuple, mask, ms, unit: str, missing: list[str]) -> list[dict]:
    """One sweep cell (one pruned model) evaluated on the evaluation tasks named in `missing`: their rows.

    `si` is the driver's `diet.sweep.SweepInputs` without the model's weight norms and shape (the driver holds no
    model); they are computed here once per worker, from the same dense weights the in-process path reads."""
    from diet.adapters import model_shape
    from diet.methods import weight_stats

    if ("weights", unit) not in memo:
        memo[("weights", unit)] = (weight_stats(lm.model, unit), model_shape(lm.model, unit))
    weights, shape = memo[("weights", unit)]
    si = replace(si, inputs=replace(si.inputs, weights=weights, shape=shape))
    hits = {t.name: (None if t.name in missing else {}) for t in si.eval_tasks}
    rows = evaluate_cell(lm, si, cell, mask, ms, unit, hits, {}, None)
    return [r for r, t in zip(rows, si.eval_tasks, strict=True) if t.name in missing]


def sweep_on_cluster(pool, sweep: SweepSettings, profile: ProfileSettings = ProfileSettings(),
                     mask: MaskSettings = MaskSettings(), method: MethodSettings = MethodSettings(), cache=None,
                     say: Say | None = None, lstsq: CompensationSettings = CompensationSettings(method="lstsq"),
                     progress=None, should_stop: Callable[[], bool] | None = None, sweep_progress=None) -> list[dict]:
    """`run_sweep` with its statistics profiled and its cells evaluated on the workers of `pool`
    (`diet.api.cluster_pool`): one unit per pruned model with a row not cached; rows come back in the in-process
    order and are cached under the in-process keys, each the moment it arrives. `progress(ClusterProgress)`;
    `sweep_progress(cached, evaluated, all)` as run_sweep's."""
    from diet.api import profile_on_cluster, resolve_task
    from diet.cache import ArtifactCache
    from diet.cluster import Unit
    from diet.general import general_task
    from diet.methods import needs_general

    cache = cache or ArtifactCache()
    tasks = [resolve_task(t) for t in sweep.tasks]
    if any(needs_general(m, method) for m in sweep.methods):
        tasks.append(general_task(sweep.general, say))
    profile_on_cluster(pool, tasks, profile, progress, should_stop, cache)

    def remote(si, pending, store) -> None:
        shared = pool.share(si)
        units = [Unit(cell_label(p.cell), sweep_cell_unit, (shared, p.cell, mask, p.ms, profile.unit, p.missing))
                 for p in pending]
        pool.run(units, lambda i, rows: store(pending[i], rows), progress, should_stop)

    return run_sweep(pool.model, sweep, profile, mask, method, cache, say,
                     lstsq=lstsq, progress=sweep_progress, remote=remote)


def cell_label(cell: tuple) -> str:
    """A pruned model in words: "diet @ 0.25", "single-task:facts @ 0.5", "pooled+lstsq @ 0.3"."""
    name, variant, sparsity, comp = cell
    return f"{name}{':' + variant if variant else ''}{'+' + comp if comp != 'none' else ''} @ {sparsity:g}"


def table(rows: Sequence[dict]):
    """The tidy table as a pandas DataFrame (one row per method × variant × sparsity × evaluation task)."""
    import pandas as pd

    rows = [r if r.get("compensation") else {**r, "compensation": "none"} for r in rows]  # cached before it existed
    return pd.DataFrame(rows, columns=list(COLUMNS))


def labels(df):
    """One name per method × variant × compensation: "diet", "single-task:facts", "pooled+lstsq"."""
    comp = df["compensation"].map(lambda c: "" if c == "none" else f"+{c}")
    return df["method"] + df["variant"].map(lambda v: f":{v}" if v else "") + comp


def _means(rows: Sequence[dict]):
    df = table(rows)
    df["name"] = labels(df)
    return df.groupby(["name", "method", "sparsity"], sort=False)["value"].mean().reset_index()


def mean_table(rows: Sequence[dict]):
    """Mean over evaluation tasks of each task's primary metric, per method (variant, compensation) × sparsity."""
    df = table(rows)
    df["name"] = labels(df)
    return df.pivot_table(index="name", columns="sparsity", values="value", aggfunc="mean", sort=False)


def figure(rows: Sequence[dict]):
    """Plotly accuracy-vs-sparsity figure: one line per method, the dense model as a dashed reference."""
    import plotly.graph_objects as go

    means = _means(rows)
    fig = go.Figure()
    dense = means[means["method"] == "dense"]["value"]
    if len(dense):
        fig.add_hline(y=float(dense.iloc[0]), line_dash="dash", annotation_text="dense")
    for name, g in means[means["method"] != "dense"].groupby("name", sort=False):
        fig.add_scatter(x=g["sparsity"].to_numpy(np.float32), y=g["value"].to_numpy(np.float32), mode="lines+markers",
                        name=name)
    fig.update_layout(xaxis_title="sparsity (fraction of units removed)", yaxis_title="mean accuracy over tasks",
                      template="plotly_white")
    return fig


def save_png(rows: Sequence[dict], path) -> bool:
    """The same plot as a PNG with matplotlib (False when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    means = _means(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    dense = means[means["method"] == "dense"]["value"]
    if len(dense):
        ax.axhline(float(dense.iloc[0]), color="grey", ls="--", label="dense")
    for name, g in means[means["method"] != "dense"].groupby("name", sort=False):
        ax.plot(g["sparsity"], g["value"], marker="o", label=name, lw=2.5 if name == "diet" else 1.2)
    ax.set_xlabel("sparsity (fraction of units removed)")
    ax.set_ylabel("mean accuracy over tasks")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
