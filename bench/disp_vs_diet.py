"""DISP (training-free index sets) vs DIET at the same total-parameter sparsity, on SmolLM2-135M.

    flock /tmp/diet-torch.lock .venv/bin/python bench/disp_vs_diet.py --out bench/results/disp

For each DISP block sparsity S (fraction of block weights removed, the paper's 1 - p), DISP's five index sets per
layer come from DIET's vote over the offline suite's per-position statistics; DISP removes a fraction F of *all*
parameters (embeddings and norms are never pruned). DIET then prunes MLP channels (its default unit) at the channel
sparsity that removes the same F, from the same tasks' statistics (same 100 calibration texts per task). Both are
sliced physically and scored the same way: accuracy on the whole offline suite (each task's primary metric) and
perplexity on two text sets none of them calibrated on: the shipped general corpus (the model's own generations;
WikiText-2 needs the Hub) and the suite's evaluation items written out with their correct answer.

Prints a markdown table (also written to --out/disp_vs_diet.md) for docs/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/disp", help="output folder")
    ap.add_argument("--sparsities", default="0.2,0.4", help="DISP block-parameter sparsities")
    ap.add_argument("--limit", type=int, default=None, help="evaluation items per task (default: all)")
    ap.add_argument("--ppl-texts", type=int, default=200, help="texts per perplexity set")
    ap.add_argument("--folders", nargs="*", default=[],
                    help="exported model folders to score the same way (e.g. a `prune --method disp-learned` output)")
    ap.add_argument("--only-folders", action="store_true", help="score only --folders (no dense / DISP / DIET rows)")
    a = ap.parse_args()

    import torch

    from diet.api import build_mask, profile_tasks, prune_copy
    from diet.disp import DispSettings, build_disp_masks, disp_copy, profile_disp
    from diet.evaluate import EvalSettings, average, evaluate_tasks, perplexity
    from diet.general import general_task
    from diet.models import load_model
    from diet.settings import MaskSettings, ProfileSettings
    from diet.tasks import get_task, offline_task_names

    torch.set_num_threads(2)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    lm = load_model(say=say)
    tasks = [get_task(n) for n in offline_task_names()]
    profile = ProfileSettings(samples=100, seed=0, max_length=256, batch_size=16)
    ev = EvalSettings(limit=a.limit, batch_size=32)
    general = list(general_task("generated").calibration)[: a.ppl_texts]
    items = [it for t in tasks for it in t.evaluation]
    rng = np.random.default_rng(0)
    written = [items[i].calibration_text()  # the prompt completed with its gold answer, as the evaluator scores it
               for i in sorted(rng.choice(len(items), size=min(a.ppl_texts, len(items)), replace=False))]

    def score(model, label: str) -> dict:
        t = time.perf_counter()
        res = evaluate_tasks(model, lm.tokenizer, tasks, ev)
        row = {"model": label, "mean": average(res), **{r.task: r.value for r in res},
               "ppl_general": perplexity(model, lm.tokenizer, general),
               "ppl_suite": perplexity(model, lm.tokenizer, written)}
        say(f"{label}: mean {row['mean']:.4f}, ppl general {row['ppl_general']:.2f}, suite {row['ppl_suite']:.2f} "
            f"({time.perf_counter() - t:.0f} s)")
        return row

    diet_stats = profile_tasks(lm, tasks, profile)
    disp_stats = profile_disp(lm, tasks, profile)
    shape = next(iter(diet_stats.values())).shape
    per_channel = shape.params_per_unit[0]
    rows = [] if a.only_folders else [{**score(lm.model, "dense"), "S": 0.0, "F": 0.0, "detail": ""}]
    for s in ([] if a.only_folders else [float(x) for x in a.sparsities.split(",")]):
        d = build_disp_masks(disp_stats, DispSettings(sparsity=s))
        f = d.summary["param_sparsity"]
        ks = d.summary["keep_fraction"]
        model = disp_copy(lm.model, d.index_sets())
        rows.append({**score(model, "DISP (training-free)"), "S": s, "F": f,
                     "detail": f"block sparsity {d.summary['block_sparsity']:.1%}; every index set keeps "
                               f"{next(iter(ks.values())):.1%} of its dims"})
        del model
        channels = f * shape.total_params / per_channel  # MLP channels DIET must remove for the same F
        unit_s = channels / float(sum(shape.widths))
        if unit_s >= 1.0:
            say(f"DIET cannot remove {f:.1%} of all parameters with MLP channels alone; skipped")
            continue
        m = build_mask(diet_stats, MaskSettings(sparsity=unit_s))
        model = prune_copy(lm, m)
        rows.append({**score(model, "DIET (MLP channels)"), "S": s, "F": m.summary["param_sparsity"],
                     "detail": f"MLP-channel sparsity {m.summary['unit_sparsity']:.1%}, "
                               f"{'uniform' if m.summary['uniform'] else 'per-layer'} widths"})
        del model

    for folder in a.folders:  # an exported DISP folder: its own summary.json says what it removed
        import json

        from transformers import AutoModelForCausalLM

        summary = json.loads((Path(folder) / "summary.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        label = summary.get("method", Path(folder).name)
        rows.append({**score(model, label), "S": summary.get("block_sparsity", float("nan")),
                     "F": summary["param_sparsity"],
                     "detail": f"block sparsity {summary.get('block_sparsity', float('nan')):.1%} ({folder})"})
        del model

    names = [t.name for t in tasks]
    lines = ["| model | params removed | mean acc | " + " | ".join(names) + " | ppl general | ppl suite | how |",
             "|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['F']:.1%} | {r['mean']:.4f} | "
                     + " | ".join(f"{r[n]:.3f}" for n in names)
                     + f" | {r['ppl_general']:.2f} | {r['ppl_suite']:.2f} | {r['detail']} |")
    items_note = f"first {a.limit} items per task" if a.limit else f"all {sum(len(t.evaluation) for t in tasks)} items"
    md = "\n".join(lines) + (f"\n\nSmolLM2-135M (embedded), {items_note}; perplexity on {len(general)} general texts "
                             f"and {len(written)} suite items with their answers. DIET's vote over "
                             f"{len(tasks)} tasks, 100 calibration texts each. Run took "
                             f"{time.perf_counter() - t0:.0f} s on CPU.\n")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("folders.md" if a.only_folders else "disp_vs_diet.md")).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
