"""Mask math: scores → per-task masks → votes → one global mask, and the statistics that describe them.

Pure numpy on (layers × width) arrays: no model, no torch, so every slider move in the app is instant and every
function here can be tested on hand-made numbers. Tie rule everywhere: among equal keys, the lower index is kept
(deterministic, documented, testable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diet.errors import DietError
from diet.settings import MaskSettings
from diet.shape import ModelShape

# ---------------------------------------------------------------- scores


def scores_from(stats, score: str = "mean_abs") -> np.ndarray:
    """(L, I) float64 score per unit from profiled statistics (anything with .mean_abs() / .rms())."""
    if score == "mean_abs":
        return stats.mean_abs()
    if score == "rms":
        return stats.rms()
    raise DietError(f"unknown score {score!r}: use mean_abs or rms")


def normalise(scores: np.ndarray) -> np.ndarray:
    """Divide each layer's scores by that layer's mean: layers become comparable (scale-free), order kept."""
    mean = scores.mean(axis=-1, keepdims=True)
    return scores / np.where(mean > 0, mean, 1.0)


def keep_count(width: int, sparsity: float) -> int:
    """Units kept in a layer of `width` at `sparsity` (rounded to nearest, at least one)."""
    return max(1, int(round((1.0 - sparsity) * width)))


# ---------------------------------------------------------------- top-k with a defined tie rule


def topk_rows(keys: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Boolean mask keeping the k largest keys of each row; among equal keys the lower index wins."""
    L, n = keys.shape
    ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (L,))
    if np.any(ks < 0) or np.any(ks > n):
        raise DietError(f"cannot keep {ks.max()} of {n} units")
    out = np.zeros((L, n), dtype=bool)
    for kv in np.unique(ks):
        rows = np.nonzero(ks == kv)[0]
        if kv == 0:
            continue
        every = rows.size == L  # the usual case (same count in every layer): no fancy-index copies
        sub = keys if every else keys[rows]
        thr = np.partition(sub, n - kv, axis=1)[:, n - kv][:, None]  # the kv-th largest value per row
        greater = sub > thr
        eq = sub == thr
        need = kv - greater.sum(axis=1)
        # Only rows with more units equal to the threshold than places left need the lower-index tie rule; the
        # cumulative sum that applies it is the costliest step, so it runs on those rows alone.
        tied = np.nonzero(eq.sum(axis=1) > need)[0]
        if tied.size:
            e = eq[tied]
            eq[tied] = e & (np.cumsum(e, axis=1) <= need[tied, None])
        if every:
            out = greater | eq
        else:
            out[rows] = greater | eq
    return out


def allocate_global(keys: np.ndarray, total: int, min_keep: float) -> np.ndarray:
    """Per-layer kept counts for a global ranking of `keys` (comparable across layers) with a floor per layer.

    Each layer first keeps its best ceil(min_keep × width) units; the rest of the budget goes to the globally best
    remaining units.
    """
    L, n = keys.shape
    floor = min(n, int(np.ceil(min_keep * n)))
    if floor * L > total:
        raise DietError(f"min_keep={min_keep} needs {floor * L} units but the budget is {total}: "
                        "lower min_keep or the sparsity")
    base = topk_rows(keys, floor)
    rest = np.where(base, -np.inf, keys).ravel()
    extra = total - floor * L
    chosen = np.zeros(rest.size, dtype=bool)
    if extra > 0:
        chosen = topk_rows(rest[None, :], extra)[0]
    return floor + chosen.reshape(L, n).sum(axis=1)


def _layer_counts(keys: np.ndarray, settings: MaskSettings) -> np.ndarray:
    L, n = keys.shape
    k = keep_count(n, settings.sparsity)
    if settings.allocation == "layer":
        return np.full(L, k)
    return allocate_global(keys, k * L, settings.min_keep)


def task_mask(scores: np.ndarray, settings: MaskSettings, ranks: np.ndarray | None = None) -> np.ndarray:
    """One task's mask: keep the top (1 − s) units of each layer (or a global allocation of the same total).

    `ranks`: `desc_ranks(normalise(scores))`, computed once per scores; the mask is then one comparison per unit
    (what a slider move needs) instead of a partition — the same mask, tie rule included."""
    if ranks is not None and settings.allocation == "layer":
        return ranks < keep_count(scores.shape[-1], settings.sparsity)
    keys = normalise(scores)
    counts = _layer_counts(keys, settings)
    return ranks < counts[:, None] if ranks is not None else topk_rows(keys, counts)


def desc_ranks(keys: np.ndarray) -> np.ndarray:
    """(..., I) rank of each unit among its row, 0 = the largest key; equal keys rank by index, lower first (the tie
    rule of `topk_rows`), so `desc_ranks(keys) < k` is exactly `topk_rows(keys, k)`. uint16 where rows are narrower
    than 65536 (half the memory, faster comparisons). Keys must not be NaN."""
    n = keys.shape[-1]
    order = np.argsort(-keys, axis=-1, kind="stable")  # negation is exact; stable keeps equal keys in index order
    ranks = np.empty(order.shape, dtype=np.uint16 if n < 65536 else np.int64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n, dtype=ranks.dtype), order.shape), axis=-1)
    return ranks


@dataclass(frozen=True)
class RankedScores:
    """Task scores with what every mask built from them needs and no slider changes: per-layer ranks and DIET's tie
    scores. Computed once per (statistics, score); then each sparsity, merge or allocation choice costs
    comparisons, one partition for the merge, and the statistics (see `build_masks`)."""

    scores: np.ndarray  # (T, L, I) float64 task scores
    ranks: np.ndarray  # (T, L, I) desc_ranks of each task's per-layer-normalised scores
    tie: np.ndarray  # (L, I) tie_scores(scores): the merge's tie-breaker

    @classmethod
    def of(cls, task_scores: np.ndarray) -> RankedScores:
        scores = np.asarray(task_scores, dtype=np.float64)
        ranks = np.stack([desc_ranks(normalise(s)) for s in scores])
        return cls(scores, ranks, tie_scores(scores))


# ---------------------------------------------------------------- merging (DIET's vote)


def votes(task_masks: np.ndarray) -> np.ndarray:
    """(L, I) number of tasks whose mask keeps each unit."""
    return np.asarray(task_masks, dtype=np.uint8).sum(axis=0, dtype=np.uint8)


def tie_scores(task_scores: np.ndarray) -> np.ndarray:
    """Mean over tasks of per-layer-normalised scores: the tie-breaker between units with equal votes."""
    acc = np.zeros(task_scores.shape[1:], dtype=np.float64)
    for s in task_scores:  # accumulate one task at a time: no (T, L, I) temporary (the same sums, in order)
        acc += normalise(s)
    return acc / len(task_scores)


def merge(task_masks: np.ndarray, task_scores: np.ndarray, settings: MaskSettings,
          tie: np.ndarray | None = None) -> np.ndarray:
    """DIET's merge of T task masks into one mask.

    threshold: keep a unit if at least k of the T masks keep it (k defaults to a strict majority).
    budget: rank units by votes, ties by mean normalised score, keep exactly the target count per layer
    (or per the global allocation).
    """
    T = task_masks.shape[0]
    v = votes(task_masks)
    if settings.merge == "threshold":
        return v >= settings.resolved_threshold(T)
    key = vote_ranking(v, task_scores, tie)  # votes first
    return topk_rows(key, _layer_counts(key, settings))


def vote_ranking(v: np.ndarray, task_scores: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """(L, I) importance as DIET's budget merge ranks units: votes first, then the mean normalised score.
    `tie`: tie_scores(task_scores), when already computed."""
    if tie is None:
        tie = tie_scores(np.asarray(task_scores, dtype=np.float64))
    return v.astype(np.float64) + tie / (tie.max() * (1 + 1e-9) if tie.max() > 0 else 1.0)


def build_masks(task_scores: np.ndarray, settings: MaskSettings,
                ranked: RankedScores | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(task masks (T, L, I), merged mask (L, I)) from task scores (T, L, I), or from their `ranked` form (the
    same masks, faster: see RankedScores)."""
    if ranked is not None:
        tm = np.stack([task_mask(s, settings, r) for s, r in zip(ranked.scores, ranked.ranks)])
        return tm, merge(tm, ranked.scores, settings, ranked.tie)
    task_scores = np.asarray(task_scores, dtype=np.float64)
    if task_scores.ndim != 3 or task_scores.shape[0] < 1:
        raise DietError("need scores of at least one task, shaped (tasks, layers, width)")
    tm = np.stack([task_mask(s, settings) for s in task_scores])
    return tm, merge(tm, task_scores, settings)


# ---------------------------------------------------------------- statistics


def kept_per_layer(mask: np.ndarray) -> np.ndarray:
    return mask.sum(axis=-1)


def jaccard_matrix(task_masks: np.ndarray) -> np.ndarray:
    """(T, T) float32 Jaccard index |A∩B| / |A∪B| between task masks over all layers.

    Why bits: the masks are packed 8 units a byte and intersections counted with popcount, ~10× faster than a
    float matrix product; the counts are exact either way, and the ratio is taken in float32 as before."""
    T = task_masks.shape[0]
    packed = np.packbits(np.asarray(task_masks, dtype=bool).reshape(T, -1), axis=1)
    counts = np.empty((T, T), dtype=np.int64)
    for a in range(T):
        counts[a, a:] = np.bitwise_count(packed[a] & packed[a:]).sum(axis=1, dtype=np.int64)
        counts[a:, a] = counts[a, a:]
    inter = counts.astype(np.float32)  # exact: counts stay far below 2**24
    size = np.diag(inter)
    union = size[:, None] + size[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def layer_overlap_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B, L) int64: units kept by both a[i] and b[j], layer by layer, for (A, L, I) and (B, L, I) masks.

    Why bits: as in `jaccard_matrix`, the masks are packed 64 units a word and counted with popcount, several times
    faster than AND-ing boolean arrays pair by pair for the same exact counts. The per-layer overlap figure and
    who-loses-in-the-merge read it on every slider move."""
    wa, wb = _words(a), _words(b)
    out = np.empty((wa.shape[0], wb.shape[0], wa.shape[1]), dtype=np.int64)
    for i in range(wa.shape[0]):
        out[i] = np.bitwise_count(wa[i] & wb).sum(axis=-1, dtype=np.int64)
    return out


def _words(masks: np.ndarray) -> np.ndarray:
    """(A, L, W) uint64: each row of (A, L, I) masks packed 64 units a word (the last word padded with zeros)."""
    packed = np.packbits(np.asarray(masks, dtype=bool), axis=-1)
    pad = -packed.shape[-1] % 8
    if pad:
        packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(packed).view(np.uint64)


def jaccard_per_layer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(L,) Jaccard of two masks, layer by layer."""
    inter = (a & b).sum(-1)
    union = (a | b).sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def chance_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Expected Jaccard of independent random masks with the same per-layer sizes as `a` and `b`.

    Per layer E|A∩B| = k_a k_b / n; the ratio of expectations (accurate for large n) over all layers. For two k-of-n
    masks this is k / (2n − k).
    """
    n = a.shape[-1]
    ka, kb = a.sum(-1).astype(float), b.sum(-1).astype(float)
    inter = (ka * kb / n).sum()
    union = (ka + kb).sum() - inter
    return float(inter / union) if union > 0 else 1.0


def votes_histogram(v: np.ndarray, n_tasks: int) -> np.ndarray:
    """(T + 1,) number of units kept by exactly 0, 1, …, T tasks."""
    return np.bincount(v.ravel(), minlength=n_tasks + 1)[: n_tasks + 1]


def intersections(task_masks: np.ndarray) -> dict[tuple[int, ...], int]:
    """UpSet data: for every non-empty combination of tasks, how many units are kept by exactly those tasks."""
    T = task_masks.shape[0]
    if T > 16:
        raise DietError("intersections are computed for at most 16 tasks")
    small = np.uint8 if T <= 8 else np.uint16  # the narrowest code: a few times faster than int64, same counts
    code = np.zeros(task_masks.shape[1:], dtype=small)
    for t in range(T):
        code |= np.asarray(task_masks[t], dtype=bool).view(np.uint8).astype(small, copy=False) << small(t)
    counts = np.bincount(code.ravel(), minlength=1 << T)
    return {tuple(t for t in range(T) if c >> t & 1): int(counts[c]) for c in range(1, 1 << T) if counts[c]}


def independence_expectations(task_masks: np.ndarray) -> dict[str, float]:
    """Units kept by all tasks and by exactly one task, observed vs expected if the masks were independent."""
    n = task_masks.shape[-1]
    p = task_masks.sum(-1) / n  # (T, L) keep probability per task and layer
    all_exp = float((n * p.prod(axis=0)).sum())
    one_exp = 0.0
    for t in range(p.shape[0]):
        others = np.delete(p, t, axis=0)
        one_exp += float((n * p[t] * (1 - others).prod(axis=0)).sum())
    v = votes(task_masks)
    return {"kept_by_all": int((v == task_masks.shape[0]).sum()), "kept_by_all_expected": all_exp,
            "kept_by_one": int((v == 1).sum()), "kept_by_one_expected": one_exp}


def param_summary(mask: np.ndarray, shape: ModelShape) -> dict:
    """Sparsity two ways: fraction of the unit removed and fraction of all model parameters removed."""
    widths = np.asarray(shape.widths)
    kept = kept_per_layer(mask)
    removed_units = widths - kept
    removed_params = int((removed_units * np.asarray(shape.params_per_unit)).sum())
    return {
        "units_total": int(widths.sum()),
        "units_kept": int(kept.sum()),
        "unit_sparsity": float(removed_units.sum() / widths.sum()),
        "params_total": shape.total_params,
        "params_removed": removed_params,
        "params_after": shape.total_params - removed_params,
        "param_sparsity": removed_params / shape.total_params,
        "uniform": bool((kept == kept[0]).all()),
    }


def keep_indices(mask: np.ndarray) -> list[np.ndarray]:
    """Sorted kept indices per layer (what pruning and mask files use)."""
    return [np.nonzero(row)[0] for row in mask]


# ---------------------------------------------------------------- rounding widths for serving engines

ROUND_TO = (1, 32, 64, 128, 256)  # multiples quantizers (Q8_0/Q4_0 blocks: 32, k-quants: 256) and TP sizes use


def row_ranks(key: np.ndarray) -> np.ndarray:
    """(L, I) rank of each unit within its layer, 0 = least important; among equal keys the lower index ranks higher
    (the tie rule of `topk_rows`)."""
    key = np.asarray(key, dtype=np.float64)
    L, n = key.shape
    ranks = np.empty((L, n), dtype=np.int64)
    idx = -np.arange(n)
    for i in range(L):
        ranks[i, np.lexsort((idx, key[i]))] = np.arange(n)
    return ranks


def rounded_counts(kept: np.ndarray, widths, multiple: int) -> np.ndarray:
    """Kept counts rounded to the nearest multiple (halves up), at least one multiple, at most the largest multiple
    that fits the layer's width."""
    if multiple not in ROUND_TO:
        raise DietError(f"--round-to must be one of {', '.join(map(str, ROUND_TO))}, got {multiple}")
    kept = np.asarray(kept, dtype=np.int64)
    caps = (np.asarray(widths, dtype=np.int64) // multiple) * multiple
    if multiple > 1 and np.any(caps == 0):
        raise DietError(f"a layer is narrower than {multiple} channels: choose a smaller --round-to")
    target = ((kept + multiple // 2) // multiple) * multiple
    return np.clip(target, multiple, caps) if multiple > 1 else kept


def round_widths(mask: np.ndarray, key: np.ndarray | None, multiple: int, widths=None) -> np.ndarray:
    """The mask with each layer's kept count rounded to a multiple of `multiple`, by the mask's own ranking.

    Why: llama.cpp's block quantizers need a row length (ffn_down's input = the layer width) divisible by their block
    (32 for Q8_0/Q4_0, 256 for k-quants), and tensor parallelism needs widths divisible by the TP size. Rounding down
    drops the kept units of lowest `key`; rounding up adds the dropped units of highest `key` — so the kept set only
    grows or shrinks at the margin of the ranking that chose it. key=None ranks by kept-or-not, then lower index.
    """
    mask = np.asarray(mask, dtype=bool)
    widths = mask.shape[1] * np.ones(mask.shape[0], dtype=np.int64) if widths is None else np.asarray(widths)
    target = rounded_counts(mask.sum(axis=1), widths, multiple)
    if np.array_equal(target, mask.sum(axis=1)):
        return mask.copy()
    ranks = row_ranks(np.zeros(mask.shape) if key is None else key)
    composite = mask * mask.shape[1] + ranks  # every kept unit ranks above every dropped one
    composite[np.arange(mask.shape[1])[None, :] >= widths[:, None]] = -1  # beyond a layer's width: never kept
    return topk_rows(composite.astype(np.float64), target)
