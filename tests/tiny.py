"""Tiny random models and a tiny tokenizer, built from config in milliseconds.

Why: exactness tests (sliced == masked) must cover every architecture family without any download; real
weights are not needed to check that slicing is the same function as masking.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 128
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**COMMON),  # q/k/v carry biases in Qwen2
    "gemma2": lambda: Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=30.0,
                                   attn_logit_softcapping=50.0, query_pre_attn_scalar=8, sliding_window=16),
    "gemma3_text": lambda: Gemma3TextConfig(**COMMON, head_dim=8, query_pre_attn_scalar=8, sliding_window=16),
    "phi3": lambda: Phi3Config(**COMMON),
}
FAMILIES = tuple(CONFIGS)


def tiny_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    """A randomly initialised causal LM of `family`, fp32, eval mode, with non-trivial norm weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]())
    with torch.no_grad():  # default norm weights are all equal: perturb them so a wrong index shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level-ish character tokenizer: every printable ASCII char is one token (ids 3..), 0=pad 1=bos 2=eos."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in chars + ["\n"]:
        vocab[ch] = len(vocab)
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
