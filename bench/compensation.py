"""Compensation after removal on SmolLM2-135M: held-out loss, fit time and peak memory, side by side in one run.

    flock /tmp/diet-torch.lock .venv/bin/python bench/compensation.py --out bench/results/compensation

For one mask (default: DIET's vote over the eight offline tasks at 40% of MLP channels) it builds the pruned model
with no compensation, FLAP-style `bias`, and `lstsq` at several ridge strengths and both targets, and measures on
**held-out calibration texts** (texts of each task's calibration pool that neither profiling nor the fit read):
the mean next-token loss of the whole text, and the relative error of every layer's down_proj output against the
dense model's. This is how the default ridge was chosen (not on the evaluation items). Fit time and the peak RSS
above the level before the fit (÷ the model's weight bytes) are measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ helpers import as bench.*

from bench.profile_overhead import PeakMemory  # noqa: E402
from diet.api import profile_tasks
from diet.compensate import fit_lstsq, fit_texts, heldout_texts
from diet.methods import MethodInputs, run_method
from diet.models import load_model
from diet.profile import choose_texts
from diet.prune import prune_units
from diet.settings import CompensationSettings, MaskSettings, MethodSettings, ModelSpec, ProfileSettings
from diet.tasks import get_task, offline_task_names


def heldout_loss(model, tok, texts: list[str], batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over the real tokens of `texts`."""
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=256)
            logits = model(**enc).logits[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            m = enc["attention_mask"][:, 1:].bool()
            loss = torch.nn.functional.cross_entropy(logits[m], target[m], reduction="sum")
            total, n = total + float(loss), n + int(m.sum())
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/compensation")
    ap.add_argument("--method", default="diet")
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--samples", type=int, default=32, help="lstsq fit texts per task")
    ap.add_argument("--ridges", default="0.001,0.01,0.1,1")
    ap.add_argument("--heldout", type=int, default=16, help="held-out calibration texts per task")
    ap.add_argument("--cost-only", action="store_true",
                    help="only the default lstsq fit, in this fresh process: time and peak RSS above the level before "
                         "it (nothing else has run, so the allocator has no freed memory to hide the fit's own)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    lm = load_model(ModelSpec(device="cpu"), say=say)
    tasks = [get_task(t) for t in offline_task_names()]
    profile = ProfileSettings(samples=100, seed=0, max_length=256, batch_size=16)
    stats = profile_tasks(lm, tasks, profile)
    base = CompensationSettings(method="lstsq", samples=a.samples)
    fit = fit_texts(tasks, base)
    used = {t.name: set(choose_texts(t.calibration, profile)) | set(fit) for t in tasks}
    held = [x for t in tasks for x in heldout_texts(t, sorted(used[t.name]), a.heldout)]
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    inputs = MethodInputs(stats, shape=None)
    from diet.adapters import model_shape

    inputs = replace(inputs, shape=model_shape(lm.model))
    settings = MaskSettings(sparsity=a.sparsity)
    if a.cost_only:
        result = run_method(a.method, inputs, settings, MethodSettings())
        model = copy.deepcopy(lm.model)
        with PeakMemory(False) as mem:
            rep = fit_lstsq(model, lm.tokenizer, fit, result.keep(), "mlp", base)
        row = {"fit_seconds": round(rep.seconds, 1), "fit_tokens": rep.tokens, "peak_rss_mib": round(mem.mib, 1),
               "peak_rss_over_weights": round(mem.mib * 2**20 / weight_bytes, 3),
               "matrices_mib": round(rep.peak_matrix_bytes / 2**20, 1),
               "streams_mib": round(rep.stream_bytes / 2**20, 1), "weight_mib": round(weight_bytes / 2**20, 1)}
        print(json.dumps(row))
        return
    rows = [{"name": "dense", "loss": heldout_loss(lm.model, lm.tokenizer, held)}]
    say(f"dense: held-out loss {rows[0]['loss']:.4f} on {len(held)} texts")
    configs = [("none", None), ("bias", None)]
    configs += [(f"lstsq dense ridge={float(r):g}", replace(base, ridge=float(r))) for r in a.ridges.split(",")]
    configs += [("lstsq layer ridge=0.01", replace(base, target="layer"))]
    for name, comp in configs:
        result = run_method(a.method, inputs, settings, MethodSettings(), "bias" if name == "bias" else "none")
        model = copy.deepcopy(lm.model)
        row = {"name": name}
        if comp is not None:
            with PeakMemory(False) as mem:
                t0 = time.perf_counter()
                rep = fit_lstsq(model, lm.tokenizer, fit, result.keep(), "mlp", comp)
                row["fit_seconds"] = round(time.perf_counter() - t0, 1)
            row.update(peak_mib=round(mem.mib, 1), peak_over_weights=round(mem.mib * 2**20 / weight_bytes, 3),
                       fit_tokens=rep.tokens, fit_error_removed=float(np.mean(rep.error_removed)),
                       fit_error_fitted=float(np.mean(rep.error_fitted)))
            model = prune_units(model, result.keep())
        else:
            model = prune_units(model, result.keep(), compensation=result.compensation)
        row["loss"] = heldout_loss(model, lm.tokenizer, held)
        rows.append(row)
        say(json.dumps(row))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.method}_{a.sparsity:g}.json").write_text(json.dumps(rows, indent=1))
    for r in rows:
        print(f"| {r['name']} | {r['loss']:.4f} | {r.get('fit_seconds', '')} | {r.get('peak_mib', '')} | "
              f"{r.get('peak_over_weights', '')} |")


if __name__ == "__main__":
    main()
