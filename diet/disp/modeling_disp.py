"""DISP-LLM decoder layers (five index sets per layer) and the causal-LM classes of DISP exports.

This file is copied verbatim into every DISP export folder, and `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` runs it from there. So it must stay self-contained: it imports only torch and transformers —
never `diet`. `diet/disp/structure.py` imports its layer code from here, so the in-memory pruned model and a reloaded
folder run the very same forward.

The structure (arXiv 2410.11988): residual stream, embeddings, norms and lm_head keep full width; each layer has five
sorted index sets — attn_in (residual dims read by q/k/v), attn_out (written by o_proj), mlp_in (read by gate/up),
mlp_mid (intermediate channels), mlp_out (written by down_proj). Forward: normalise over the *full* residual,
`index_select` the block's input dims, run the narrower block, `index_add` its output into the selected dims. For
Gemma-2/3's post-block norms the block output is scattered into zeros and normalised over the full width, so the layer
stays exactly the masked model.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

DISP_POSITIONS = ("attn_in", "attn_out", "mlp_in", "mlp_mid", "mlp_out")


def _disp_scatter_add(residual: torch.Tensor, out: torch.Tensor, index: torch.Tensor, post_norm) -> torch.Tensor:
    """Add a block's narrow output into the residual dims `index`; Gemma's post-norm sees the full width."""
    if post_norm is None:
        return residual.index_add(-1, index, out.to(residual.dtype))
    full = out.new_zeros(*out.shape[:-1], residual.shape[-1]).index_copy(-1, index, out)
    return residual + post_norm(full)


class DispLayerMixin:
    """The forward of a DISP decoder layer; its index sets are the buffers `disp_attn_in` … `disp_mlp_out`.

    Mixed into the layer's own class by `disp_layer_class`, so class-based features of transformers (recorded hidden
    states, gradient checkpointing) keep working and weight names stay the stock ones.
    """

    def forward(self, hidden_states, **kwargs):
        sandwich = hasattr(self, "pre_feedforward_layernorm")  # Gemma-2/3: a norm before and after each block
        x = self.input_layernorm(hidden_states).index_select(-1, self.disp_attn_in)
        x = self.self_attn(hidden_states=x, **kwargs)[0]
        hidden_states = _disp_scatter_add(hidden_states, x, self.disp_attn_out,
                                          self.post_attention_layernorm if sandwich else None)
        norm = self.pre_feedforward_layernorm if sandwich else self.post_attention_layernorm
        x = self.mlp(norm(hidden_states).index_select(-1, self.disp_mlp_in))
        return _disp_scatter_add(hidden_states, x, self.disp_mlp_out,
                                 self.post_feedforward_layernorm if sandwich else None)


_DISP_CLASSES: dict = {}


def disp_layer_class(base: type) -> type:
    """`Disp<Base>`: the layer's class with DISP's forward (one class per base, registered for pickling)."""
    if issubclass(base, DispLayerMixin):
        return base
    if base not in _DISP_CLASSES:
        name = "Disp" + base.__name__
        cls = type(name, (DispLayerMixin, base), {"__module__": __name__, "__qualname__": name})
        _DISP_CLASSES[base] = cls
        globals()[name] = cls
    return _DISP_CLASSES[base]


def _disp_linear(old: nn.Linear, rows, cols, copy_weights: bool) -> nn.Linear:
    """A Linear keeping output rows `rows` and input columns `cols` of `old` (None = all)."""
    w = old.weight
    n_out = w.shape[0] if rows is None else int(rows.numel())
    n_in = w.shape[1] if cols is None else int(cols.numel())
    # copying: no random init that the copy overwrites at once (skip_init); shapes only: transformers' loading
    # manages the initialisation as for any stock layer
    make = torch.nn.utils.skip_init if copy_weights else (lambda cls, *a, **k: cls(*a, **k))
    new = make(nn.Linear, n_in, n_out, bias=old.bias is not None, device=w.device, dtype=w.dtype)
    if copy_weights:
        with torch.no_grad():
            w = w if rows is None else w.index_select(0, rows.to(w.device))
            w = w if cols is None else w.index_select(1, cols.to(w.device))
            new.weight.copy_(w)
            if old.bias is not None:
                new.bias.copy_(old.bias if rows is None else old.bias.index_select(0, rows.to(w.device)))
    return new


def disp_convert_layer(layer: nn.Module, sets: dict, copy_weights: bool = True) -> nn.Module:
    """Turn one decoder layer into a DISP layer in place: narrower projections + the five index buffers.

    `sets` maps each position to a sorted long tensor. copy_weights=False only builds the shapes (for loading an
    exported folder, whose weights and index buffers then come from its safetensors).
    """
    if isinstance(layer, DispLayerMixin):
        raise ValueError("this layer is already a DISP layer")
    a, m = layer.self_attn, layer.mlp
    s = {k: torch.as_tensor(v, dtype=torch.long) for k, v in sets.items()}
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(a, name, _disp_linear(getattr(a, name), None, s["attn_in"], copy_weights))
    a.o_proj = _disp_linear(a.o_proj, s["attn_out"], None, copy_weights)
    m.gate_proj = _disp_linear(m.gate_proj, s["mlp_mid"], s["mlp_in"], copy_weights)
    m.up_proj = _disp_linear(m.up_proj, s["mlp_mid"], s["mlp_in"], copy_weights)
    m.down_proj = _disp_linear(m.down_proj, s["mlp_out"], s["mlp_mid"], copy_weights)
    device = a.o_proj.weight.device
    for pos in DISP_POSITIONS:
        layer.register_buffer(f"disp_{pos}", s[pos].to(device), persistent=True)
    layer.__class__ = disp_layer_class(type(layer))
    return layer


# ------------------------------------------------------------------------------------------------ export classes


def _check_widths(config) -> None:
    """A clear error for a malformed `disp_widths` (position -> one kept width per decoder layer)."""
    w = config.disp_widths
    if w is None:
        return
    if not isinstance(w, dict) or sorted(w) != sorted(DISP_POSITIONS):
        raise ValueError(f"disp_widths must map each of {DISP_POSITIONS} to per-layer widths, got {w!r}")
    for pos, sizes in w.items():
        if (not isinstance(sizes, (list, tuple)) or len(sizes) != config.num_hidden_layers
                or not all(isinstance(n, int) and n > 0 for n in sizes)):
            raise ValueError(f"disp_widths[{pos!r}] must hold {config.num_hidden_layers} positive ints, got {sizes!r}")


def _disp_layers(model) -> None:
    """Build every decoder layer at its DISP widths (shapes only; weights and index sets load from the folder)."""
    w = model.config.disp_widths
    if w is None:
        return
    for i, layer in enumerate(model.model.layers):
        # placeholder sets of the right sizes: the real ones are buffers in the checkpoint
        disp_convert_layer(layer, {pos: torch.arange(w[pos][i]) for pos in DISP_POSITIONS}, copy_weights=False)


# ------------------------------------------------------------------------------------------------ the families


def _disp_family(stock_config: type, stock_model: type, model_type: str) -> tuple[type, type]:
    """One family's DISP (config class, model class): `Disp<stock name>`, published in this module because the
    folder's `auto_map` finds them here by name. A family is nothing but its two stock classes, so the five are
    made by this one function and cannot drift apart.

    The config adds the `disp_widths` field (position -> kept width of each decoder layer; None = stock, dense
    layers) and checks it after the stock checks; the model runs the stock `__init__`, then builds every decoder
    layer at its DISP widths."""

    def __post_init__(self, **kwargs):
        super(config, self).__post_init__(**kwargs)
        _check_widths(self)

    def __init__(self, cfg):
        super(model, self).__init__(cfg)
        _disp_layers(self)
        self.post_init()

    config = type(f"Disp{stock_config.__name__}", (stock_config,),
                  {"__module__": __name__, "model_type": f"disp_{model_type}", "disp_widths": None,
                   "__annotations__": {"disp_widths": "dict | None"}, "__post_init__": __post_init__})
    layer = "Disp" + stock_model.__name__.replace("ForCausalLM", "DecoderLayer")
    model = type(f"Disp{stock_model.__name__}", (stock_model,),
                 {"__module__": __name__, "config_class": config, "_no_split_modules": [layer], "__init__": __init__})
    globals().update({config.__name__: config, model.__name__: model})
    return config, model


# stock model_type -> (config class, model class). `register_for_auto_class` makes `save_pretrained` copy this
# file into the folder and write the matching `auto_map` into config.json.
CLASSES = {t: _disp_family(getattr(transformers, config), getattr(transformers, model), t) for t, config, model in (
    ("llama", "LlamaConfig", "LlamaForCausalLM"),
    ("mistral", "MistralConfig", "MistralForCausalLM"),
    ("qwen2", "Qwen2Config", "Qwen2ForCausalLM"),
    ("gemma2", "Gemma2Config", "Gemma2ForCausalLM"),
    ("gemma3_text", "Gemma3TextConfig", "Gemma3ForCausalLM"),
)}
for _config_cls, _model_cls in CLASSES.values():
    _config_cls.register_for_auto_class("AutoConfig")
    _model_cls.register_for_auto_class("AutoModelForCausalLM")
