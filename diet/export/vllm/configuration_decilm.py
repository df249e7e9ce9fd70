"""DeciLM (`nemotron-nas`) configuration for a DIET vLLM export: config only, the modelling is vLLM's own.

This file is copied verbatim into every `--export-mode vllm` folder and loaded by `trust_remote_code=True`, so it must
stay self-contained: standard library and transformers only, never `diet`.

Why a config file at all: vLLM's `DeciLMForCausalLM` (vllm/model_executor/models/nemotron_nas.py) reads
`config.block_configs[i].attention.n_heads_in_group` and `config.block_configs[i].ffn.intermediate_size` as
*attributes*; a plain config.json would hand it dicts. Each block config here becomes a small attribute object, and
`to_dict` turns it back into plain JSON. A block's `ffn` has **no** `ffn_mult` attribute on purpose: with one, vLLM
rounds the width to a multiple of 256; without it, it keeps `intermediate_size` exactly.
"""

from __future__ import annotations

from transformers import LlamaConfig


class BlockPart:
    """An attribute view of one dict of a block config (`attention` or `ffn`)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"BlockPart({self.__dict__})"


class BlockConfig:
    """One decoder block: `attention` and `ffn` parts with attribute access, as vLLM's DeciLM reads them."""

    def __init__(self, attention: dict | BlockPart | None = None, ffn: dict | BlockPart | None = None):
        self.attention = attention if isinstance(attention, BlockPart) else BlockPart(**(attention or {}))
        self.ffn = ffn if isinstance(ffn, BlockPart) else BlockPart(**(ffn or {}))

    def to_dict(self) -> dict:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict()}

    def __repr__(self) -> str:
        return f"BlockConfig({self.to_dict()})"


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"
    block_configs: list | None = None  # one {"attention": {...}, "ffn": {...}} per decoder layer

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.block_configs is None:  # a default instance (transformers builds one to diff against)
            return
        if len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(f"block_configs has {len(self.block_configs)} entries but the model has "
                             f"{self.num_hidden_layers} layers")
        self.block_configs = [b if isinstance(b, BlockConfig) else BlockConfig(**b) for b in self.block_configs]

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["block_configs"] = [b.to_dict() if isinstance(b, BlockConfig) else b for b in (self.block_configs or [])]
        return d
