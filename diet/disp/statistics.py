"""Activation statistics at DISP's five positions, through the engine's one profiling loop and one cache.

The same fp32 running sums as DIET's unit statistics (Σ|x|, Σx², Σx per dim and half, non-padding tokens only),
taken where each index set acts, so DIET's vote chooses DISP index sets exactly as it chooses MLP channels. Only
the hooks are DISP's own (`PositionSums`); batching, halves, cancel, caching and the cache key are
`diet.profile.run_batches` and `diet.statistics.profile` with `POSITION_PROBE`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from diet.adapters import block_parts
from diet.cache import ArtifactCache
from diet.disp.structure import POSITIONS, DispShape, disp_layers, disp_shape
from diet.errors import DietError
from diet.profile import HalfSums, Stats, choose_texts, run_batches
from diet.settings import ProfileSettings
from diet.statistics import Probe, profile, stats_key
from diet.tasks import resolve_task

STATS = ("abs_sum", "sq_sum", "sum")


class PositionSums(HalfSums):
    """Forward hooks adding fp32 Σ|x|, Σx², Σx per dim and half, at the five positions of every layer.

    Hook points: the input norm's output (attn_in), what the attention block adds to the residual (o_proj output, or
    Gemma's post-attention norm output: attn_out), the pre-MLP norm's output (mlp_in), down_proj's input (mlp_mid,
    DIET's own unit) and what the MLP adds to the residual (mlp_out).
    """

    def __init__(self, model: nn.Module, shape: DispShape):
        if any(len(set(shape.widths[pos])) != 1 for pos in POSITIONS):
            raise DietError("profiling a model whose layers have different widths is not supported")
        dev = next(model.parameters()).device
        self.sums = {pos: {k: torch.zeros((2, shape.layers, shape.widths[pos][0]), dtype=torch.float32,
                                          device=dev) for k in STATS} for pos in POSITIONS}
        self.count = torch.zeros(2, dtype=torch.float64)
        self.handles = []
        for i, layer in enumerate(disp_layers(model)):
            p = block_parts(layer)
            points = {"attn_in": p.norm_attn, "attn_out": p.post_attn or p.o, "mlp_in": p.norm_mlp,
                      "mlp_out": p.post_mlp or p.down}
            for pos, mod in points.items():
                self.handles.append(mod.register_forward_hook(self._out_hook(pos, i)))
            self.handles.append(p.down.register_forward_pre_hook(self._in_hook("mlp_mid", i)))

    def _add(self, pos: str, i: int, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        w = self.weights.to(x.device)
        s = self.sums[pos]
        s["abs_sum"][:, i] += w @ x.abs()
        s["sq_sum"][:, i] += w @ (x * x)
        s["sum"][:, i] += w @ x

    def _out_hook(self, pos: str, i: int):
        return lambda module, args, output: self._add(pos, i, output[0] if isinstance(output, tuple) else output)

    def _in_hook(self, pos: str, i: int):
        return lambda module, args: self._add(pos, i, args[0])


def profile_positions(model: nn.Module, tokenizer, texts: list[str], settings: ProfileSettings,
                      progress: Callable[[int, int], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> dict[str, Stats]:
    """Statistics of `texts` at the five positions: {pos: Stats}. Same batching and halves as unit statistics."""
    shape = disp_shape(model)
    sums = PositionSums(model, shape)
    run_batches(model, tokenizer, texts, settings, sums, progress, should_stop)
    count = sums.count.numpy().astype(np.float64)
    meta = {"shape": shape.to_dict()}
    return {pos: Stats(**{k: v.cpu().numpy() for k, v in sums.sums[pos].items()}, count=count, meta=meta)
            for pos in POSITIONS}


def _run(model, tokenizer, texts, settings, progress, should_stop) -> tuple[dict, dict]:
    stats = profile_positions(model, tokenizer, texts, settings, progress, should_stop)
    first = stats[POSITIONS[0]]
    tensors = {f"{pos}.{k}": getattr(s, k) for pos, s in stats.items() for k in STATS}
    return {**tensors, "count": first.count}, dict(first.meta)


def _load(tensors: dict, meta: dict) -> dict[str, Stats]:
    return {pos: Stats(*(tensors[f"{pos}.{k}"] for k in STATS), count=tensors["count"], meta=meta)
            for pos in POSITIONS}


POSITION_PROBE = Probe("disp_stats", "disp-positions/1", _run, _load)


def is_disp_profiled(lm, task, settings: ProfileSettings = ProfileSettings(), cache=None) -> bool:
    """True when `task`'s statistics at the five positions are cached, so `profile_disp` would run no forward pass.

    Why: the app loads cached statistics at once and offers a (background) profiling pass only for what is missing.
    """
    texts = choose_texts(resolve_task(task).calibration, settings)
    key = stats_key(lm, texts, settings, POSITION_PROBE.tag)
    return (cache or ArtifactCache()).has(POSITION_PROBE.cache_kind, key)


def profile_disp(lm, tasks: Sequence, settings: ProfileSettings = ProfileSettings(),
                 progress: Callable[[str, int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, cache=None) -> dict[str, dict[str, Stats]]:
    """{task: {position: Stats}}, from the cache when present, else profiled once and cached atomically."""
    return profile(lm, tasks, settings, POSITION_PROBE, progress, should_stop, cache)
