"""Where the prunable units live, per architecture family — and how to cut them.

Why a registry: the engine (profiling, pruning, export) must never guess module names. Each family says where its
decoder layers are and how its MLP is built; a *unit* (MLP channels, or attention heads as whole KV groups) knows
which module's input carries its activations, how many parameters one unit owns, and how to slice or zero it. DISP's
view of a block (`block_parts`) and the serving writers' roles (`llama_like_parts`) live here too, so adding a unit
or a family touches this file only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diet.errors import DietError
from diet.settings import UNITS
from diet.shape import ModelShape


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
    """A plain nn.Linear holding copies of `weight` and `bias`, on their device and in their dtype.

    Why skip_init: nn.Linear's constructor fills its weight with random numbers (kaiming_uniform) that the copy
    below overwrites at once; for a pruned copy of a 135M model that was ~0.6 s of random numbers for nothing
    (slicing every MLP of the model builds 3 new layers per block)."""
    lin = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                                   device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def check_plain(lin: nn.Module) -> None:
    """Refuse to slice anything but a plain nn.Linear (a bitsandbytes layer would be silently broken)."""
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

    def stat_width(self, layer: nn.Module) -> int:
        """Profiled channels (the hook input's width): one per unit here."""
        return self.width(layer)

    def channels_per_unit(self, layer: nn.Module) -> int:
        return 1

    def out_proj(self, layer: nn.Module) -> nn.Linear:
        """The projection that reads the profiled channels (its columns weight Wanda-sp and FLAP scores)."""
        return self.family.mlp(layer).down

    bias_flag = "mlp_bias"  # the stock config flag that gives every MLP projection a bias

    def bias_linears(self, layer: nn.Module) -> list[nn.Linear]:
        """The projections `bias_flag` gives a bias (gate, up or fused gate_up, down)."""
        p = self.family.mlp(layer)
        return [lin for lin in (p.gate, p.up, p.gate_up, p.down) if lin is not None]

    def unit_weight_norms(self, layer: nn.Module) -> torch.Tensor:
        """(width,) L2 norm of every weight a channel owns (gate row, up row, down column): the magnitude score."""
        p = self.family.mlp(layer)
        sq = p.down.weight.detach().float().pow(2).sum(0)
        if p.gate_up is not None:
            gu = p.gate_up.weight.detach().float().pow(2).sum(1)
            sq = sq + gu[: sq.numel()] + gu[sq.numel():]
        else:
            sq = sq + p.gate.weight.detach().float().pow(2).sum(1) + p.up.weight.detach().float().pow(2).sum(1)
        return sq.sqrt()

    def compensate(self, layer: nn.Module, keep: torch.Tensor, means: torch.Tensor) -> None:
        """FLAP's bias compensation: down_proj gains the bias W[:, pruned] · mean(x[pruned]) (call before slicing)."""
        _compensate(layer.mlp, "down_proj", keep, means)

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

    def kept_channels(self, layer: nn.Module, keep: torch.Tensor) -> torch.Tensor:
        """The output projection's input columns the kept units own (one per channel here)."""
        return keep.to(self.out_proj(layer).weight.device)

    def slice(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """Physically keep only channels `keep` (sorted long indices) of this layer, in place."""
        p = self.family.mlp(layer)
        mlp = layer.mlp
        keep = keep.to(p.down.weight.device)
        for lin in (p.down, p.gate, p.up, p.gate_up):
            if lin is not None:
                check_plain(lin)
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

    def zero_channels(self, layer: nn.Module, channels: torch.Tensor) -> None:
        """Zero every weight and bias of `channels` (gate/up rows, down columns): padding that contributes exactly 0
        and stores no stray values."""
        p = self.family.mlp(layer)
        idx = torch.as_tensor(channels, dtype=torch.long, device=p.down.weight.device)
        with torch.no_grad():
            p.down.weight[:, idx] = 0
            if p.gate_up is not None:
                rows = torch.cat([idx, idx + p.down.in_features])
                p.gate_up.weight[rows] = 0
                if p.gate_up.bias is not None:
                    p.gate_up.bias[rows] = 0
            else:
                for lin in (p.gate, p.up):
                    lin.weight[idx] = 0
                    if lin.bias is not None:
                        lin.bias[idx] = 0

    def zero(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """The masked-dense reference: zero the down_proj columns of every channel not in `keep`, in place."""
        p = self.family.mlp(layer)
        drop = torch.ones(p.down.in_features, dtype=torch.bool, device=p.down.weight.device)
        drop[keep.to(drop.device)] = False
        with torch.no_grad():
            p.down.weight[:, drop] = 0


def _compensate(owner: nn.Module, attr: str, keep_channels: torch.Tensor, means: torch.Tensor) -> None:
    """Add W[:, dropped] · means[dropped] to the bias of `owner.<attr>` (a new bias when it had none).

    Why: a pruned channel's average contribution is a constant vector; adding it back as a bias removes the mean
    shift pruning causes (FLAP). The masked reference is `zero` after this call, so sliced == masked still holds.
    """
    lin = getattr(owner, attr)
    check_plain(lin)
    w = lin.weight.detach()
    drop = torch.ones(w.shape[1], dtype=torch.bool, device=w.device)
    drop[keep_channels.to(w.device)] = False
    means = torch.as_tensor(means, device=w.device)
    delta = (w[:, drop].double() @ means[drop].double()).to(w.dtype)
    bias = delta if lin.bias is None else lin.bias.detach() + delta
    setattr(owner, attr, _new_linear(lin, w, bias))


class AttentionHeads:
    """Attention heads, pruned as whole KV groups: group g = key/value head g and the query heads that share it.

    Unit g owns q_proj rows of its query heads, k_proj and v_proj rows of kv head g, and the o_proj columns of its
    query heads (GQA: query head h reads kv head h // group_size). Hook point: the *input* of o_proj, i.e. the
    concatenated per-head attention outputs; statistics are kept per o_proj input channel (heads × head_dim) and
    pooled into groups by the methods. Exact for every family whose attention infers the head count from tensor
    shapes (Llama, Mistral, Qwen2, Gemma-2, Gemma-3); not for Phi-3's fused qkv_proj, which reads it from the config.
    """

    name = "heads"

    def __init__(self, family: Family):
        self.family = family

    def _attn(self, layer: nn.Module) -> nn.Module:
        attn = layer.self_attn
        if hasattr(attn, "qkv_proj"):
            raise DietError(f"attention-head pruning is not supported for {self.family.name} (fused qkv_proj): "
                            "prune MLP channels instead")
        return attn

    def hook_module(self, layer: nn.Module) -> nn.Module:
        return self._attn(layer).o_proj

    def head_dim(self, layer: nn.Module) -> int:
        return int(self._attn(layer).head_dim)

    def group_size(self, layer: nn.Module) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return int(self._attn(layer).num_key_value_groups)

    def width(self, layer: nn.Module) -> int:
        return self._attn(layer).k_proj.out_features // self.head_dim(layer)

    def stat_width(self, layer: nn.Module) -> int:
        return self._attn(layer).o_proj.in_features

    def channels_per_unit(self, layer: nn.Module) -> int:
        return self.group_size(layer) * self.head_dim(layer)

    def out_proj(self, layer: nn.Module) -> nn.Linear:
        return self._attn(layer).o_proj

    bias_flag = "attention_bias"  # the stock config flag that gives q/k/v/o a bias

    def bias_linears(self, layer: nn.Module) -> list[nn.Linear]:
        a = self._attn(layer)
        return [a.q_proj, a.k_proj, a.v_proj, a.o_proj]

    def params_per_unit(self, layer: nn.Module) -> int:
        a = self._attn(layer)
        d, g, hidden = self.head_dim(layer), self.group_size(layer), a.o_proj.out_features
        n = 2 * g * d * hidden + 2 * d * hidden  # q rows + o columns, k rows + v rows
        n += g * d * (a.q_proj.bias is not None) + d * ((a.k_proj.bias is not None) + (a.v_proj.bias is not None))
        return n

    def _rows(self, layer: nn.Module, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query rows = o_proj columns, key/value rows) of the kept groups, in order."""
        d, c = self.head_dim(layer), self.channels_per_unit(layer)
        keep = keep.to(self._attn(layer).o_proj.weight.device)
        q = (keep[:, None] * c + torch.arange(c, device=keep.device)).reshape(-1)
        kv = (keep[:, None] * d + torch.arange(d, device=keep.device)).reshape(-1)
        return q, kv

    def kept_channels(self, layer: nn.Module, keep: torch.Tensor) -> torch.Tensor:
        """The o_proj input columns of the kept groups (all their query heads × head_dim), in order."""
        return self._rows(layer, keep)[0]

    def unit_weight_norms(self, layer: nn.Module) -> torch.Tensor:
        """(groups,) L2 norm of all weights a group owns (q, k, v rows and o columns): the magnitude score."""
        a = self._attn(layer)
        n, d, c = self.width(layer), self.head_dim(layer), self.channels_per_unit(layer)
        sq = lambda w, dim: w.detach().float().pow(2).sum(dim)  # noqa: E731
        q = sq(a.q_proj.weight, 1).reshape(n, c).sum(1) + sq(a.o_proj.weight, 0).reshape(n, c).sum(1)
        kv = sq(a.k_proj.weight, 1).reshape(n, d).sum(1) + sq(a.v_proj.weight, 1).reshape(n, d).sum(1)
        return (q + kv).sqrt()

    def slice(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """Physically keep only the groups `keep` (sorted long indices), in place."""
        a = self._attn(layer)
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj):
            check_plain(lin)
        q, kv = self._rows(layer, keep)
        for attr, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            lin = getattr(a, attr)
            setattr(a, attr, _new_linear(lin, lin.weight[rows], lin.bias[rows] if lin.bias is not None else None))
        a.o_proj = _new_linear(a.o_proj, a.o_proj.weight[:, q], a.o_proj.bias)
        heads = q.numel() // self.head_dim(layer)
        for attr, value in (("num_heads", heads), ("num_attention_heads", heads),
                            ("num_key_value_heads", int(keep.numel()))):
            if hasattr(a, attr):  # attributes some attention classes read in forward
                setattr(a, attr, value)

    def zero(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """Masked-dense reference: zero the o_proj columns of every query head of a dropped group, in place."""
        o = self._attn(layer).o_proj
        q, _ = self._rows(layer, keep)
        drop = torch.ones(o.in_features, dtype=torch.bool, device=o.weight.device)
        drop[q] = False
        with torch.no_grad():
            o.weight[:, drop] = 0

    def compensate(self, layer: nn.Module, keep: torch.Tensor, means: torch.Tensor) -> None:
        """FLAP's bias compensation on o_proj (call before slicing)."""
        q, _ = self._rows(layer, keep)
        _compensate(self._attn(layer), "o_proj", q, means)


UNIT_CLASSES = {u.name: u for u in (MLPChannels, AttentionHeads)}  # the unit names are diet.settings.UNITS


def get_unit(model: nn.Module, unit: str = "mlp") -> MLPChannels | AttentionHeads:
    if unit not in UNITS:
        raise DietError(f"unknown unit {unit!r}: supported units: {', '.join(UNITS)}")
    return UNIT_CLASSES[unit](get_family(model))


def check_prunable(model: nn.Module, unit: str = "mlp") -> None:
    """Refuse a unit with nothing to remove, before any profiling: a model with one key/value head per layer
    (Gemma-3-270m: 4 query heads share it) has one KV group per layer, and every layer keeps at least one."""
    u = get_unit(model, unit)
    layers = u.family.layers(model)
    if unit == "heads" and all(u.width(layer) == 1 for layer in layers):
        raise DietError(f"this model has one key/value head per layer ({u.group_size(layers[0])} query heads share "
                        "it): heads are pruned as whole KV groups and every layer keeps one, so no head can be "
                        "removed; prune MLP channels (--unit mlp)")


def kv_group_words(model: nn.Module, layer: nn.Module) -> str:
    """How a head mask indexes this model, for the message that refuses one made for query heads."""
    u = get_unit(model, "heads")
    return (f"a head mask names KV groups (0..{u.width(layer) - 1}), not query heads: each of the "
            f"{u.width(layer)} key/value heads is shared by {u.group_size(layer)} query heads and is kept or removed "
            "with them")


def parameter_shares(model: nn.Module) -> dict[str, float]:
    """Shares of all (unique) parameters: the token embedding (with the LM head when tied, else the head separately),
    the transformer blocks, and the MLPs inside them. Why: "x% of MLP channels" is x·mlp of the model, and that
    share differs a lot between models (SmolLM2-135M: 47%; Gemma-3-270m, whose 262k vocabulary is most of it: 26%)."""
    from diet.models import count_parameters

    fam = get_family(model)
    total = count_parameters(model)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    head_n = 0 if head is None or head.weight is emb else head.weight.numel()
    layers = fam.layers(model)
    blocks = sum(count_parameters(layer) for layer in layers)
    mlp = sum(count_parameters(layer.mlp) for layer in layers)
    return {"embedding": emb.numel() / total, "lm_head": head_n / total, "blocks": blocks / total,
            "mlp": mlp / total}


def shares_words(shares: dict[str, float]) -> str:
    """One line for every table of results: where the parameters are."""
    head = f", LM head {shares['lm_head']:.0%}" if shares["lm_head"] else " (tied with the LM head)"
    return (f"parameters: embedding {shares['embedding']:.0%}{head}, transformer blocks {shares['blocks']:.0%} "
            f"(MLPs {shares['mlp']:.0%} of all)")


def model_shape(model: nn.Module, unit: str = "mlp") -> ModelShape:
    """What mask math needs to know about a model, as plain numbers (so masks never need the model)."""
    from diet.models import count_parameters

    u = get_unit(model, unit)
    layers = u.family.layers(model)
    return ModelShape(family=u.family.name, unit=unit, widths=tuple(u.width(layer) for layer in layers),
                      params_per_unit=tuple(u.params_per_unit(layer) for layer in layers),
                      total_params=count_parameters(model), stat_widths=tuple(u.stat_width(layer) for layer in layers))


# ---------------------------------------------------------------- modules by role (for serving-engine writers)

LLAMA_LIKE = ("llama", "mistral", "qwen2")  # plain pre-norm blocks, separate q/k/v and gate/up projections


def llama_like_parts(model: nn.Module) -> tuple[dict[str, nn.Module], list[dict[str, nn.Module]]]:
    """The modules of a Llama-shaped model by role: ({token_embd, output_norm, output}, one dict per layer with
    attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down).

    Why here: module names live in this file only; GGUF and vLLM writers ask for roles, not attribute paths.
    """
    fam = get_family(model)
    if fam.name not in LLAMA_LIKE:
        raise DietError(f"{fam.name} blocks are not Llama-shaped (supported: {', '.join(LLAMA_LIKE)})")
    top = {"token_embd": model.get_input_embeddings(), "output_norm": model.model.norm,
           "output": model.get_output_embeddings()}
    layers = []
    for layer in fam.layers(model):
        a, p = layer.self_attn, fam.mlp(layer)
        layers.append({"attn_norm": layer.input_layernorm, "attn_q": a.q_proj, "attn_k": a.k_proj,
                       "attn_v": a.v_proj, "attn_output": a.o_proj, "ffn_norm": layer.post_attention_layernorm,
                       "ffn_gate": p.gate, "ffn_up": p.up, "ffn_down": p.down})
    return top, layers


def gguf_parts(model: nn.Module) -> tuple[dict[str, nn.Module], list[dict[str, nn.Module]]]:
    """Every family's modules by llama.cpp tensor role: Llama-shaped ones as `llama_like_parts`; Phi-3 with its fused
    attn_qkv (q rows, then k, then v) and fused ffn_up (gate rows, then up rows); Gemma-2/3 with the sandwich norms
    (post_attention_norm, ffn_norm = the pre-MLP norm, post_ffw_norm) and Gemma-3's per-head attn_q_norm/attn_k_norm.
    """
    fam = get_family(model)
    if fam.name in LLAMA_LIKE:
        return llama_like_parts(model)
    top = {"token_embd": model.get_input_embeddings(), "output_norm": model.model.norm,
           "output": model.get_output_embeddings()}
    layers = []
    for layer in fam.layers(model):
        a, p = layer.self_attn, fam.mlp(layer)
        if fam.fused_gate_up:
            parts = {"attn_norm": layer.input_layernorm, "attn_qkv": a.qkv_proj, "attn_output": a.o_proj,
                     "ffn_norm": layer.post_attention_layernorm, "ffn_up": p.gate_up, "ffn_down": p.down}
        else:
            b = block_parts(layer)
            parts = {"attn_norm": b.norm_attn, "attn_q": b.q, "attn_k": b.k, "attn_v": b.v, "attn_output": b.o,
                     "post_attention_norm": b.post_attn, "ffn_norm": b.norm_mlp, "ffn_gate": b.gate, "ffn_up": b.up,
                     "ffn_down": b.down, "post_ffw_norm": b.post_mlp}
            for role, attr in (("attn_q_norm", "q_norm"), ("attn_k_norm", "k_norm")):
                if getattr(a, attr, None) is not None:
                    parts[role] = getattr(a, attr)
        layers.append(parts)
    return top, layers


# ---------------------------------------------------------------- DISP's view of a decoder block


@dataclass(frozen=True)
class BlockParts:
    """The modules DISP reads or cuts in one decoder layer (norms and the seven projections)."""

    norm_attn: nn.Module  # input norm: its output feeds q/k/v
    norm_mlp: nn.Module  # pre-MLP norm
    post_attn: nn.Module | None  # Gemma's post-attention norm (None for Llama-style layers)
    post_mlp: nn.Module | None  # Gemma's post-feed-forward norm
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


def block_parts(layer: nn.Module) -> BlockParts:
    """A Llama-style or Gemma-style (sandwich norms) decoder layer's parts by role, for DISP."""
    sandwich = hasattr(layer, "pre_feedforward_layernorm")
    a, m = layer.self_attn, layer.mlp
    return BlockParts(
        norm_attn=layer.input_layernorm,
        norm_mlp=layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm,
        post_attn=layer.post_attention_layernorm if sandwich else None,
        post_mlp=layer.post_feedforward_layernorm if sandwich else None,
        q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj, gate=m.gate_proj, up=m.up_proj, down=m.down_proj,
    )
