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


# ------------------------------------------------------------------------------------------------ Llama


class DietLlamaConfig(LlamaConfig):
    model_type = "diet_llama"
    intermediate_sizes: list[int] | None = None  # MLP width of each decoder layer; None = stock (uniform)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_sizes(self)


class DietLlamaForCausalLM(LlamaForCausalLM):
    config_class = DietLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        _resize_mlps(self)
        self.post_init()


# ------------------------------------------------------------------------------------------------ Mistral


class DietMistralConfig(MistralConfig):
    model_type = "diet_mistral"
    intermediate_sizes: list[int] | None = None  # MLP width of each decoder layer; None = stock (uniform)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_sizes(self)


class DietMistralForCausalLM(MistralForCausalLM):
    config_class = DietMistralConfig

    def __init__(self, config):
        super().__init__(config)
        _resize_mlps(self)
        self.post_init()


# ------------------------------------------------------------------------------------------------ Qwen2


class DietQwen2Config(Qwen2Config):
    model_type = "diet_qwen2"
    intermediate_sizes: list[int] | None = None  # MLP width of each decoder layer; None = stock (uniform)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_sizes(self)


class DietQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = DietQwen2Config

    def __init__(self, config):
        super().__init__(config)
        _resize_mlps(self)
        self.post_init()


# ------------------------------------------------------------------------------------------------ Gemma-2


class DietGemma2Config(Gemma2Config):
    model_type = "diet_gemma2"
    intermediate_sizes: list[int] | None = None  # MLP width of each decoder layer; None = stock (uniform)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_sizes(self)


class DietGemma2ForCausalLM(Gemma2ForCausalLM):
    config_class = DietGemma2Config

    def __init__(self, config):
        super().__init__(config)
        _resize_mlps(self)
        self.post_init()


# ------------------------------------------------------------------------------------------------ Gemma-3 (text)


class DietGemma3TextConfig(Gemma3TextConfig):
    model_type = "diet_gemma3_text"
    intermediate_sizes: list[int] | None = None  # MLP width of each decoder layer; None = stock (uniform)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_sizes(self)


class DietGemma3ForCausalLM(Gemma3ForCausalLM):
    config_class = DietGemma3TextConfig

    def __init__(self, config):
        super().__init__(config)
        _resize_mlps(self)
        self.post_init()


# ------------------------------------------------------------------------------------------------ Phi-3


class DietPhi3Config(Phi3Config):
    model_type = "diet_phi3"
    intermediate_sizes: list[int] | None = None  # MLP width of each decoder layer; None = stock (uniform)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _check_sizes(self)


class DietPhi3ForCausalLM(Phi3ForCausalLM):
    config_class = DietPhi3Config

    def __init__(self, config):
        super().__init__(config)
        _resize_mlps(self)
        self.post_init()


# stock model_type -> (config class, model class). `register_for_auto_class` makes `save_pretrained` copy this
# file into the folder and write the matching `auto_map` into config.json.
CLASSES = {
    "llama": (DietLlamaConfig, DietLlamaForCausalLM),
    "mistral": (DietMistralConfig, DietMistralForCausalLM),
    "qwen2": (DietQwen2Config, DietQwen2ForCausalLM),
    "gemma2": (DietGemma2Config, DietGemma2ForCausalLM),
    "gemma3_text": (DietGemma3TextConfig, DietGemma3ForCausalLM),
    "phi3": (DietPhi3Config, DietPhi3ForCausalLM),
}
for _config_cls, _model_cls in CLASSES.values():
    _config_cls.register_for_auto_class("AutoConfig")
    _model_cls.register_for_auto_class("AutoModelForCausalLM")
