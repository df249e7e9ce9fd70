"""What DIET costs on each embedded model, side by side in one run (issue 25, item 5; docs/results.md).

For each model, in a fresh child process (so one model's allocator never hides the other's peak), the whole
pipeline a user runs, each stage timed:

- load: the converted checkpoint, in its dtype;
- profile: `--samples` calibration texts of each task, into an empty cache (so every text is really run);
- dense evaluation: the first `--limit` items of each task;
- prune + lstsq: DIET's vote at `--sparsity` of MLP channels, cut *in place* with the sequential lstsq refit
  (its default 32 fit texts per task);
- pruned evaluation: the same items.

Each round runs every model once, in alternating order (these 2-core machines are noisy: a ratio is only
meaningful between runs made minutes apart). Printed per round: each stage's seconds, profiling and evaluation
throughput, peak RSS ÷ the checkpoint's weight bytes, and the ratio of each figure between the models.

    flock /tmp/diet-torch.lock .venv/bin/python bench/cost.py [--rounds 2] [--models smollm2-135m,gemma3-270m]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ helpers import as bench.*

from bench.second_model import peak_rss  # noqa: E402

STAGES = ("load_s", "profile_s", "dense_eval_s", "prune_lstsq_s", "pruned_eval_s")


def child(a: argparse.Namespace) -> dict:
    """One model through the pipeline; the figures as a dict."""
    import numpy as np
    import torch

    from diet import api
    from diet.cache import ArtifactCache
    from diet.compare import model_size
    from diet.evaluate import EvalSettings, evaluate_tasks
    from diet.models import count_parameters, load_model
    from diet.settings import CompensationSettings, MaskSettings, ModelSpec, ProfileSettings
    from diet.tasks import get_task

    torch.set_num_threads(2)
    out: dict = {"model": a.child}
    base = peak_rss()
    t0 = time.perf_counter()
    lm = load_model(ModelSpec(name=a.child, device="cpu"), say=lambda m: None)
    out["load_s"] = time.perf_counter() - t0
    size = model_size(lm.model)
    out.update(weights=size["mb"] * 2**20, dtype=str(next(lm.model.parameters()).dtype), params=size["params"],
               import_rss=base)
    tasks = [get_task(n) for n in a.tasks.split(",")]
    es = EvalSettings(limit=a.limit, batch_size=16)
    with tempfile.TemporaryDirectory(prefix="diet-bench-cost-") as tmp:
        t0 = time.perf_counter()
        stats = api.profile_tasks(lm, tasks, ProfileSettings(samples=a.samples), cache=ArtifactCache(tmp))
        out["profile_s"] = time.perf_counter() - t0
    out["profile_tokens"] = sum(float(s.meta["tokens"]) for s in stats.values())
    t0 = time.perf_counter()
    dense = evaluate_tasks(lm.model, lm.tokenizer, tasks, es)
    out["dense_eval_s"] = time.perf_counter() - t0
    out["items"] = sum(r.n for r in dense)
    out["dense_mean"] = float(np.mean([r.value for r in dense]))
    out["peak_before_prune"] = peak_rss()
    result = api.build_mask(stats, MaskSettings(sparsity=a.sparsity))
    t0 = time.perf_counter()
    model = api.prune_copy(lm, result, CompensationSettings(method="lstsq"), stats=stats, in_place=True)
    out["prune_lstsq_s"] = time.perf_counter() - t0
    out["param_sparsity"] = 1 - count_parameters(model) / out["params"]
    t0 = time.perf_counter()
    pruned = evaluate_tasks(model, lm.tokenizer, tasks, es)
    out["pruned_eval_s"] = time.perf_counter() - t0
    out["pruned_mean"] = float(np.mean([r.value for r in pruned]))
    out["peak"] = peak_rss()
    return out


def report(rows: list[dict]) -> list[str]:
    """One round's table: a column per model, then the ratio last ÷ first."""
    first, last = rows[0], rows[-1]
    lines = [f"| figure | {' | '.join(r['model'] for r in rows)} | {last['model']} ÷ {first['model']} |",
             "|---|" + "---|" * (len(rows) + 1)]

    def line(label: str, values: list[float], fmt: str) -> None:
        ratio = values[-1] / values[0] if values[0] else float("nan")
        lines.append(f"| {label} | {' | '.join(format(v, fmt) for v in values)} | {ratio:.2f} |")

    line("parameters (M)", [r["params"] / 1e6 for r in rows], ".1f")
    line("weight bytes (MiB)", [r["weights"] / 2**20 for r in rows], ".0f")
    for k in STAGES:
        line(k.replace("_s", " (s)").replace("_", " "), [r[k] for r in rows], ".1f")
    line("profiling tokens/s", [r["profile_tokens"] / r["profile_s"] for r in rows], ".0f")
    line("dense evaluation items/s", [r["items"] / r["dense_eval_s"] for r in rows], ".2f")
    line("pruned evaluation items/s", [r["items"] / r["pruned_eval_s"] for r in rows], ".2f")
    line("share of all parameters removed", [r["param_sparsity"] for r in rows], ".3f")
    line("peak RSS ÷ weight bytes, up to the dense evaluation", [r["peak_before_prune"] / r["weights"] for r in rows],
         ".2f")
    line("peak RSS ÷ weight bytes, whole run", [r["peak"] / r["weights"] for r in rows], ".2f")
    line("peak RSS above bare import ÷ weight bytes", [(r["peak"] - r["import_rss"]) / r["weights"] for r in rows],
         ".2f")
    line("dense mean", [r["dense_mean"] for r in rows], ".3f")
    line("pruned (vote + lstsq) mean", [r["pruned_mean"] for r in rows], ".3f")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m", help="embedded names or folders, comma-separated")
    ap.add_argument("--tasks", default="capitals,facts,reading", help="tasks profiled and evaluated")
    ap.add_argument("--samples", type=int, default=100, help="calibration texts per task (default 100)")
    ap.add_argument("--limit", type=int, default=50, help="evaluation items per task (default 50)")
    ap.add_argument("--sparsity", type=float, default=0.4, help="share of MLP channels removed (default 0.4)")
    ap.add_argument("--rounds", type=int, default=2, help="every model once per round, alternating (default 2)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return
    models = a.models.split(",")
    common = ["--tasks", a.tasks, "--samples", str(a.samples), "--limit", str(a.limit), "--sparsity", str(a.sparsity)]
    print(f"tasks {a.tasks}; {a.samples} calibration texts and {a.limit} items per task; {a.sparsity:.0%} of MLP "
          f"channels; {os.cpu_count()} CPUs")
    for r in range(a.rounds):
        order = models if r % 2 == 0 else models[::-1]
        rows = {}
        for m in order:
            done = subprocess.run([sys.executable, __file__, "--child", m, *common], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{m}: the child failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
            rows[m] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\nround {r + 1} (order {', '.join(order)}; load average {os.getloadavg()[0]:.1f})")
        print("\n".join(report([rows[m] for m in models])))


if __name__ == "__main__":
    main()
