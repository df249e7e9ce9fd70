"""Who loses in the merge, on SmolLM2-135M and the eight offline tasks (cached statistics only: no forward pass).

    .venv/bin/python bench/who_loses.py --out bench/results/claim13/who_loses.json

For DIET's vote, diet-weighted, pooled and a random mask at 20% and 40% of MLP channels: per task, the share of its
own top-k channels each mask keeps and the share of its importance mass (sum of its per-layer-normalised mean |x|)
kept; per layer, the share of the tasks' own top-k each mask drops. The statistics are those of the claim check
(100 calibration texts per task, seed 0, 256 tokens); they are profiled first if not cached.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from diet.adapters import model_shape
from diet.api import profile_tasks
from diet.methods import MethodInputs, run_method, who_loses
from diet.models import load_model
from diet.settings import MaskSettings, ModelSpec, ProfileSettings
from diet.tasks import offline_task_names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/claim13/who_loses.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model(ModelSpec(device="cpu"))
    stats = profile_tasks(lm, offline_task_names(), ProfileSettings(samples=100, seed=0, max_length=256,
                                                                    batch_size=16))
    inputs = MethodInputs(stats, shape=model_shape(lm.model))
    out = {}
    for s in (0.2, 0.4):
        ms = MaskSettings(sparsity=s)
        masks = {m: run_method(m, inputs, ms).mask for m in ("diet", "diet-weighted", "pooled", "random")}
        w = who_loses(inputs, ms, masks)
        lost = {m: (1 - w["layer_topk"][m].mean(0)).round(4).tolist() for m in masks}
        out[str(s)] = {"tasks": w["tasks"], "topk": w["topk"], "mass": w["mass"], "reading": w["reading"],
                       "layer_lost": lost}
        print(f"## {s:.0%}: {w['reading']}")
        print("| mask | " + " | ".join(w["tasks"]) + " |")
        for m in masks:
            print(f"| {m} | " + " | ".join(f"{t:.3f} / {x:.3f}" for t, x in zip(w["topk"][m], w["mass"][m],
                                                                            strict=True)) + " |")
        print(f"diet: lost per layer {np.round(lost['diet'], 3).tolist()}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
