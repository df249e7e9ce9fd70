"""How far bitsandbytes statistics are from fp ones: Jaccard of the masks they give, on the embedded SmolLM2-135M.

Why: `--quantization 8bit|4bit` lets a model that does not fit in fp be profiled, but the activations of a
quantized model are not the fp model's. This profiles the same tasks and texts with the model in float32, 8-bit and
4-bit (bitsandbytes runs both on the CPU since 0.45) and prints the Jaccard of each merged DIET mask with the fp32
one at 20% sparsity, next to the chance level (two random 80% masks) — the number the app's note quotes.

    python bench/bnb_jaccard.py [--tasks arithmetic,capitals,sentiment] [--samples 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="arithmetic,capitals,sentiment")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--sparsity", type=float, default=0.2)
    a = ap.parse_args()
    from diet import masks as M
    from diet.api import build_mask, profile_tasks
    from diet.cache import ArtifactCache
    from diet.models import load_model
    from diet.settings import MaskSettings, ModelSpec, ProfileSettings

    tasks = a.tasks.split(",")
    settings = ProfileSettings(samples=a.samples)
    cache = ArtifactCache(tempfile.mkdtemp(prefix="bnb-jaccard-"))
    masks, seconds = {}, {}
    for q in (None, "8bit", "4bit"):
        lm = load_model(ModelSpec(quantization=q, device="cpu"), say=lambda m: None)
        t0 = time.perf_counter()
        stats = profile_tasks(lm, tasks, settings, cache=cache)
        seconds[q or "float32"] = time.perf_counter() - t0
        masks[q or "float32"] = build_mask(stats, MaskSettings(sparsity=a.sparsity)).mask
    keep = 1 - a.sparsity
    print(f"SmolLM2-135M, tasks {a.tasks}, {a.samples} samples each, {a.sparsity:.0%} of MLP channels removed")
    print(f"chance (two random {keep:.0%} masks): {keep**2 / (1 - a.sparsity**2):.3f}")
    for q in ("8bit", "4bit"):
        j = float(M.jaccard_matrix(np.stack([masks["float32"], masks[q]]))[0, 1])
        print(f"{q}: mask Jaccard with float32 {j:.3f}   (profiling {seconds[q]:.0f} s vs {seconds['float32']:.0f} s)")


if __name__ == "__main__":
    main()
