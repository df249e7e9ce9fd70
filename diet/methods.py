"""Pruning methods behind one interface: cached statistics in, a mask out.

Why a registry: the product's claim is a comparison — DIET against the structured-pruning baselines people know —
and a comparison is only fair when every method reads the same cached statistics and is cut by the same pruning
code. Each method here is a small function `(MethodInputs, MaskSettings, MethodSettings) -> MethodOutput`; none
runs a forward pass, so switching method or sparsity costs milliseconds. Weight-based terms (Wanda-sp, FLAP,
magnitude, task fusion) read a few per-layer weight norms that `weight_stats` computes once from the model.

Units: statistics are kept per *profiled channel* (MLP channels; o_proj input channels for heads). `pool` turns
channel scores into unit scores (one per KV group for heads; identity for MLP channels).

Where a paper is silent we chose, and say so in docs/methods.md ("our default"/"our adaptation").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from diet import masks as M
from diet.errors import DietError
from diet.results import MaskResult
from diet.settings import MaskSettings, MethodSettings
from diet.shape import ModelShape

if TYPE_CHECKING:  # diet.profile imports torch; the registry itself stays numpy-only (fast CLI start)
    from diet.profile import Stats

EPS = 1e-8


@dataclass(frozen=True)
class MethodInputs:
    """Everything a method may read. Methods say which parts they need (Method.needs)."""

    tasks: dict[str, Stats]  # per-task statistics, in task order (task-aware methods)
    general: Stats | None = None  # statistics on general text (task-agnostic baselines, task fusion)
    weights: dict[str, np.ndarray] | None = None  # from weight_stats(model, unit)
    shape: ModelShape | None = None  # model_shape(model, unit); taken from the statistics when None


@dataclass
class MethodOutput:
    mask: np.ndarray  # (L, n) bool: the final mask
    task_masks: np.ndarray | None = None  # (T, L, n) per-task masks, for methods that vote
    task_names: list[str] | None = None  # names of those masks
    compensation: np.ndarray | None = None  # (L, channels) FLAP: mean input, added back as an output bias
    ranking: np.ndarray | None = None  # (L, n) importance order for --round-to (votes, then mean normalised score)


MethodFn = Callable[[MethodInputs, MaskSettings, MethodSettings], MethodOutput]


@dataclass(frozen=True)
class Method:
    """One registry entry: the function, and the traits that say which settings change its mask (the Masks and
    Sweep pages show a setting only where it matters; tests/test_app.py checks every trait against the function)."""

    name: str
    kind: str  # "task-aware", "task-agnostic" or "reference"
    needs: tuple[str, ...]  # parts of MethodInputs it reads: "tasks", "general", "weights"
    description: str
    fn: MethodFn
    votes: bool = False  # task masks merged by DIET's vote: the merge settings (merge, threshold) apply
    fixed_vote: bool = False  # task masks merged by a vote with a threshold of its own (union: 1, intersection: T)
    scored: bool = False  # ranks by DIET's score: the `score` setting (mean |x| or RMS) applies
    own_allocation: bool = False  # always ranks across layers: `min_keep` applies, `allocation` does not
    calibrated: bool = False  # a general-text baseline whose data the `calibration` setting may swap for the
    #                           pooled tasks (task-fusion reads general text and tasks, both always)
    knobs: tuple[str, ...] = ()  # its own MethodSettings fields that change its mask (tau, seed, ...)
    adaptation: bool = False  # our adaptation of a published method: said so wherever it is offered

    @property
    def label(self) -> str:
        """How a method is offered in a list: "name · kind", and an adaptation said as such."""
        return f"{self.name} · {self.kind}" + (" (our adaptation)" if self.adaptation else "")

    @property
    def merges_tasks(self) -> bool:
        """Its mask is the task masks merged by a vote (the Votes view applies; the tasks are "in the vote")."""
        return self.votes or self.fixed_vote


# ---------------------------------------------------------------- shared helpers


def shape_of(inputs: MethodInputs) -> ModelShape:
    if inputs.shape is not None:
        return inputs.shape
    for s in [*inputs.tasks.values(), inputs.general]:
        if s is not None and s.shape is not None:
            return s.shape
    raise DietError("no model shape: pass MethodInputs.shape (diet.adapters.model_shape)")


def pool(channel_scores: np.ndarray, shape: ModelShape, how: str = "mean") -> np.ndarray:
    """(L, channels) → (L, units): identity for MLP channels; mean (or RMS) over each KV group's channels for heads.

    Group g owns the contiguous o_proj input channels [g·c, (g+1)·c) with c = query heads per group × head_dim.
    """
    widths = shape.widths
    L, C = channel_scores.shape
    n = widths[0]
    if C == n:
        return channel_scores
    if not shape.uniform or C % n:
        raise DietError(f"cannot pool {C} channels into {widths} units")
    grouped = channel_scores.reshape(L, n, C // n)
    return np.sqrt((grouped**2).mean(-1)) if how == "rms" else grouped.mean(-1)


def unit_scores(stats: Stats, score: str = "mean_abs") -> np.ndarray:
    """DIET's per-unit score (mean |x| or RMS) from one task's statistics."""
    shape = stats.shape
    raw = M.scores_from(stats, score)
    return pool(raw, shape, "rms" if score == "rms" else "mean") if shape else raw


def pooled_stats(stats: list[Stats]) -> Stats:
    """All tasks' statistics summed into one (as if their texts were one calibration set)."""
    from diet.profile import Stats

    total = lambda name: sum(getattr(s, name) for s in stats)  # noqa: E731
    seq = None if any(s.seq_sq_sum is None for s in stats) else total("seq_sq_sum")
    return Stats(total("abs_sum"), total("sq_sum"), total("sum"), total("count"), stats[0].meta, seq,
                 None if seq is None else total("seqs"))


def layer_counts(L: int, n: int, keys: np.ndarray, settings: MaskSettings) -> np.ndarray:
    """Kept units per layer: the same in each layer, or a global allocation of the same total over `keys`."""
    k = M.keep_count(n, settings.sparsity)
    if settings.allocation == "layer":
        return np.full(L, k)
    return M.allocate_global(keys, k * L, settings.min_keep)


def top(keys: np.ndarray, settings: MaskSettings) -> np.ndarray:
    """Keep the best units by `keys`, which must already be comparable across layers for a global allocation."""
    L, n = keys.shape
    return M.topk_rows(keys, layer_counts(L, n, keys, settings))


def rank01(x: np.ndarray) -> np.ndarray:
    """Per-layer rank scaled to [0, 1] (lowest 0, highest 1); ties broken by index."""
    n = x.shape[-1]
    return np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1, kind="stable") / max(n - 1, 1)


def zscore(x: np.ndarray) -> np.ndarray:
    """Per-layer standardisation (FLAP's normalisation)."""
    std = x.std(axis=-1, keepdims=True)
    return (x - x.mean(axis=-1, keepdims=True)) / np.where(std > 0, std, 1.0)


def _need(inputs: MethodInputs, part: str, method: str):
    value = getattr(inputs, part)
    if not value:
        what = {"tasks": "task statistics (profile at least one task)",
                "general": "statistics on general text (profile diet.general.general_task())",
                "weights": "weight norms (diet.methods.weight_stats(model, unit))"}[part]
        raise DietError(f"method {method!r} needs {what}")
    return value


def _data(inputs: MethodInputs, ms: MethodSettings, method: str) -> Stats:
    """The one calibration set of a single-score baseline: general text by default, or all tasks pooled."""
    if ms.calibration == "tasks":
        return pooled_stats(list(_need(inputs, "tasks", method).values()))
    return _need(inputs, "general", method)


# ---------------------------------------------------------------- task-aware: DIET and its variants


def _task_scores(inputs: MethodInputs, settings: MaskSettings, method: str) -> tuple[list[str], np.ndarray]:
    tasks = _need(inputs, "tasks", method)
    return list(tasks), np.stack([unit_scores(s, settings.score) for s in tasks.values()])


def diet(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    names, scores = _task_scores(inputs, settings, "diet")
    tm, mask = M.build_masks(scores, settings)
    return MethodOutput(mask, tm, names, ranking=M.vote_ranking(M.votes(tm), scores))


def diet_global(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    return diet(inputs, replace(settings, allocation="global"), ms)


def union(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    return diet(inputs, replace(settings, merge="threshold", threshold=1), ms)


def intersection(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    return diet(inputs, replace(settings, merge="threshold", threshold=len(_need(inputs, "tasks", "intersection"))),
                ms)


def single_task(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    tasks = _need(inputs, "tasks", "single-task")
    name = ms.single_task
    if name is None:
        if len(tasks) != 1:
            raise DietError(f"single-task: say which of the {len(tasks)} tasks ({', '.join(tasks)}) gives the mask")
        name = next(iter(tasks))
    if name not in tasks:
        raise DietError(f"single-task: {name!r} is not among the profiled tasks ({', '.join(tasks)})")
    mask = M.task_mask(unit_scores(tasks[name], settings.score), settings)
    return MethodOutput(mask, mask[None], [name])


def fused_scores(task: Stats, general: Stats, out_l2: np.ndarray, shape: ModelShape, ms: MethodSettings) -> np.ndarray:
    """Our structured adaptation of task-aware score fusion (arXiv 2510.22489), per layer and unit:

    S_G = RMS_general · ‖W_out col‖, S_T = RMS_task · ‖W_out col‖; a unit is *exclusive* when its task/general RMS
    ratio is above the τ-quantile of its layer, else *shared*; fused = norm(S_T) for exclusive units and
    α·norm(S_G) + (1 − α)·norm(S_T) for shared ones (norm: per-layer rank or z-score). Higher = keep.
    """
    g, t = general.rms(), task.rms()
    s_g = pool(g * out_l2, shape)
    s_t = pool(t * out_l2, shape)
    ratio = pool(t, shape, "rms") / (pool(g, shape, "rms") + EPS)
    exclusive = ratio > np.quantile(ratio, ms.tau, axis=-1, keepdims=True)
    norm = rank01 if ms.fusion_norm == "rank" else zscore
    n_g, n_t = norm(s_g), norm(s_t)
    return np.where(exclusive, n_t, ms.alpha * n_g + (1.0 - ms.alpha) * n_t)


def task_fusion(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    tasks = _need(inputs, "tasks", "task-fusion")
    general = _need(inputs, "general", "task-fusion")
    out_l2 = _need(inputs, "weights", "task-fusion")["out_l2"]
    shape = shape_of(inputs)
    fused = np.stack([fused_scores(s, general, out_l2, shape, ms) for s in tasks.values()])
    tm = np.stack([top(f, settings) for f in fused])
    tie = rank01(fused) + 1.0  # positive, per-layer comparable: what DIET's tie-breaker expects
    return MethodOutput(M.merge(tm, tie, settings), tm, list(tasks))


def pooled(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    """DIET's score (mean |x| or RMS) on all selected tasks' texts pooled, one top-k: task-aware data, no vote.

    pool_weight="tokens": the tasks' sums are added, so every calibration token counts once (a task with longer
    texts weighs more); "tasks": each task's per-channel score is averaged with weight 1/T (each task weighs the
    same whatever its token count).
    """
    tasks = list(_need(inputs, "tasks", "pooled").values())
    if ms.pool_weight == "tokens":
        scores = unit_scores(pooled_stats(tasks), settings.score)
    else:
        scores = np.mean([unit_scores(s, settings.score) for s in tasks], axis=0)
    return MethodOutput(M.task_mask(scores, settings))


def diet_weighted(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    """Score-weighted merge: each task's scores normalised per layer (÷ the layer's mean), summed, one top-k.

    Why: the vote keeps only "in this task's top-k or not"; the sum keeps how strongly each task needs a channel,
    so a channel one task needs a lot is not outvoted by tasks that need it a little less than their cut-off.
    The per-task masks are returned too (for the views), but they do not decide the mask.
    """
    names, scores = _task_scores(inputs, settings, "diet-weighted")
    keys = M.tie_scores(scores)  # mean over tasks of per-layer-normalised scores: same order as the sum
    tm = np.stack([M.task_mask(s, settings) for s in scores])
    return MethodOutput(top(keys, settings), tm, names)


def who_loses(inputs: MethodInputs, settings: MaskSettings, masks: dict[str, np.ndarray],
              own: np.ndarray | None = None, norm: np.ndarray | None = None) -> dict:
    """Who loses in the merge: per task, how much of its own choice each final mask keeps.

    For every task t and every mask m (e.g. the vote, pooled, random): `topk` = share of t's own top-k units
    that m keeps; `mass` = share of t's importance mass (the sum of its per-layer-normalised scores) on units m
    keeps; `layer_topk` (L,) = the top-k share per layer, which shows where the losses concentrate. A mask that
    keeps everything scores 1 everywhere; a random mask keeping a fraction f scores about f.

    `own` (T, L, I) and `norm` (T, L, I): each task's own mask at `settings` and its per-layer-normalised scores,
    when the caller already holds them (the Masks page does; a slider move then skips 2T passes over the scores).
    """
    if own is None or norm is None:
        names, scores = _task_scores(inputs, settings, "who-loses")
        own = np.stack([M.task_mask(s, settings) for s in scores]) if own is None else own
        norm = [M.normalise(s) for s in scores] if norm is None else norm
    else:  # the caller holds both: the scores themselves are not needed
        names = list(_need(inputs, "tasks", "who-loses"))
    norm_sum = [max(n.sum(), EPS) for n in norm]
    own_n = np.count_nonzero(np.asarray(own, dtype=bool), axis=-1)  # (T, L) exact counts, faster than a bool sum
    own_sum, own_layer = own_n.sum(axis=-1), np.maximum(own_n, 1)
    # (T, masks, L): each task's own top-k kept by each mask, per layer (popcount on packed bits; exact counts)
    kept_own = M.layer_overlap_counts(own, np.stack([np.asarray(m, dtype=bool) for m in masks.values()]))
    out: dict = {"tasks": names, "masks": list(masks), "topk": {}, "mass": {}, "layer_topk": {}}
    buf = np.empty(np.shape(norm[0]), dtype=np.float64)
    for j, (m_name, mask) in enumerate(masks.items()):
        kept = np.asarray(mask, dtype=bool).astype(np.float64)  # once per mask: the products below need no conversion
        topk, mass, layer = [], [], []
        for t in range(len(names)):
            both = kept_own[t, j]
            topk.append(float(both.sum() / max(own_sum[t], 1)))
            mass.append(float(np.multiply(norm[t], kept, out=buf).sum() / norm_sum[t]))
            layer.append(both / own_layer[t])
        out["topk"][m_name], out["mass"][m_name] = topk, mass
        out["layer_topk"][m_name] = np.stack(layer)  # (T, L)
    out["reading"] = _loss_reading(out)
    return out


def _loss_reading(w: dict) -> str:
    """One line: how much of each task's own choice the first mask keeps, against the others, and where it loses."""
    first, names = w["masks"][0], w["tasks"]
    topk = np.asarray(w["topk"][first])
    worst = int(np.argmin(topk))
    lost = 1.0 - w["layer_topk"][first].mean(axis=0)
    layers = np.argsort(-lost, kind="stable")[:3]
    others = "; ".join(f"{m} {min(w['topk'][m]):.0%}–{max(w['topk'][m]):.0%}" for m in w["masks"][1:])
    return (f"The {first} mask keeps {topk.min():.0%}–{topk.max():.0%} of each task's own top-k"
            + (f" ({others})" if others else "") + f"; {names[worst]} loses most ({1 - topk[worst]:.0%} of its "
            f"top-k dropped, {1 - w['mass'][first][worst]:.0%} of its score mass), and the losses are largest in "
            f"layers {', '.join(str(int(i)) for i in sorted(layers))}.")


# ---------------------------------------------------------------- task-agnostic baselines


def task_agnostic(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    data = _data(inputs, ms, "task-agnostic")
    return MethodOutput(M.task_mask(unit_scores(data, settings.score), settings))


def magnitude(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    return MethodOutput(M.task_mask(_need(inputs, "weights", "magnitude")["magnitude"], settings))


def wanda_sp(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    """Wanda-sp (as in FLAP's code): mean over output rows of |W_out[:, j]| × RMS(x_j), uniform per layer."""
    data = _data(inputs, ms, "wanda-sp")
    w = _need(inputs, "weights", "wanda-sp")["out_l1mean"]
    return MethodOutput(M.task_mask(pool(w * data.rms(), shape_of(inputs)), settings))


def flap(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    """FLAP: fluctuation Var(x_j) × ‖W_out[:, j]‖², z-scored per layer, one global threshold (adaptive widths),
    plus the bias compensation W[:, pruned] · mean(x[pruned]) on the output projection."""
    data = _data(inputs, ms, "flap")
    w = _need(inputs, "weights", "flap")["out_l2"]
    keys = zscore(pool(data.variance() * w**2, shape_of(inputs)))
    mask = top(keys, replace(settings, allocation="global"))
    return MethodOutput(mask, compensation=data.mean() if ms.flap_bias else None)


def minitron(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    """Minitron's activation importance: mean |x| over each sequence, then L2 over sequences; uniform widths."""
    data = _data(inputs, ms, "minitron")
    return MethodOutput(M.task_mask(pool(data.seq_l2(), shape_of(inputs), "rms"), settings))


def random_mask(inputs: MethodInputs, settings: MaskSettings, ms: MethodSettings) -> MethodOutput:
    shape = shape_of(inputs)
    L, n = shape.layers, shape.widths[0]
    keys = np.random.default_rng(ms.seed).random((L, n))
    return MethodOutput(top(keys, settings))


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("diet", "task-aware", ("tasks",),
           "DIET: one mask per task (top mean-|x| units), merged by majority vote into one mask", diet,
           votes=True, scored=True),
    Method("diet-global", "task-aware", ("tasks",),
           "DIET with a cross-layer allocation: units ranked across layers after per-layer normalisation",
           diet_global, votes=True, scored=True, own_allocation=True),
    Method("task-fusion", "task-aware", ("tasks", "general", "weights"),
           "Task-aware score fusion (our structured adaptation of arXiv 2510.22489): general + task Wanda-style "
           "scores fused per shared/exclusive unit, then merged across tasks like DIET", task_fusion,
           votes=True, knobs=("tau", "alpha", "fusion_norm"), adaptation=True),
    Method("single-task", "task-aware", ("tasks",), "The mask of one task alone (DIET's per-task mask)", single_task,
           scored=True, knobs=("single_task",)),
    Method("union", "task-aware", ("tasks",), "Keep a unit if any task keeps it (vote threshold 1; less sparse)",
           union, fixed_vote=True, scored=True),
    Method("intersection", "task-aware", ("tasks",),
           "Keep a unit only if every task keeps it (vote threshold T; sparser)", intersection, fixed_vote=True,
           scored=True),
    Method("pooled", "task-aware", ("tasks",),
           "DIET's score on all selected tasks' texts pooled (no vote); --pool-weight tokens or tasks", pooled,
           scored=True, knobs=("pool_weight",)),
    Method("diet-weighted", "task-aware", ("tasks",),
           "Score-weighted merge: per-layer-normalised task scores summed, one top-k (instead of binary votes)",
           diet_weighted, scored=True),
    Method("task-agnostic", "task-agnostic", ("general",),
           "DIET's score (mean |x|) on general text only: what task awareness is compared against", task_agnostic,
           scored=True, calibrated=True),
    Method("wanda-sp", "task-agnostic", ("general", "weights"),
           "Wanda-sp: mean |W_out| column × RMS of the input, same width in every layer", wanda_sp, calibrated=True),
    Method("flap", "task-agnostic", ("general", "weights"),
           "FLAP: input variance × ‖W_out column‖², z-scored, global threshold, bias compensation", flap,
           own_allocation=True, calibrated=True, knobs=("flap_bias",)),
    Method("minitron", "task-agnostic", ("general",),
           "Minitron: mean |x| over each sequence, L2 over sequences, same width in every layer", minitron,
           calibrated=True),
    Method("magnitude", "reference", ("weights",), "Weight magnitude only (no data): L2 norm of each unit's weights",
           magnitude),
    Method("random", "reference", (), "Random units (seeded): the floor every method must beat", random_mask,
           knobs=("seed",)),
)}


def list_methods() -> list[dict]:
    """Name, kind, inputs needed and a one-line description of every method (for the CLI and the app)."""
    return [{"name": m.name, "kind": m.kind, "needs": list(m.needs), "description": m.description}
            for m in METHODS.values()]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DietError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return METHODS[name]


def needs_model(method: str, ms: MethodSettings) -> bool:
    """True when the mask needs the loaded model: weight norms, or general text profiled through it."""
    return "weights" in get_method(method).needs or needs_general(method, ms)


def needs_general(method: str, ms: MethodSettings | None = None) -> bool:
    """True when the method reads general-text statistics with these settings (so the caller profiles them)."""
    m = get_method(method)
    if "general" not in m.needs:
        return False
    return not m.calibrated or ms is None or ms.calibration != "tasks"


def weight_stats(model, unit: str = "mlp") -> dict[str, np.ndarray]:
    """Per-layer weight norms the weight-aware methods read, computed once from the model (no forward pass).

    out_l2 / out_l1mean: (L, channels) L2 norm / mean |w| of each column of the output projection (down_proj,
    o_proj); magnitude: (L, units) L2 norm of all weights each unit owns.
    """
    import torch

    from diet.adapters import get_unit

    u = get_unit(model, unit)
    layers = u.family.layers(model)
    with torch.no_grad():
        w = [u.out_proj(layer).weight.detach().float() for layer in layers]
        return {
            "out_l2": np.stack([x.norm(dim=0).cpu().numpy() for x in w]).astype(np.float64),
            "out_l1mean": np.stack([x.abs().mean(dim=0).cpu().numpy() for x in w]).astype(np.float64),
            "magnitude": np.stack([u.unit_weight_norms(layer).cpu().numpy() for layer in layers]).astype(np.float64),
        }


def calibration_means(inputs: MethodInputs, ms: MethodSettings) -> np.ndarray:
    """(L, channels) mean input on the data the method calibrated on: what `bias` compensation adds back.

    Task-aware methods and `--calibration tasks`: all tasks pooled; the general-text baselines: general text.
    """
    method = get_method(ms.method)
    if method.kind == "task-agnostic" and ms.calibration != "tasks" and inputs.general is not None:
        return inputs.general.mean()
    if inputs.tasks:
        return pooled_stats(list(inputs.tasks.values())).mean()
    if inputs.general is not None:
        return inputs.general.mean()
    raise DietError(f"bias compensation needs activation statistics, and method {ms.method!r} was given none: "
                    "profile at least one task")


def run_method(name: str, inputs: MethodInputs, settings: MaskSettings = MaskSettings(),
               ms: MethodSettings | None = None, compensation: str = "none"):
    """Run one method and describe its mask like api.build_mask does (a MaskResult the views and export use).

    compensation: "none" keeps the method's own (FLAP's bias unless flap_bias=False); "bias" gives any method the
    mean-activation bias of its calibration data; "lstsq" drops any bias (the refit happens at pruning time,
    `diet.compensate.fit_lstsq`, because it needs forward passes).
    """
    from diet.settings import COMPENSATIONS

    if compensation not in COMPENSATIONS:
        raise DietError(f"unknown compensation {compensation!r}: use one of {', '.join(COMPENSATIONS)}")
    method = get_method(name)
    ms = replace(ms or MethodSettings(), method=name)
    if settings.merge == "threshold" and method.votes:
        settings.resolved_threshold(len(_need(inputs, "tasks", name)))  # refuse k > T before any work
    shape = shape_of(inputs)
    out = method.fn(inputs, settings, ms)
    if compensation == "bias" and out.compensation is None:
        out.compensation = calibration_means(inputs, ms)
    elif compensation == "lstsq":
        out.compensation = None
    task_masks = out.task_masks if out.task_masks is not None else out.mask[None]
    names = out.task_names or [name]
    summary = summarize(out.mask, task_masks, shape, name, ms, compensation, out.compensation is not None)
    return MaskResult(names, settings, task_masks, out.mask, M.votes(task_masks), shape, summary, method=name,
                      compensation=out.compensation, ranking=out.ranking)


def summarize(mask: np.ndarray, task_masks: np.ndarray, shape: ModelShape, name: str, ms: MethodSettings,
              compensation: str = "none", bias: bool = False) -> dict:
    """The summary every MaskResult carries: sizes two ways, kept per layer, votes, overlap, the method."""
    return {
        **M.param_summary(mask, shape),
        "kept_per_layer": M.kept_per_layer(mask).tolist(),
        "votes_histogram": M.votes_histogram(M.votes(task_masks), len(task_masks)).tolist(),
        "jaccard": M.jaccard_matrix(task_masks).round(4).tolist(),
        **M.independence_expectations(task_masks),
        "method": name,
        "method_settings": asdict(ms),
        "bias_compensation": bias,
        "compensation": compensation,
    }


def uses_tasks(method: str, ms: MethodSettings) -> bool:
    """True when the method reads the task statistics (task-aware, or a baseline calibrated on the pooled tasks)."""
    m = get_method(method)
    return "tasks" in m.needs or (m.calibrated and ms.calibration == "tasks")


def mask_knobs(method: str, ms: MethodSettings) -> set[str]:
    """The MaskSettings fields (plus "tasks", the task selection) that change this method's mask, from its traits."""
    m = get_method(method)
    knobs = {"sparsity", "min_keep" if m.own_allocation else "allocation"}
    if m.votes:
        knobs |= {"merge", "threshold"}
    if m.scored:
        knobs.add("score")
    if uses_tasks(method, ms):
        knobs.add("tasks")
    return knobs


def method_knobs(method: str, ms: MethodSettings) -> set[str]:
    """The MethodSettings fields that change this method's mask, plus "general" (the general-text source) when it
    reads general-text statistics with these settings."""
    m = get_method(method)
    knobs = set(m.knobs)
    if m.calibrated:
        knobs.add("calibration")
    if needs_general(method, ms):
        knobs.add("general")
    return knobs
