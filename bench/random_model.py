"""Make a randomly initialised model folder shaped like a real one (config + tokenizer, random weights).

Why: timing and exactness checks on a GPU machine need the real shapes, not the real weights — and real weights
cannot travel there. `--like` takes a folder with config.json + tokenizer files; `--preset gemma2-2b` overrides the
shape with Gemma-2-2B's (hidden 2304, MLP 9216, 26 layers, GQA 8/4, head_dim 256) to measure at the paper's scale.

    python bench/random_model.py --like ~/.cache/diet/models/smollm2-135m --out /tmp/rnd [--preset gemma2-2b]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

PRESETS = {
    "gemma2-2b": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                      final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=256,
                      sliding_window=4096, tie_word_embeddings=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", required=True, help="folder with config.json and tokenizer files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = ap.parse_args()
    like, out = Path(a.like).expanduser(), Path(a.out)
    cfg = json.loads((like / "config.json").read_text())
    if a.preset:
        cfg = {k: v for k, v in cfg.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        cfg.update(PRESETS[a.preset])
    model_type = cfg.pop("model_type")
    for k in ("architectures", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    config = AutoConfig.for_model(model_type, **cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, a.dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in like.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: random {model_type}, {n / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
