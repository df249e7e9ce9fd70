"""The result of any mask method: what the views, pruning and export read. Pure numpy (no model, no torch).

Why its own module: `diet.methods` builds these and `diet.api` hands them out; both import it downward.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from diet import masks as M
from diet.errors import DietError
from diet.settings import MaskSettings
from diet.shape import ModelShape


@dataclass
class MaskResult:
    """Everything the views, pruning and export need about one choice of mask settings."""

    tasks: list[str]
    settings: MaskSettings
    task_masks: np.ndarray  # (T, L, I) bool
    mask: np.ndarray  # (L, I) bool: the merged, global mask
    votes: np.ndarray  # (L, I) uint8
    shape: ModelShape  # the model's prunable units: widths, params per unit, total params
    summary: dict = field(default_factory=dict)  # sparsity two ways, kept per layer, overlap statistics
    method: str = "diet"  # the diet.methods registry name that produced the mask
    compensation: np.ndarray | None = None  # FLAP: (L, channels) mean input; pruning adds it as an output bias
    ranking: np.ndarray | None = None  # (L, I) importance (votes, then mean normalised score): what --round-to uses

    @property
    def unit(self) -> str:
        return self.shape.unit

    def keep(self) -> list[np.ndarray]:
        return M.keep_indices(self.mask)

    def digest(self) -> str:
        """The evaluation cache key of this mask's pruned model: a short content hash of the kept units, and the
        compensation when it is not the method's own (a different model from the same mask)."""
        mask = np.asarray(self.mask, dtype=bool)
        comp = self.summary.get("compensation", "none")
        h = hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()[:16]
        return h + ("" if comp == "none" else f"+{comp}")


def single_mask(result: MaskResult) -> bool:
    """True when the result is one mask named after its method (a baseline), not per-task masks merged by a vote:
    the views per task (votes, overlap between tasks) then do not apply."""
    return result.method != "diet" and list(result.tasks) == [result.method]


def mask_stats(result: MaskResult, stats: dict) -> dict:
    """The statistics behind the result's task masks (per-task methods), or all profiled tasks for a single mask
    (then only used to sort channels by DIET's mean score, a reference order)."""
    if single_mask(result):
        return dict(stats)
    return {n: stats[n] for n in result.tasks}


def rounded(result: MaskResult, multiple: int) -> MaskResult:
    """`result` with every layer's kept count rounded to a multiple of `multiple` by the mask's own ranking (the
    same object when nothing changes); the summary is recomputed so sizes and sparsity describe the rounded mask.
    Here, beside the result, because both the service (`diet.api`) and the export writers round."""
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
