"""DISP's structure: which modules each index set cuts, the masked-dense reference, slicing, parameter accounting.

Everything here is exact bookkeeping: `zero_disp` (weights outside the index sets zeroed) and `slice_disp` (the
layers rebuilt to index_select / index_add) compute the same function; `param_summary` counts block parameters as the
paper counts them. Module names come from `diet.adapters.block_parts`; the layer code from `modeling_disp.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diet.adapters import block_parts, check_plain, get_family
from diet.disp.modeling_disp import DispLayerMixin, disp_convert_layer
from diet.errors import DietError
from diet.models import count_parameters

POSITIONS = ("attn_in", "attn_out", "mlp_in", "mlp_mid", "mlp_out")
POSITION_SHORT = {"attn_in": "Attention input", "attn_out": "Attention output", "mlp_in": "MLP input",
                  "mlp_mid": "MLP channels", "mlp_out": "MLP output"}
POSITION_WHAT = {"attn_in": "residual dims read by attention (q/k/v)",
                 "attn_out": "residual dims written by attention (o_proj)",
                 "mlp_in": "residual dims read by the MLP (gate/up)",
                 "mlp_mid": "MLP intermediate channels",
                 "mlp_out": "residual dims written by the MLP (down_proj)"}
POSITION_LABELS = {p: f"{POSITION_SHORT[p]} ({POSITION_WHAT[p]})" for p in POSITIONS}
RESIDUAL = ("attn_in", "attn_out", "mlp_in", "mlp_out")  # residual dims: dim d is the same coordinate in every layer
DISP_FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "gemma3")


def unit_word(pos: str) -> str:
    """What one element of a position's index set is, in words: a residual dim or an MLP channel."""
    return "residual dim" if pos in RESIDUAL else "MLP channel"

IndexSets = Mapping[str, Sequence]  # position -> per-layer sorted kept indices (np arrays, lists or tensors)

def disp_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers DISP works on (of a dense model of a supported family, or of a reloaded DISP export)."""
    if str(getattr(model.config, "model_type", "")).startswith("disp_"):  # a reloaded DISP export
        return model.model.layers
    fam = get_family(model)
    if fam.name not in DISP_FAMILIES:
        raise DietError(f"DISP supports {', '.join(DISP_FAMILIES)} models; {fam.name} is not supported yet")
    return fam.layers(model)


def is_disp_layer(layer: nn.Module) -> bool:
    """True for a DISP layer, whether built here or by a reloaded folder's own copy of the modelling file."""
    return isinstance(layer, DispLayerMixin) or all(hasattr(layer, f"disp_{p}") for p in POSITIONS)


@dataclass(frozen=True)
class DispShape:
    """Plain numbers the index-set math and the parameter count need (so they never need the model).

    DISP's own shape, not `diet.shape.ModelShape`: it has five positions per layer, not one prunable unit. It travels
    as a dict inside the statistics' JSON metadata (`to_dict`/`from_dict`)."""

    hidden: int  # residual width: the size of every residual position's index set before pruning
    widths: dict[str, tuple[int, ...]]  # position -> per-layer width (hidden for residual positions, MLP for mlp_mid)
    qkv_out: tuple[int, ...]  # per layer: q + k + v output features (q + 2·kv under grouped-query attention)
    o_in: tuple[int, ...]  # per layer: o_proj input features
    total_params: int  # every parameter of the dense model

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", {p: tuple(int(w) for w in self.widths[p]) for p in POSITIONS})
        object.__setattr__(self, "qkv_out", tuple(int(w) for w in self.qkv_out))
        object.__setattr__(self, "o_in", tuple(int(w) for w in self.o_in))

    @property
    def layers(self) -> int:
        return len(self.o_in)

    def to_dict(self) -> dict:
        return {"layers": self.layers, "hidden": self.hidden, "widths": {p: list(w) for p, w in self.widths.items()},
                "qkv_out": list(self.qkv_out), "o_in": list(self.o_in), "total_params": self.total_params}

    @classmethod
    def from_dict(cls, d: dict) -> DispShape:
        return cls(hidden=d["hidden"], widths=d["widths"], qkv_out=d["qkv_out"], o_in=d["o_in"],
                   total_params=d["total_params"])


def disp_shape(model: nn.Module) -> DispShape:
    """The dense model's DISP shape (refused for a model that is already DISP-pruned)."""
    layers = disp_layers(model)
    if any(is_disp_layer(layer) for layer in layers):
        raise DietError("this model is already DISP-pruned: start from the dense model")
    parts = [block_parts(layer) for layer in layers]
    hidden = int(model.config.hidden_size)
    residual = (hidden,) * len(parts)
    return DispShape(
        hidden=hidden,
        widths={"attn_in": residual, "attn_out": residual, "mlp_in": residual,
                "mlp_mid": tuple(p.down.in_features for p in parts), "mlp_out": residual},
        qkv_out=tuple(p.q.out_features + p.k.out_features + p.v.out_features for p in parts),
        o_in=tuple(p.o.in_features for p in parts),
        total_params=count_parameters(model),
    )


def block_params(counts: Mapping, qkv_out, o_in):
    """Block weights kept, counted as the paper counts them (weights of q/k/v/o and gate/up/down; no biases).

    Per layer: attn_in·(q + k + v outputs) + attn_out·(o inputs) + 2·mlp_in·mlp_mid + mlp_mid·mlp_out. Works on
    numpy arrays and on torch tensors (the hypernetwork differentiates through it), summed over layers.
    """
    c = counts
    per_layer = (c["attn_in"] * qkv_out + c["attn_out"] * o_in + 2 * c["mlp_in"] * c["mlp_mid"]
                 + c["mlp_mid"] * c["mlp_out"])
    return per_layer.sum()


def param_summary(shape: DispShape, counts: Mapping) -> dict:
    """Kept block fraction p (the paper's budget) and the fraction of *all* model parameters removed."""
    full = {pos: np.asarray(shape.widths[pos], dtype=np.int64) for pos in POSITIONS}
    cnt = {pos: np.asarray(counts[pos], dtype=np.int64) for pos in POSITIONS}
    qkv, o_in = np.asarray(shape.qkv_out, dtype=np.int64), np.asarray(shape.o_in, dtype=np.int64)
    total_block = int(block_params(full, qkv, o_in))
    kept_block = int(block_params(cnt, qkv, o_in))
    removed = total_block - kept_block
    return {
        "block_params": total_block,
        "block_params_kept": kept_block,
        "block_kept_fraction": kept_block / total_block,  # the paper's p
        "block_sparsity": removed / total_block,
        "params_total": shape.total_params,
        "params_removed": removed,
        "params_after": shape.total_params - removed,
        "param_sparsity": removed / shape.total_params,
        "kept_per_layer": {pos: cnt[pos].tolist() for pos in POSITIONS},
    }


def check_sets(shape: DispShape, sets: IndexSets) -> dict[str, list[torch.Tensor]]:
    """Validated index sets: every position present, per layer distinct, in range, non-empty; sorted tensors."""
    missing = [p for p in POSITIONS if p not in sets]
    if missing:
        raise DietError(f"index sets are missing position(s) {', '.join(missing)}")
    out: dict[str, list[torch.Tensor]] = {}
    for pos in POSITIONS:
        per_layer = sets[pos]
        if isinstance(per_layer, np.ndarray) and per_layer.dtype == bool:
            per_layer = [np.nonzero(row)[0] for row in per_layer]
        if len(per_layer) != shape.layers:
            raise DietError(f"{pos}: {len(per_layer)} layers of index sets for a model with {shape.layers}")
        out[pos] = []
        for i, (idx, width) in enumerate(zip(per_layer, shape.widths[pos], strict=True)):
            t = torch.as_tensor(np.asarray(idx), dtype=torch.long).flatten()
            if t.numel() == 0:
                raise DietError(f"layer {i} {pos}: keeps no dimension; every index set must keep at least one")
            if t.min() < 0 or t.max() >= width or t.unique().numel() != t.numel():
                raise DietError(f"layer {i} {pos}: indices must be distinct and within 0..{width - 1}")
            out[pos].append(t.sort().values)
    return out


def counts_of(sets: IndexSets) -> dict[str, np.ndarray]:
    return {pos: np.array([len(np.asarray(k).ravel()) for k in sets[pos]]) for pos in POSITIONS}


def zero_disp(model: nn.Module, sets: IndexSets) -> nn.Module:
    """The masked-dense reference, in place: zero every weight (and bias) that an index set leaves out."""
    shape = disp_shape(model)
    s = check_sets(shape, sets)
    def dropped(keep: torch.Tensor, width: int, device) -> torch.Tensor:
        d = torch.ones(width, dtype=torch.bool)
        d[keep] = False
        return d.to(device)

    hidden = shape.hidden
    for i, layer in enumerate(disp_layers(model)):
        p = block_parts(layer)
        drop = lambda pos, width, i=i, dev=p.o.weight.device: dropped(s[pos][i], width, dev)  # noqa: E731
        with torch.no_grad():
            for lin in (p.q, p.k, p.v):
                lin.weight[:, drop("attn_in", hidden)] = 0
            for lin, d in ((p.o, drop("attn_out", hidden)), (p.down, drop("mlp_out", hidden))):
                lin.weight[d] = 0
                if lin.bias is not None:
                    lin.bias[d] = 0
            for lin in (p.gate, p.up):
                lin.weight[:, drop("mlp_in", hidden)] = 0
            p.down.weight[:, drop("mlp_mid", p.down.in_features)] = 0
    return model


def slice_disp(model: nn.Module, sets: IndexSets) -> nn.Module:
    """Physically slice `model` in place to the index sets: DISP layers that index_select / index_add."""
    shape = disp_shape(model)
    s = check_sets(shape, sets)
    for i, layer in enumerate(disp_layers(model)):
        p = block_parts(layer)
        for lin in (p.q, p.k, p.v, p.o, p.gate, p.up, p.down):
            check_plain(lin)
        disp_convert_layer(layer, {pos: s[pos][i] for pos in POSITIONS})
    return model


def index_sets_of(model: nn.Module) -> dict[str, list[np.ndarray]]:
    """The index sets a DISP-sliced model carries (read back from its buffers)."""
    layers = disp_layers(model)
    if not all(is_disp_layer(layer) for layer in layers):
        raise DietError("this model is not DISP-sliced")
    return {pos: [getattr(layer, f"disp_{pos}").cpu().numpy() for layer in layers] for pos in POSITIONS}


def disp_copy(model: nn.Module, sets: IndexSets) -> nn.Module:
    """A DISP-sliced deep copy, for side-by-side comparisons only: it holds the model twice (the dense one stays)."""
    return slice_disp(copy.deepcopy(model), sets)
