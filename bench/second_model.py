"""The claim check on a second model, and on task subsets, with paired standard errors (issue 25, items 3-5).

    flock /tmp/diet-torch.lock .venv/bin/python bench/second_model.py --model gemma3-270m --out bench/results/gemma_full
    flock /tmp/diet-torch.lock .venv/bin/python bench/second_model.py --model smollm2-135m \
        --out bench/results/smollm2_full

Same protocol as bench/claim_check.py (every offline task is a calibration and an evaluation task; 100 calibration
texts per task, seed 0, 256 tokens; general text = the shipped self-generated corpus; uniform per-layer widths;
lm-eval scoring, each task's primary metric), but every evaluated item's hit (0/1) is kept, so each method's gain
over the vote comes with a *paired* standard error: the same items score both models, so
SE = std(per-item difference) / sqrt(items). lstsq runs with its defaults (CompensationSettings: ridge and fit
texts were chosen on calibration texts only, never on evaluation items). Every method also runs + lstsq; the refit
reads the tasks' calibration texts whatever made the mask, so a second table sets each mask + lstsq against the
vote + lstsq: does the choice of channels still matter once every mask gets the same task-aware refit?

Subsets: `--subsets K` four-task subsets of the suite, drawn by `--subset-seed`; on each, every mask is made from
those four tasks' statistics only and evaluated on those four tasks; every method ± lstsq runs there too, and one
table gives each setting's gain over the vote on every subset, with the dense model's (what the vote lost).

Every cell (method x compensation x sparsity x task set x task) is cached in the project's cache (kind
"second-model"), so an interrupted run resumes and a rerun only writes the tables. Cells run in the order of
METHODS, so a run stopped early has the important rows. Writes cells.csv (tidy, one row per cell), claim.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

FULL = ("diet", "pooled", "diet-weighted", "wanda-sp", "minitron", "magnitude", "random", "task-agnostic", "flap")
LSTSQ_METHODS = FULL  # each also with lstsq; the refit reads the tasks' calibration texts whatever made the mask
SUBSET_METHODS = FULL  # on subsets too: every method, each +/- lstsq (the claim table per subset)


def plan(methods: tuple[str, ...], lstsq: tuple[str, ...]) -> list[tuple[str, str]]:
    """(method, compensation) in run order: the vote first, then each method, each task-aware one also + lstsq."""
    out = [("diet", "none")]
    for m in methods:
        if m != "diet":
            out.append((m, "none"))
        if m in lstsq:
            out.append((m, "lstsq"))
    return out


def subsets(names: list[str], k: int, seed: int) -> list[tuple[str, ...]]:
    """`k` distinct four-task subsets, drawn by `seed` (sorted names inside each, for a stable key)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, ...]] = []
    while len(out) < k:
        pick = tuple(sorted(rng.choice(names, size=4, replace=False).tolist()))
        if pick not in out:
            out.append(pick)
    return out


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cell_keys(lm, stats, tasks, method, comp, sparsity, limit) -> dict[str, str]:
    """Cache key per task of one cell: the model's weights, the statistics' settings, the mask, the items."""
    from diet.settings import sha256_of

    base = {"kind": "second-model/1", "model": lm.identity, "method": method, "comp": comp, "sparsity": sparsity,
            "taskset": [t.name for t in tasks], "limit": limit,
            "profile": next(iter(stats.values())).meta.get("settings")}
    return {t.name: sha256_of({**base, "task": t.fingerprint()})[:24] for t in tasks}


def run_cell(lm, stats, tasks, method, comp, sparsity, limit, batch_size, cache, say, report_only=False
             ) -> list[dict]:
    """One pruned model evaluated on `tasks` (dense when method is "dense"): one row per task with its item hits.
    `report_only`: the cached rows, or [] when any is missing."""
    from diet.api import method_mask, prune_copy, with_compensation
    from diet.evaluate import EvalSettings, evaluate_task, item_hits
    from diet.settings import CompensationSettings, MaskSettings, MethodSettings, ProfileSettings

    names = [t.name for t in tasks]
    es = EvalSettings(limit=limit, batch_size=batch_size)
    profile = next(iter(stats.values())).meta.get("settings")
    keys = cell_keys(lm, stats, tasks, method, comp, sparsity, limit)
    rows = [cache.load_json("second-model", keys[n]) for n in names]
    if all(r is not None for r in rows):
        return rows
    if report_only:
        return []
    t0 = time.perf_counter()
    fit_s = 0.0
    if method == "dense":
        model, params = lm.model, {"param_sparsity": 0.0}
    else:
        ms = MethodSettings(method=method)
        sub = {n: stats[n] for n in names}
        result = method_mask(lm, sub, MaskSettings(sparsity=sparsity), ms,
                             ProfileSettings(**profile) if isinstance(profile, dict) else ProfileSettings(),
                             general="generated")
        comp_settings = None
        params = {"param_sparsity": float(result.summary.get("param_sparsity", np.nan))}
        if comp != "none":
            result = with_compensation(result, comp, sub, ms)
            comp_settings = CompensationSettings(method="lstsq") if comp == "lstsq" else None
        if comp_settings is not None:  # fit tokens per kept channel: what decides whether the refit can help
            from diet.api import lstsq_texts

            texts = lstsq_texts(result, comp_settings, sub)
            fit_tokens = sum(len(ids) for ids in lm.tokenizer(texts, truncation=True,
                                                              max_length=comp_settings.max_length).input_ids)
            params["fit_tokens_per_channel"] = fit_tokens / max(len(k) for k in result.keep())
        t1 = time.perf_counter()
        model = prune_copy(lm, result, comp_settings, stats=sub)
        fit_s = time.perf_counter() - t1
    build_s = time.perf_counter() - t0
    out = []
    for task, key, row in zip(tasks, (keys[n] for n in names), rows, strict=True):
        if row is None:
            r = evaluate_task(model, lm.tokenizer, task, es)
            row = {"method": method, "comp": comp, "sparsity": sparsity, "taskset": "+".join(names),
                   "task": task.name, "value": r.value, "n": r.n, "hits": item_hits(task, r, es).tolist(),
                   "eval_s": round(r.seconds, 2), "build_s": round(build_s, 2), "prune_fit_s": round(fit_s, 2),
                   "peak_rss": peak_rss(), **params}
            cache.save_json("second-model", key, row)
        out.append(row)
    label = method + ("" if comp == "none" else f" + {comp}")
    say(f"{label} @ {sparsity:g} on {'+'.join(names)}: mean {np.mean([r['value'] for r in out]):.4f} "
        f"({time.perf_counter() - t0:.0f} s)")
    return out


def paired(a: list[dict], b: list[dict]) -> tuple[float, float]:
    """(mean of a - mean of b over tasks, its paired SE): tasks weigh equally, as the suite mean does."""
    diffs, var = [], 0.0
    for ra, rb in zip(a, b, strict=True):
        d = np.asarray(ra["hits"]) - np.asarray(rb["hits"])
        diffs.append(d.mean())
        var += d.var(ddof=1) / len(d) if len(d) > 1 else 0.0
    k = len(diffs)
    return float(np.mean(diffs)), float(np.sqrt(var) / k)


RANK = {m: k for k, m in enumerate(FULL)}  # the order of a table's rows: FULL's, each method then its + lstsq


def label(method: str, comp: str = "none") -> str:
    """A setting's name in every table."""
    return {"diet": "vote (diet)"}.get(method, method) + ("" if comp == "none" else f" + {comp}")


def cell_text(cell: list[dict] | None, base: list[dict] | None, tasks: int, mean: bool = True) -> str:
    """One table cell: "—" when the cell is missing or incomplete; its mean alone when there is no `base`; else its
    mean with the gain over `base` ± paired SE (`mean=False`: the gain alone)."""
    if cell is None or len(cell) != tasks:
        return "—"
    m = f"{np.mean([r['value'] for r in cell]):.3f}"
    if base is None:
        return m
    g, se = paired(cell, base)
    return f"{m} ({g:+.3f} ± {se:.3f})" if mean else f"{g:+.3f} ± {se:.3f}"


def refit_table(rows: list[dict], taskset: str, sparsities) -> list[str]:
    """Markdown: with lstsq on both sides, each mask's gain over the vote + lstsq (paired SE). Why a second table:
    the refit reads the tasks' own texts whatever made the mask, so it asks whether the mask still matters once
    every mask gets the same task-aware refit."""
    by = {}
    for r in rows:
        if r["taskset"] == taskset and r["comp"] == "lstsq":
            by.setdefault((r["method"], r["sparsity"]), []).append(r)
    methods = sorted({m for m, _ in by if m != "diet"})
    if not methods:
        return []
    n = len(taskset.split("+"))
    lines = [f"| mask + lstsq | {' | '.join(f'{s:.0%}: mean (gain over vote + lstsq ± paired SE)' for s in sparsities)}"
             " |", "|---|" + "---|" * len(sparsities)]
    for m in ["diet", *methods]:
        cells = [cell_text(by.get((m, s)), None if m == "diet" else by.get(("diet", s)), n) for s in sparsities]
        lines.append(f"| {label(m)} | {' | '.join(cells)} |")
    return lines + [""]


def subset_gains(rows: list[dict], tasksets: list[str], sparsity: float) -> list[str]:
    """Markdown: one row per setting, one column per task set: its gain over that set's vote (paired SE). Why:
    whether a finding holds is read across a row, not from one set's table."""
    by = {}
    for r in rows:
        if r["taskset"] in tasksets and r["sparsity"] in (sparsity, 0.0):
            by.setdefault((r["method"], r["comp"], r["taskset"]), []).append(r)
    settings = sorted({(m, c) for m, c, _ in by if (m, c) != ("diet", "none")},
                      key=lambda mc: (mc[0] != "dense", RANK.get(mc[0], len(RANK)), mc[1] != "none"))
    head = [f"set {k + 1}" for k in range(len(tasksets))]
    lines = [f"| setting | {' | '.join(head)} |", "|---|" + "---|" * len(tasksets)]
    vote = {t: by.get(("diet", "none", t)) for t in tasksets}
    lines.append("| vote (diet): mean | " + " | ".join(
        f"{np.mean([r['value'] for r in vote[t]]):.3f}" if vote[t] else "—" for t in tasksets) + " |")
    for m, c in settings:
        cells = ["—" if vote[t] is None else cell_text(by.get((m, c, t)), vote[t], len(t.split("+")), mean=False)
                 for t in tasksets]
        name = "dense (what the vote lost)" if m == "dense" else label(m, c)
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines + ["", "Sets: " + "; ".join(f"{k + 1} = {t.replace('+', ', ')}" for k, t in enumerate(tasksets)), ""]


def table(rows: list[dict], taskset: str, sparsities) -> list[str]:
    """Markdown: each setting's mean, and its gain over the vote at the same sparsity with the paired SE."""
    by = {}
    for r in rows:
        if r["taskset"] == taskset:
            by.setdefault((r["method"], r["comp"], r["sparsity"]), []).append(r)
    dense = by.get(("dense", "none", 0.0))
    lines = [f"| setting | {' | '.join(f'{s:.0%} MLP channels: mean (gain over vote ± paired SE)' for s in sparsities)}"
             " | params removed |", "|---|" + "---|" * (len(sparsities) + 1)]
    if dense:
        d = f"{np.mean([r['value'] for r in dense]):.3f}"
        lines.append(f"| dense | {' | '.join(d for _ in sparsities)} | 0% |")
    names = sorted({(m, c) for m, c, s in by if m != "dense"},
                   key=lambda mc: (RANK.get(mc[0], len(RANK)), mc[1] != "none"))
    n = len(taskset.split("+"))
    for m, c in names:
        is_vote = (m, c) == ("diet", "none")
        cells = [cell_text(by.get((m, c, s)), None if is_vote else by.get(("diet", "none", s)), n) for s in sparsities]
        prm = [f"{by[(m, c, s)][0]['param_sparsity']:.1%}" for s in sparsities
               if (m, c, s) in by and len(by[(m, c, s)]) == n]
        name = label(m, c)
        ftc = [by[(m, c, s)][0].get("fit_tokens_per_channel") for s in sparsities if (m, c, s) in by]
        if any(ftc):
            name += " (" + " / ".join(f"{x:.1f}" for x in ftc if x) + " fit tokens per kept channel)"
        lines.append(f"| {name} | {' | '.join(cells)} | {' / '.join(prm)} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m", help="embedded name or model folder (default gemma3-270m)")
    ap.add_argument("--out", required=True, help="output folder (cells.csv, claim.md)")
    ap.add_argument("--limit", type=int, default=100, help="evaluation items per task (default 100)")
    ap.add_argument("--samples", type=int, default=100, help="calibration texts per task (default 100)")
    ap.add_argument("--sparsities", default="0.2,0.4", help="MLP-channel sparsities (default 0.2,0.4)")
    ap.add_argument("--methods", default=",".join(FULL), help=f"full-suite methods (default {','.join(FULL)})")
    ap.add_argument("--lstsq", default=",".join(LSTSQ_METHODS), help="methods also run + lstsq")
    ap.add_argument("--subsets", type=int, default=3, help="four-task subsets (default 3)")
    ap.add_argument("--subset-seed", type=int, default=25, help="seed of the subsets (default 25)")
    ap.add_argument("--subset-sparsity", type=float, default=0.4, help="sparsity on the subsets (default 0.4)")
    ap.add_argument("--subset-methods", default=",".join(SUBSET_METHODS),
                    help=f"methods on the subsets (default {','.join(SUBSET_METHODS)})")
    ap.add_argument("--subsets-only", action="store_true", help="skip the full-suite table's other methods")
    ap.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    ap.add_argument("--report-only", action="store_true", help="write the tables from cached cells, run nothing new")
    ap.add_argument("--lock", action="store_true",
                    help="take /tmp/diet-torch.lock per cell, kept up to 240 s at a time (bench/claim_check.py's "
                         "LeaseLock), instead of running the whole script under flock")
    a = ap.parse_args()

    import torch

    from diet.api import profile_tasks
    from diet.cache import ArtifactCache
    from diet.compare import model_size
    from diet.models import count_parameters, load_model
    from diet.settings import ModelSpec, ProfileSettings
    from diet.tasks import get_task, offline_task_names

    torch.set_num_threads(2)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    lm = load_model(ModelSpec(name=a.model), say=say)
    load_s = time.perf_counter() - t0
    names = offline_task_names()
    tasks = {n: get_task(n) for n in names}
    profile = ProfileSettings(samples=a.samples, seed=0, max_length=256, batch_size=16)
    lock = contextlib.nullcontext
    if a.lock:
        from claim_check import LeaseLock  # bench/ is on sys.path when this runs as a script

        lock = LeaseLock()
    with lock():
        stats = profile_tasks(lm, list(tasks.values()), profile)
    cache = ArtifactCache()
    sparsities = [float(s) for s in a.sparsities.split(",")]
    def runner(taskset, method, comp, s):
        with lock():
            return run_cell(lm, stats, taskset, method, comp, s, a.limit, a.batch_size, cache, say, a.report_only)

    full = [tasks[n] for n in names]
    picks = subsets(names, a.subsets, a.subset_seed)
    lstsq = tuple(x for x in a.lstsq.split(",") if x)
    full_cells = [] if a.subsets_only else [(full, m, c, s) for s in sparsities
                                            for m, c in plan(tuple(a.methods.split(",")), lstsq)]
    sub_cells = [([tasks[n] for n in pick], m, c, a.subset_sparsity) for pick in picks
                 for m, c in plan(tuple(a.subset_methods.split(",")), lstsq)]
    # run order: what the findings need first (so a run stopped early has them), then the rest
    first = {("diet", "none"), ("pooled", "none"), ("diet", "lstsq")}
    order = ([(full, "dense", "none", 0.0)] + [c for c in full_cells if c[1:3] in first]
             + [(sub, "dense", "none", 0.0) for sub, *_ in sub_cells[:: len(sub_cells) // max(len(picks), 1)]]
             + [c for c in sub_cells if c[1:3] in first] + [c for c in full_cells if c[1:3] not in first]
             + sorted((c for c in sub_cells if c[1:3] not in first), key=lambda c: c[2] != "none"))
    rows: list[dict] = []
    for taskset, m, c, s in order:
        rows += runner(taskset, m, c, s)

    if a.lock:
        lock.release()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    pd.DataFrame([{k: v for k, v in r.items() if k != "hits"} for r in rows]).to_csv(out / "cells.csv", index=False)
    total = count_parameters(lm.model)
    emb = lm.model.get_input_embeddings().weight.numel()
    mlp = sum(3 * layer.mlp.down_proj.weight.numel() for layer in lm.model.model.layers)
    shares = (f"Parameters of {a.model}: {total / 1e6:.1f} M = embedding (tied with the LM head) {emb / total:.1%} + "
              f"transformer blocks {(total - emb) / total:.1%}, of which MLP {mlp / total:.1%} of all; so x% of MLP "
              f"channels is {mlp / total:.3f}·x of all parameters.")
    lines = [f"# {a.model}: claim check and task subsets", "", shares, "",
             f"Calibration: {a.samples} texts per task; evaluation: first {a.limit} items per task; "
             f"sparsities {a.sparsities} (subsets: {a.subset_sparsity:g}).", ""]
    lines += [f"## Full suite ({len(names)} tasks)", ""] + table(rows, "+".join(names), sparsities)
    refit = refit_table(rows, "+".join(names), sparsities)
    lines += (["With the refit on both sides (it reads the tasks' calibration texts, whatever made the mask):", ""]
              + refit if refit else [])
    if picks:
        lines += [f"## Each setting's gain over the vote on each subset ({a.subset_sparsity:.0%} MLP channels)", ""]
        lines += subset_gains(rows, ["+".join(p) for p in picks], a.subset_sparsity)
    for pick in picks:
        lines += [f"## Subset {'+'.join(pick)}", ""] + table(rows, "+".join(pick), [a.subset_sparsity])
        lines += refit_table(rows, "+".join(pick), [a.subset_sparsity])
    evals = [r for r in rows if r["method"] == "dense" and r["taskset"] == "+".join(names)]
    weights = model_size(lm.model)["mb"] * 2**20
    fits = list({(r["method"], r["sparsity"], r["taskset"]): r["prune_fit_s"] for r in rows
                 if r["comp"] == "lstsq"}.values())
    prof_s = sum(float(st.meta.get("seconds", 0)) for st in stats.values())
    prof_tok = sum(float(st.meta.get("tokens", 0)) for st in stats.values())
    peak = max([r.get("peak_rss", 0) for r in rows] + [1])
    lines += ["## Cost on this machine (shared 2-core CPU: other jobs ran between and beside these cells)", "",
              f"- weights {weights / 2**30:.2f} GiB ({next(lm.model.parameters()).dtype}); load {load_s:.0f} s",
              f"- profiling {len(names)} tasks x {a.samples} texts ({prof_tok:,.0f} tokens): {prof_s:.0f} s when "
              f"profiled = {prof_tok / max(prof_s, 1e-9):.0f} tokens/s",
              f"- dense evaluation, {a.limit} items x {len(names)} tasks: {sum(r['eval_s'] for r in evals):.0f} s"
              if evals else "- dense evaluation: not run",
              f"- lstsq fit + prune per model: median {np.median(fits):.0f} s over {len(fits)} models" if fits
              else "- lstsq: not run",
              f"- peak RSS of the run {peak / 2**30:.2f} GiB = {peak / weights:.2f} x the weights' bytes (the dense "
              "model stays loaded next to each pruned copy)", ""]
    (out / "claim.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
