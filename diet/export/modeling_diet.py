"""Causal LMs whose MLP width differs per layer (a heterogeneous DIET export), for stock transformers.

This file is copied verbatim into every heterogeneous export folder, and `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` runs it from there. So it must stay self-contained: it imports only the standard library,
torch and transformers — never `diet`.

Why subclasses and not a patched stock config: stock configs reject a list for `intermediate_size`, and loading
sliced weights into a stock model with `ignore_mismatched_sizes=True` silently re-initialises them. Here each config
carries `intermediate_sizes` (one width per decoder layer); each model runs the family's stock `__init__`, then
rebuilds every layer's MLP with the family's own MLP class at that layer's width, so the forward code, weight names
and checkpoint layout stay exactly those of the stock family.
"""

from __future__ import annotations

import copy

from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)


def _check_sizes(config) -> None:
    """A clear error for a malformed width list (the subclass is not a strict dataclass field by field)."""
    sizes = config.intermediate_sizes
    if sizes is None:
        return
    if not isinstance(sizes, (list, tuple)) or not all(isinstance(w, int) and w > 0 for w in sizes):
        raise ValueError(f"intermediate_sizes must be a list of positive ints, got {sizes!r}")
    if len(sizes) != config.num_hidden_layers:
        raise ValueError(f"intermediate_sizes has {len(sizes)} entries but the model has "
                         f"{config.num_hidden_layers} layers")


def _resize_mlps(model) -> None:
    """Replace each decoder layer's MLP by the same class built at that layer's width."""
    sizes = model.config.intermediate_sizes
    if sizes is None:
        return
    for layer, width in zip(model.model.layers, sizes):
        layer_config = copy.copy(model.config)
        layer_config.intermediate_size = int(width)
        layer.mlp = type(layer.mlp)(layer_config)


# ------------------------------------------------------------------------------------------------ the two mixins


class PerLayerWidthsConfig:
    """Mixed into each family's config: checks `intermediate_sizes` once the stock config is built. (The field
    itself is declared in each config class: the stock configs collect their fields class by class.)"""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_sizes(self)


class PerLayerWidthsModel:
    """Mixed into each family's causal LM: the stock `__init__`, then every MLP rebuilt at its layer's width."""

    def __init__(self, config):
        super().__init__(config)
        _resize_mlps(self)
        self.post_init()


# ------------------------------------------------------------------------------------------------ the families


def _declare(config_name: str, model_name: str, model_type: str, stock_config: type, stock_model: type):
    """One family's (config class, model class): its stock classes with the two mixins and the `intermediate_sizes`
    field. Why made here rather than written out six times: a family is nothing but its name and its two stock
    classes, so the six cannot drift apart. Published under their names (`DietLlamaConfig`, …) because the folder's
    `auto_map` finds them in this file by name."""
    config = type(config_name, (PerLayerWidthsConfig, stock_config),
                  {"__module__": __name__, "model_type": f"diet_{model_type}", "intermediate_sizes": None,
                   "__annotations__": {"intermediate_sizes": "list[int] | None"}})  # width of each decoder layer
    model = type(model_name, (PerLayerWidthsModel, stock_model), {"__module__": __name__, "config_class": config})
    globals().update({config_name: config, model_name: model})
    return config, model


# stock model_type -> (config class, model class). `register_for_auto_class` makes `save_pretrained` copy this
# file into the folder and write the matching `auto_map` into config.json.
CLASSES = {
    "llama": _declare("DietLlamaConfig", "DietLlamaForCausalLM", "llama", LlamaConfig, LlamaForCausalLM),
    "mistral": _declare("DietMistralConfig", "DietMistralForCausalLM", "mistral", MistralConfig, MistralForCausalLM),
    "qwen2": _declare("DietQwen2Config", "DietQwen2ForCausalLM", "qwen2", Qwen2Config, Qwen2ForCausalLM),
    "gemma2": _declare("DietGemma2Config", "DietGemma2ForCausalLM", "gemma2", Gemma2Config, Gemma2ForCausalLM),
    "gemma3_text": _declare("DietGemma3TextConfig", "DietGemma3ForCausalLM", "gemma3_text", Gemma3TextConfig,
                            Gemma3ForCausalLM),
    "phi3": _declare("DietPhi3Config", "DietPhi3ForCausalLM", "phi3", Phi3Config, Phi3ForCausalLM),
}
for _config_cls, _model_cls in CLASSES.values():
    _config_cls.register_for_auto_class("AutoConfig")
    _model_cls.register_for_auto_class("AutoModelForCausalLM")
