"""Training-free DISP index sets: DIET's per-task masks and vote at each of the five positions. Pure numpy.

Why one kept fraction for every pruned position: with no learning, nothing says one position matters more than
another; `keep_fractions` picks the fraction that brings the kept block parameters closest to the target.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from diet import masks as M
from diet.disp.structure import POSITIONS, DispShape, block_params, param_summary
from diet.errors import DietError
from diet.settings import MaskSettings


@dataclass(frozen=True)
class DispSettings:
    """How per-task statistics at the five positions become DISP index sets. Pure numpy; no model needed."""

    sparsity: float = 0.3  # fraction of *block* parameters removed (the paper's 1 − p), e.g. 0.3 keeps p = 0.7
    score: str = "mean_abs"  # per-dim score: "mean_abs" (mean |x|, our default) or "rms"
    merge: str = "budget"  # "budget": rank by votes, ties by mean normalised score, keep exactly the target;
    #                        "threshold": keep a dim if at least `threshold` task masks keep it (budget approximate)
    threshold: int | None = None  # k for merge="threshold"; None = strict majority
    allocation: str = "layer"  # "layer": same kept count per layer and position; "global": rank across layers
    min_keep: float = 0.05  # global allocation only: every layer keeps at least this fraction at each position
    positions: tuple[str, ...] = POSITIONS  # positions that are pruned; the others keep their full width

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise DietError(f"sparsity must be in [0, 1) (a fraction of block parameters removed), got {self.sparsity}")
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise DietError(f"positions must be a non-empty subset of {', '.join(POSITIONS)}; got {self.positions}")
        self.mask_settings(1.0)  # score, merge, threshold, allocation and min_keep: MaskSettings' own checks

    def mask_settings(self, keep_fraction: float) -> MaskSettings:
        return MaskSettings(sparsity=1.0 - keep_fraction, score=self.score, merge=self.merge,
                            threshold=self.threshold, allocation=self.allocation, min_keep=self.min_keep)


def keep_fractions(shape: DispShape, settings: DispSettings) -> dict[str, float]:
    """One kept fraction k for every pruned position, chosen so the kept block parameters come closest to p.

    Why one k: with no learning, nothing says one position matters more than another; the attention terms scale
    with k and the MLP terms with k², so k is found by bisection on the exact (rounded) count.
    """
    target = 1.0 - settings.sparsity
    qkv, o_in = np.asarray(shape.qkv_out), np.asarray(shape.o_in)
    full = {pos: np.asarray(shape.widths[pos]) for pos in POSITIONS}
    total = block_params(full, qkv, o_in)

    def kept(k: float) -> float:
        counts = {pos: np.array([M.keep_count(int(w), 1.0 - k) for w in full[pos]]) if pos in settings.positions
                  else full[pos] for pos in POSITIONS}
        return block_params(counts, qkv, o_in) / total

    lo, hi = 0.0, 1.0
    if kept(lo) > target:
        raise DietError(f"keeping one dim per index set already keeps {kept(lo):.1%} of the block parameters: "
                        f"sparsity {settings.sparsity} cannot be reached with positions {settings.positions}")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < target else (lo, mid)
    k = max(lo if abs(kept(lo) - target) <= abs(kept(hi) - target) else hi, 1e-9)
    return {pos: (k if pos in settings.positions else 1.0) for pos in POSITIONS}


@dataclass
class DispMaskResult:
    """Per-position masks, exactly like DIET's MaskResult but five times: every DIET view works per position."""

    tasks: list[str]
    settings: DispSettings
    task_masks: dict[str, np.ndarray]  # position -> (T, L, W) bool
    masks: dict[str, np.ndarray]  # position -> (L, W) bool: the merged masks (what the heatmaps show)
    votes: dict[str, np.ndarray]  # position -> (L, W) uint8
    shape: DispShape
    summary: dict = field(default_factory=dict)  # parameter accounting (the paper's p and total sparsity)

    def index_sets(self) -> dict[str, list[np.ndarray]]:
        return {pos: M.keep_indices(self.masks[pos]) for pos in POSITIONS}

    def digest(self) -> str:
        """Short content hash of the five merged masks: the evaluation cache key of the DISP-pruned model."""
        h = hashlib.sha256(b"disp/1")
        for pos in POSITIONS:
            m = np.asarray(self.masks[pos], dtype=bool)
            h.update(pos.encode() + str(m.shape).encode() + np.packbits(m).tobytes())
        return "disp-" + h.hexdigest()[:16]


def build_disp_masks(stats: dict[str, dict], settings: DispSettings = DispSettings()) -> DispMaskResult:
    """Per-task masks and DIET's vote at each position, at the block-parameter budget — from statistics only."""
    if not stats:
        raise DietError("no task statistics: profile at least one task first")
    names = list(stats)
    shape = DispShape.from_dict(stats[names[0]][POSITIONS[0]].meta["shape"])
    if any(DispShape.from_dict(s[POSITIONS[0]].meta["shape"]).widths != shape.widths for s in stats.values()):
        raise DietError("the task statistics come from models of different shapes")
    if settings.merge == "threshold":
        settings.mask_settings(1.0).resolved_threshold(len(names))
    ks = keep_fractions(shape, settings)
    task_masks, merged, votes = {}, {}, {}
    for pos in POSITIONS:
        ms = settings.mask_settings(ks[pos])
        scores = np.stack([M.scores_from(stats[n][pos], settings.score) for n in names])
        task_masks[pos], merged[pos] = M.build_masks(scores, ms)
        merged[pos] = merged[pos] | ~merged[pos].any(axis=1, keepdims=True) & M.topk_rows(M.tie_scores(scores), 1)
        votes[pos] = M.votes(task_masks[pos])
    summary = {**param_summary(shape, {pos: M.kept_per_layer(merged[pos]) for pos in POSITIONS}),
               "keep_fraction": ks,
               "jaccard": {pos: M.jaccard_matrix(task_masks[pos]).round(4).tolist() for pos in POSITIONS}}
    return DispMaskResult(names, settings, task_masks, merged, votes, shape, summary)
