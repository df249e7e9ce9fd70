"""Physical pruning: slice the kept units out of every layer, so the model is really smaller (and faster).

Why also `zero_units`: the masked-dense model (pruned units zeroed, shapes unchanged) is the reference every
exactness test compares against, and it is the `padded` export — outputs identical, any loader accepts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diet.adapters import get_unit
from diet.errors import DietError


def _as_index_list(model: torch.nn.Module, keep: Sequence | np.ndarray, unit: str):
    u = get_unit(model, unit)
    layers = u.family.layers(model)
    if isinstance(keep, np.ndarray) and keep.dtype == bool:  # a boolean (L, I) mask
        keep = [np.nonzero(row)[0] for row in keep]
    if len(keep) != len(layers):
        raise DietError(f"the mask has {len(keep)} layers but the model has {len(layers)}")
    out = []
    for i, (layer, k) in enumerate(zip(layers, keep, strict=True)):
        idx = torch.as_tensor(np.asarray(k), dtype=torch.long)
        width = u.width(layer)
        if idx.numel() == 0:
            raise DietError(f"layer {i} would keep no unit; every layer must keep at least one")
        if idx.min() < 0 or idx.max() >= width or idx.unique().numel() != idx.numel():
            raise DietError(f"layer {i}: kept indices must be distinct and within 0..{width - 1}")
        out.append(idx.sort().values)
    return u, layers, out


def prune_units(model: torch.nn.Module, keep: Sequence | np.ndarray, unit: str = "mlp") -> torch.nn.Module:
    """Slice `model` in place to the kept units (per layer: sorted indices, or one boolean (L, I) mask).

    Widths may differ per layer; the model runs on the same transformers code. When every layer keeps the same
    count, the config's width is updated so `save_pretrained` gives a stock, loadable config.
    """
    u, layers, idx = _as_index_list(model, keep, unit)
    for layer, k in zip(layers, idx, strict=True):
        u.slice(layer, k)
    widths = {int(k.numel()) for k in idx}
    if unit == "mlp" and len(widths) == 1:
        model.config.intermediate_size = widths.pop()
    return model


def zero_units(model: torch.nn.Module, keep: Sequence | np.ndarray, unit: str = "mlp") -> torch.nn.Module:
    """Zero the pruned units in place (shapes unchanged): the masked-dense reference of `prune_units`."""
    u, layers, idx = _as_index_list(model, keep, unit)
    for layer, k in zip(layers, idx, strict=True):
        u.zero(layer, k)
    return model


def unit_widths(model: torch.nn.Module, unit: str = "mlp") -> list[int]:
    u = get_unit(model, unit)
    return [u.width(layer) for layer in u.family.layers(model)]
