"""How exact can "sliced == masked" be in fp32? The model's own summation-order noise, next to the prune's.

    .venv/bin/python bench/fp32_floor.py [--model gemma3-270m]

Four comparisons of max |Δlogit| over three prompts (docs/results.md quotes them):
1. the dense model vs itself with each layer's MLP channels permuted — the same function, only the order of
   down_proj's sum differs: the fp32 floor of any exactness claim on this model;
2. the dense model on 1 torch thread vs 2 — another summation order, chosen by the BLAS;
3. a model with 25% of its MLP channels zeroed at random vs its physically sliced twin (diet.prune), and the
   zeroed model vs itself permuted (its own floor); a slice that computed another function would stand out here,
4. and the same slice vs zeroed in fp64, where summation order no longer shows: 0 means the same function.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["The capital of France is", "Question: What is 7 plus 5?\nAnswer:",
           "Read the passage. The river rose after three days of rain, and the bridge was closed.\nWhy?"]


def permuted(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy with each layer's MLP channels in a random order (gate/up rows and down columns alike)."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    for layer in out.model.layers:
        mlp = layer.mlp
        p = torch.randperm(mlp.gate_proj.weight.shape[0], generator=g)
        mlp.gate_proj.weight.data = mlp.gate_proj.weight.data[p]
        mlp.up_proj.weight.data = mlp.up_proj.weight.data[p]
        mlp.down_proj.weight.data = mlp.down_proj.weight.data[:, p].contiguous()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3-270m", help="embedded name or model folder (default gemma3-270m)")
    a = ap.parse_args()

    from diet.models import load_model
    from diet.prune import prune_units, zero_units

    lm = load_model(a.model, say=lambda m: None)

    def logits(m: torch.nn.Module) -> list[torch.Tensor]:
        with torch.no_grad():
            return [m(**lm.tokenizer(p, return_tensors="pt")).logits[0] for p in PROMPTS]

    def diff(x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
        return max(float((u - v).abs().max()) for u, v in zip(x, y, strict=True))

    base = logits(lm.model)
    print(f"{a.model}: max |logit| {max(float(x.abs().max()) for x in base):.1f} over {len(PROMPTS)} prompts")
    same = diff(base, logits(permuted(lm.model)))
    print(f"1. dense vs dense with MLP channels permuted (same function), fp32: {same:.2e}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = logits(lm.model)
    torch.set_num_threads(threads)
    print(f"2. dense on 1 thread vs {threads}, fp32: {diff(base, one):.2e}")
    n = lm.model.model.layers[0].mlp.gate_proj.weight.shape[0]
    rng = np.random.default_rng(0)
    keep = [np.sort(rng.choice(n, size=int(n * 0.75), replace=False)) for _ in lm.model.model.layers]
    zeroed = zero_units(copy.deepcopy(lm.model), keep, "mlp")
    ref = logits(zeroed)
    print(f"3. 25% of channels zeroed vs the same zeroed model permuted (its floor), fp32: "
          f"{diff(ref, logits(permuted(zeroed))):.2e}")
    prune_units(lm.model, keep, "mlp")
    print(f"   sliced vs zeroed, fp32: {diff(logits(lm.model), ref):.2e}")
    print(f"4. sliced vs zeroed, fp64: {diff(logits(lm.model.double()), logits(zeroed.double())):.2e}")


if __name__ == "__main__":
    main()
