"""Physical pruning: slice the kept units out of every layer, so the model is really smaller (and faster).

Why also `zero_units`: the masked-dense model (pruned units zeroed, shapes unchanged) is the reference every
exactness test compares against, and it is the `padded` export — outputs identical, any loader accepts it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch

from diet.adapters import get_unit, kv_group_words
from diet.errors import DietError


def as_index_list(model: torch.nn.Module, keep: Sequence | np.ndarray, unit: str = "mlp"):
    """(unit adapter, decoder layers, sorted kept indices per layer as long tensors), checked like pruning does."""
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
        if unit == "heads" and idx.max() >= width and u.group_size(layer) > 1:
            raise DietError(f"layer {i}: kept index {int(idx.max())} breaks the KV grouping: "
                            f"{kv_group_words(model, layer)}")
        if idx.min() < 0 or idx.max() >= width or idx.unique().numel() != idx.numel():
            raise DietError(f"layer {i}: kept indices must be distinct and within 0..{width - 1}")
        out.append(idx.sort().values)
    return u, layers, out


def add_bias_compensation(u, layers, idx, compensation) -> None:
    """FLAP: add each layer's pruned units' mean contribution as a bias of the output projection (before cutting).

    `compensation` (L, channels): the mean input of every profiled channel; shapes are checked per layer."""
    if compensation is None:
        return
    compensation = np.asarray(compensation)
    if compensation.shape[0] != len(layers):
        raise DietError(f"the compensation has {compensation.shape[0]} layers but the model has {len(layers)}")
    for i, (layer, k) in enumerate(zip(layers, idx, strict=True)):
        if compensation[i].shape[0] != u.stat_width(layer):
            raise DietError(f"layer {i}: compensation has {compensation[i].shape[0]} channels, expected "
                            f"{u.stat_width(layer)}")
        u.compensate(layer, k, torch.as_tensor(compensation[i]))


_PRUNED_IN_PLACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> what was done to it


def mark_pruned(model: torch.nn.Module, what: str) -> None:
    """Remember that `model` (a loaded model) was pruned in place, so nobody profiles it as the dense model."""
    _PRUNED_IN_PLACE[model] = what


def check_dense(model: torch.nn.Module) -> None:
    """Refuse to profile a loaded model that an export pruned in place: its statistics would be cached under the
    dense model's identity."""
    what = _PRUNED_IN_PLACE.get(model)
    if what is not None:
        raise DietError(f"this model was pruned in place ({what}); load it again to profile the dense model")


def _check_resident(layer: torch.nn.Module, i: int) -> None:
    for p in layer.parameters():
        if p.device.type == "meta":
            raise DietError(f"layer {i} is offloaded (device map on CPU/disk) and cannot be sliced in place: load "
                            "the model without --device-map (or with every layer on a GPU) to prune it")


def prune_units(model: torch.nn.Module, keep: Sequence | np.ndarray, unit: str = "mlp",
                compensation: np.ndarray | None = None, release: bool = False) -> torch.nn.Module:
    """Slice `model` in place to the kept units (per layer: sorted indices, or one boolean (L, I) mask).

    Widths may differ per layer; the model runs on the same transformers code. When every layer keeps the same
    count, the config's width is updated so `save_pretrained` gives a stock, loadable config.
    `compensation` (L, channels): the mean input of every profiled channel; when given, the output projection
    gains the bias W[:, pruned] · mean[pruned] (FLAP), so the model then has a bias there (down_proj or o_proj).
    Layers are sliced one at a time, each old weight dropped before the next layer is cut, so the peak is the
    model plus one layer's sliced weights. `release=True` also gives back the resident pages of replaced weights
    that are views of the checkpoint file (`diet.memory.PageReleaser`): use it when nothing else keeps the dense
    model, so its file pages do not stay counted next to the pruned weights.
    """
    from diet.memory import PageReleaser

    u, layers, idx = as_index_list(model, keep, unit)
    for i, layer in enumerate(layers):
        _check_resident(layer, i)
    add_bias_compensation(u, layers, idx, compensation)
    releaser = PageReleaser() if release else None
    for layer, k in zip(layers, idx, strict=True):
        before = list(layer.parameters())
        u.slice(layer, k)
        if releaser is not None:
            kept = {id(p) for p in layer.parameters()}
            for p in before:
                if id(p) not in kept:
                    releaser.release(p.detach())
        del before
    widths = {int(k.numel()) for k in idx}
    if unit == "mlp" and len(widths) == 1:
        model.config.intermediate_size = widths.pop()
    if unit == "heads" and len(widths) == 1:
        group = u.group_size(layers[0])
        model.config.head_dim = u.head_dim(layers[0])  # explicit: hidden / heads no longer gives it
        model.config.num_key_value_heads = widths.pop()
        model.config.num_attention_heads = model.config.num_key_value_heads * group
    return model


def zero_units(model: torch.nn.Module, keep: Sequence | np.ndarray, unit: str = "mlp",
               compensation: np.ndarray | None = None) -> torch.nn.Module:
    """Zero the pruned units in place (shapes unchanged): the masked-dense reference of `prune_units`."""
    u, layers, idx = as_index_list(model, keep, unit)
    add_bias_compensation(u, layers, idx, compensation)
    for layer, k in zip(layers, idx, strict=True):
        u.zero(layer, k)
    return model


def unit_widths(model: torch.nn.Module, unit: str = "mlp") -> list[int]:
    u = get_unit(model, unit)
    return [u.width(layer) for layer in u.family.layers(model)]
