"""Bench: forward speed of each export mode next to the dense model, measured interleaved in one run.

Why: the model card reports measured speed, not a parameter count; this script shows what each mode buys on the
machine at hand (CPU here, a GPU where there is one). It needs no real weights: a randomly initialised model of
SmolLM2-135M's shape (Llama, hidden 576, MLP 1536, 30 layers) is pruned 25% three ways — uniform (1152 per layer),
padded and heterogeneous (per-layer widths 960…1344, same total) — and `diet.measure.measure_speed` times dense and
pruned alternately (median of --repeats). It also checks that each pruned model computes what the masked model does.

    flock /tmp/diet-torch.lock .venv/bin/python bench/export_speed.py --device cpu
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    a = p.parse_args(argv)

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from diet.export.cut import build_export_model
    from diet.measure import SpeedSettings, measure_speed
    from diet.prune import zero_units

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         max_position_embeddings=2048)
    dtype = getattr(torch, a.dtype)
    dense = LlamaForCausalLM(config).to(device=a.device, dtype=dtype).eval()
    rng = np.random.default_rng(0)
    uniform = [np.sort(rng.choice(1536, 1152, replace=False)) for _ in range(30)]
    widths = [960 + (i * 384) // 29 for i in range(30)]  # 960 … 1344, mean 1152 = the same 25% in total
    widths[-1] += 1152 * 30 - sum(widths)
    varied = [np.sort(rng.choice(1536, w, replace=False)) for w in widths]
    settings = SpeedSettings(batch_sizes=tuple(a.batch_sizes), seq_len=a.seq_len, repeats=a.repeats)
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(1)).to(a.device)
    print(f"device {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else 'cpu'}), dtype "
          f"{a.dtype}, threads {torch.get_num_threads()}, seq_len {a.seq_len}, median of {a.repeats}, interleaved")
    print(f"{'mode':<14} {'batch':>5} | {'dense ms':>9} {'pruned ms':>9} | {'speedup':>7} | max|Δ| vs masked")
    for mode, keep in (("uniform", uniform), ("padded", varied), ("heterogeneous", varied)):
        pruned = build_export_model(dense, keep, mode)
        with torch.no_grad():
            masked = zero_units(copy.deepcopy(dense), keep)
            delta = (pruned(ids).logits.float() - masked(ids).logits.float()).abs().max().item()
            del masked
        r = measure_speed({"dense": dense, "pruned": pruned}, settings)
        for row in r["rows"]:
            print(f"{mode:<14} {row['batch']:>5} | {row['dense_ms']:>9.2f} {row['pruned_ms']:>9.2f} | "
                  f"{row['speedup']:>6.2f}x | {delta:.1e}", flush=True)
        del pruned
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
