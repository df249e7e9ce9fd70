"""Where the prunable units live, per architecture family — and how to cut them.

Why a registry: the engine (profiling, pruning, export) must never guess module names. Each family says where its
decoder layers are and how its MLP is built; a *unit* (MLP channels now; attention heads or hidden dims later) knows
which module's input carries its activations, how many parameters one unit owns, and how to slice or zero it.
Adding a unit or a family touches this file only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diet.errors import DietError


@dataclass(frozen=True)
class MLPParts:
    """The projections of one gated MLP: out = down(act(gate(x)) * up(x))."""

    down: nn.Linear
    gate: nn.Linear | None = None
    up: nn.Linear | None = None
    gate_up: nn.Linear | None = None  # fused (Phi-3): rows [0, I) are gate, rows [I, 2I) are up


@dataclass(frozen=True)
class Family:
    """What one architecture family looks like."""

    name: str  # e.g. "llama"
    model_types: tuple[str, ...]  # config.model_type values served by this family
    layers_path: str = "model.layers"  # attribute path from the CausalLM to its decoder layers
    fused_gate_up: bool = False  # Phi-3 fuses gate and up into one gate_up_proj

    def layers(self, model: nn.Module) -> nn.ModuleList:
        obj = model
        for attr in self.layers_path.split("."):
            obj = getattr(obj, attr)
        return obj

    def mlp(self, layer: nn.Module) -> MLPParts:
        m = layer.mlp
        if self.fused_gate_up:
            return MLPParts(down=m.down_proj, gate_up=m.gate_up_proj)
        return MLPParts(down=m.down_proj, gate=m.gate_proj, up=m.up_proj)


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",)),
    Family("mistral", ("mistral",)),
    Family("qwen2", ("qwen2",)),  # attention biases do not touch the MLP
    Family("gemma2", ("gemma2",)),  # sandwich norms act on the hidden size only: MLP slicing is exact
    Family("gemma3", ("gemma3_text",)),
    Family("phi3", ("phi3",), fused_gate_up=True),
)
SUPPORTED = ", ".join(t for f in FAMILIES for t in f.model_types)


def get_family(model: nn.Module) -> Family:
    """The family of a loaded model, or a clear error naming the supported ones."""
    model_type = getattr(model.config, "model_type", "?")
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise DietError(f"architecture {model_type!r} is not supported yet; supported: {SUPPORTED}")


# ---------------------------------------------------------------- units


def _new_linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _check_plain(lin: nn.Module) -> None:
    if type(lin) is not nn.Linear:
        raise DietError(f"cannot slice a {type(lin).__name__} layer (quantized models can be profiled, not pruned):"
                        " load the model without 8/4-bit quantization to prune it")


class MLPChannels:
    """MLP intermediate channels: channel j = row j of gate and up, column j of down.

    Hook point: the *input* of down_proj, i.e. act(gate(x)) * up(x) — the activation a channel contributes.
    """

    name = "mlp"

    def __init__(self, family: Family):
        self.family = family

    def hook_module(self, layer: nn.Module) -> nn.Module:
        return self.family.mlp(layer).down

    def width(self, layer: nn.Module) -> int:
        return self.family.mlp(layer).down.in_features

    def params_per_unit(self, layer: nn.Module) -> int:
        """Parameters removed with one channel: a gate row, an up row, a down column (+ their biases)."""
        p = self.family.mlp(layer)
        hidden = p.down.out_features
        n = 3 * hidden
        if p.gate_up is not None:
            n += 2 if p.gate_up.bias is not None else 0
        else:
            n += (p.gate.bias is not None) + (p.up.bias is not None)
        return n

    def down_weight(self, layer: nn.Module) -> torch.Tensor:
        """down_proj weight (out x channels): baselines such as Wanda-sp and FLAP weight scores by its columns."""
        return self.family.mlp(layer).down.weight

    def slice(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """Physically keep only channels `keep` (sorted long indices) of this layer, in place."""
        p = self.family.mlp(layer)
        mlp = layer.mlp
        keep = keep.to(p.down.weight.device)
        for lin in (p.down, p.gate, p.up, p.gate_up):
            if lin is not None:
                _check_plain(lin)
        mlp.down_proj = _new_linear(p.down, p.down.weight[:, keep], p.down.bias)
        if p.gate_up is not None:
            width = p.down.in_features
            rows = torch.cat([keep, keep + width])
            b = p.gate_up.bias[rows] if p.gate_up.bias is not None else None
            mlp.gate_up_proj = _new_linear(p.gate_up, p.gate_up.weight[rows], b)
        else:
            for attr, lin in (("gate_proj", p.gate), ("up_proj", p.up)):
                b = lin.bias[keep] if lin.bias is not None else None
                setattr(mlp, attr, _new_linear(lin, lin.weight[keep], b))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(keep.numel())

    def zero(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """The masked-dense reference: zero the down_proj columns of every channel not in `keep`, in place."""
        p = self.family.mlp(layer)
        drop = torch.ones(p.down.in_features, dtype=torch.bool, device=p.down.weight.device)
        drop[keep.to(drop.device)] = False
        with torch.no_grad():
            p.down.weight[:, drop] = 0


UNITS = {"mlp": MLPChannels}


def get_unit(model: nn.Module, unit: str = "mlp") -> MLPChannels:
    if unit not in UNITS:
        raise DietError(f"unknown unit {unit!r}: supported units: {', '.join(UNITS)}")
    return UNITS[unit](get_family(model))


def model_shape(model: nn.Module, unit: str = "mlp") -> dict:
    """What mask math needs to know about a model, as plain numbers (so masks never need the model)."""
    from diet.models import count_parameters

    u = get_unit(model, unit)
    layers = u.family.layers(model)
    return {
        "family": u.family.name,
        "unit": unit,
        "layers": len(layers),
        "widths": [u.width(layer) for layer in layers],
        "params_per_unit": [u.params_per_unit(layer) for layer in layers],
        "total_params": count_parameters(model),
    }
