"""The claim check: does DIET's voted task-aware mask beat the baselines at 20% and 40% MLP-channel sparsity?

    flock /tmp/diet-torch.lock .venv/bin/python bench/claim_check.py --out bench/results/claim
    (add --limit N for a preview on a CPU; --lock makes the script take the lock per cell instead)

SmolLM2-135M (embedded), the offline suite (every task is both a calibration task and an evaluation task), 100
calibration texts per task, general text = the shipped self-generated corpus (offline). Every mask comes from the
same cached statistics and is cut by the same slicing code; each pruned model is evaluated on all tasks with the
lm-eval scoring convention, and the mean of each task's primary metric is compared. Cells are cached (diet.sweep),
so an interrupted run resumes. Writes claim.csv (tidy), means.csv, claim.md (the tables for docs/results.md) and
plot.png under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from diet.models import load_model
from diet.settings import CompensationSettings, MaskSettings, MethodSettings, ModelSpec, ProfileSettings
from diet.sweep import SweepSettings, run_sweep, save_png, table
from diet.tasks import get_task, offline_task_names

MAIN = ("diet", "task-fusion", "task-agnostic", "minitron", "wanda-sp", "flap", "magnitude", "random", "single-task")
POOLED = ("task-agnostic", "minitron", "wanda-sp", "flap")  # the same baselines on all task data pooled (ablation)
NEW = ("pooled", "diet-weighted")  # issue #13: named task-aware methods beyond the vote
COMPENSATED = ("diet", "pooled", "diet-weighted")  # x {bias, lstsq}: the task-aware methods...
COMPENSATED_POOLED = ("minitron",)  # ...and the best baseline on pooled task data
SPARSITIES = (0.2, 0.4)


class LeaseLock:
    """The shared-machine torch lock, taken per cell but kept across cells for up to `hold` seconds.

    Why: waiters on flock race rather than queue, so re-taking it for every 30-s cell starves behind longer jobs;
    holding it a few minutes at a time still lets the other jobs take turns.
    """

    def __init__(self, path: str = "/tmp/diet-torch.lock", hold: float = 240.0):
        self.path, self.hold, self.file, self.since = path, hold, None, 0.0

    def __call__(self):
        return self

    def __enter__(self):
        if self.file is None:
            self.file = open(self.path, "w")  # noqa: SIM115 - held across `with` blocks on purpose
            fcntl.flock(self.file, fcntl.LOCK_EX)
            self.since = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None and (time.monotonic() - self.since > self.hold or exc[0] is not None):
            self.release()

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def shortgpt_rows(lm, rows: list[dict], profile: ProfileSettings, limit: int | None, batch_size: int, lock,
                  say) -> list[dict]:
    """ShortGPT at the parameter sparsity DIET reaches at each MLP sparsity (whole layers, nearest count)."""
    import copy

    from diet.cache import ArtifactCache
    from diet.evaluate import EvalSettings, evaluate_task
    from diet.general import general_task
    from diet.profile import choose_texts
    from diet.settings import sha256_of
    from diet.shortgpt import layer_params, remove_layers, shortgpt_bi
    from diet.tasks import get_task

    cache, out = ArtifactCache(), []
    lock = lock or contextlib.nullcontext
    with lock():
        bi = shortgpt_bi(lm, choose_texts(general_task("generated").calibration, profile), profile)
    per_layer, total = np.mean(layer_params(lm.model)), sum(p.numel() for p in lm.model.parameters())
    say(f"ShortGPT block influence per layer: {np.round(bi, 4).tolist()}")
    for s in SPARSITIES:
        target = float(np.mean([r["param_sparsity"] for r in rows if r["method"] == "diet" and r["sparsity"] == s]))
        n = int(round(target * total / per_layer))
        drop = sorted(int(i) for i in np.argsort(bi, kind="stable")[:n])
        with lock():
            model = None
            for name in offline_task_names():
                task = get_task(name)
                key = sha256_of({"kind": "claim-shortgpt/1", "model": lm.identity, "drop": drop, "limit": limit,
                                 "task": task.fingerprint()})[:24]
                row = cache.load_json("sweep", key)
                if row is None:
                    model = model or remove_layers(copy.deepcopy(lm.model), drop)
                    r = evaluate_task(model, lm.tokenizer, task, EvalSettings(limit=limit, batch_size=batch_size))
                    removed = sum(layer_params(lm.model)[i] for i in drop) / total
                    row = {"method": "shortgpt", "variant": "", "sparsity": s, "unit": "layers",
                           "unit_sparsity": n / len(bi), "param_sparsity": removed, "task": r.task,
                           "metric": r.metric, "value": r.value, "acc": r.acc, "acc_norm": r.acc_norm, "n": r.n,
                           "preview": r.preview, "seconds": round(r.seconds, 3)}
                    cache.save_json("sweep", key, row)
                out.append(row)
        say(f"shortgpt @ {s:g} (drop layers {drop}): mean {np.mean([r['value'] for r in out[-8:]]):.4f}")
    return out


LSTSQ = CompensationSettings(method="lstsq")  # the defaults (ridge chosen on held-out calibration texts)
MISMATCH: list[str] = []  # recomputed rows that differ from the reused file (reported in claim.md)


def reused(path: str, fresh: list[dict]) -> list[dict]:
    """The old table's rows from an earlier claim.csv, after checking that the recomputed rows reproduce it."""
    import pandas as pd

    old = pd.read_csv(path, keep_default_na=False)
    old["variant"] = old["variant"].astype(str)
    for r in fresh:
        hit = old[(old.method == r["method"]) & (old.variant == r["variant"]) & (old.sparsity == r["sparsity"])
                  & (old.task == r["task"])]
        if len(hit) != 1 or abs(float(hit.iloc[0]["value"]) - r["value"]) > 1e-9:
            MISMATCH.append(f"{r['method']} @ {r['sparsity']:g} on {r['task']}: {r['value']} now, "
                            f"{hit.iloc[0]['value'] if len(hit) else 'missing'} in {path}")
    keep = old[~((old.method == "dense") | ((old.method == "diet") & (old.variant == "")))]
    out = keep.to_dict("records")
    for r in out:
        r["compensation"] = "none"
        r["preview"] = bool(r["preview"]) if not isinstance(r["preview"], str) else r["preview"] == "True"
    return out


def markdown(rows: list[dict], tasks: list[str]) -> str:
    df = table(rows)
    comp = df["compensation"].map(lambda c: "" if c == "none" else f" + {c}")
    df["name"] = df["method"] + df["variant"].map(lambda v: f" ({v})" if v else "") + comp
    means = df.pivot_table(index="name", columns="sparsity", values="value", aggfunc="mean", sort=False)
    params = df.pivot_table(index="name", columns="sparsity", values="param_sparsity", aggfunc="mean", sort=False)
    n_items = int(df[df.method == "dense"]["n"].sum())
    lines = [f"Mean accuracy over {len(tasks)} tasks ({n_items} evaluation items per model; each task's primary "
             "metric, acc_norm for every offline task). Rank among the pruned models in brackets.", "",
             "| method | " + " | ".join(f"{s:.0%} sparsity" for s in SPARSITIES) + " | params removed |",
             "|---|" + "---|" * (len(SPARSITIES) + 1)]
    ranks = {s: means[s].drop("dense", errors="ignore").rank(ascending=False, method="min") for s in SPARSITIES}
    dense = means.loc["dense", 0.0]
    lines.append(f"| dense | {dense:.4f} | {dense:.4f} | 0% |")
    for name in means.index.drop("dense"):
        cells = " | ".join(f"{means.loc[name, s]:.4f} ({int(ranks[s][name])})" for s in SPARSITIES)
        p = " / ".join(f"{params.loc[name, s]:.1%}" for s in SPARSITIES)
        lines.append(f"| {name} | {cells} | {p} |")
    lines += ["", "Per task (primary metric):", ""]
    per = df.pivot_table(index=["name", "sparsity"], columns="task", values="value", sort=False)
    lines.append("| method | sparsity | " + " | ".join(tasks) + " |")
    lines.append("|---|---|" + "---|" * len(tasks))
    for (name, s), r in per.iterrows():
        if name.startswith("single-task") or "(pooled task data)" in name:
            continue
        lines.append(f"| {name} | {s:.0%} | " + " | ".join(f"{r[t]:.3f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/claim", help="output folder")
    ap.add_argument("--limit", type=int, default=None, help="evaluation items per task (default: all)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--lock", action="store_true", help="take /tmp/diet-torch.lock per cell (shared CPU machines)")
    ap.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    ap.add_argument("--reuse", default=None,
                    help="claim.csv of an earlier run with the same settings: its rows for the old table (MAIN, "
                         "POOLED, shortgpt) are read instead of recomputed; dense and diet are recomputed as a check")
    ap.add_argument("--no-compensation", action="store_true", help="skip the bias / lstsq rows")
    ap.add_argument("--no-pooled-compensation", action="store_true",
                    help="skip the bias / lstsq rows of the baselines on pooled task data (COMPENSATED_POOLED)")
    ap.add_argument("--hold", type=float, default=240.0,
                    help="with --lock: seconds the lock is kept across cells before it is offered to others")
    a = ap.parse_args()

    import torch

    if a.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(2)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    lm = load_model(ModelSpec(device=a.device), say=say)
    tasks = offline_task_names()
    fingerprints = {t: get_task(t).fingerprint() for t in tasks}  # the suite must not change during the run
    profile = ProfileSettings(samples=100, seed=0, max_length=256, batch_size=16)
    lock = LeaseLock(hold=a.hold) if a.lock else None
    sweep = SweepSettings(methods=MAIN, sparsities=SPARSITIES, tasks=tuple(tasks), limit=a.limit,
                          general="generated", batch_size=a.batch_size)
    comps = ("none",) if a.no_compensation else ("none", "bias", "lstsq")
    if a.reuse:
        rows = run_sweep(lm, replace(sweep, methods=("diet",)), profile, MaskSettings(), MethodSettings(), say=say,
                         lock=lock)
        rows += reused(a.reuse, rows)
    else:
        rows = run_sweep(lm, sweep, profile, MaskSettings(), MethodSettings(), say=say, lock=lock)
        pooled = run_sweep(lm, replace(sweep, methods=POOLED), profile, MaskSettings(),
                           MethodSettings(calibration="tasks"), say=say, lock=lock)
        rows += [{**r, "variant": "pooled task data"} for r in pooled if r["method"] != "dense"]
        rows += shortgpt_rows(lm, rows, profile, a.limit, a.batch_size, lock, say)
    new = run_sweep(lm, replace(sweep, methods=NEW + COMPENSATED[:1], compensations=comps), profile, MaskSettings(),
                    MethodSettings(), say=say, lock=lock, lstsq=LSTSQ)
    rows += [r for r in new if r["method"] != "dense" and not (r["method"] == "diet" and r["compensation"] == "none")]
    if not (a.no_compensation or a.no_pooled_compensation):
        pooled = run_sweep(lm, replace(sweep, methods=COMPENSATED_POOLED, compensations=comps[1:]), profile,
                           MaskSettings(), MethodSettings(calibration="tasks"), say=say, lock=lock, lstsq=LSTSQ)
        rows += [{**r, "variant": "pooled task data"} for r in pooled if r["method"] != "dense"]

    if lock is not None:
        lock.release()
    if {t: get_task(t).fingerprint() for t in tasks} != fingerprints:
        raise SystemExit("the task suite changed during the run: re-run (finished cells are cached) for one table")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df = table(rows)
    df.to_csv(out / "claim.csv", index=False)
    df.groupby(["method", "variant", "compensation", "sparsity"], sort=False)["value"].mean().to_csv(out / "means.csv")
    save_png(rows, out / "plot.png")
    md = markdown(rows, tasks)
    device = torch.cuda.get_device_name() if next(lm.model.parameters()).is_cuda else "CPU"
    md += (f"\nRun: {len(df) // len(tasks)} models x {len(tasks)} tasks on {device} in "
           f"{time.perf_counter() - t0:.0f} s (limit={a.limit}).\n")
    if a.reuse:
        md += (f"\nReused from {a.reuse}: every row but dense and diet (recomputed here as a check: "
               + ("identical)." if not MISMATCH else "DIFFERENT: " + "; ".join(MISMATCH) + ").") + "\n")
    (out / "claim.md").write_text(md)
    print(md)
    diet = df[(df.method == "diet") & (df.compensation == "none")].groupby("sparsity")["value"].mean()
    df = df[df.method != "dense"]
    others = df[~((df.method == "diet") & (df.compensation == "none") & (df.variant == ""))]
    others = others.groupby(["method", "variant", "compensation", "sparsity"])["value"].mean()
    for s in SPARSITIES:
        best = others.xs(s, level="sparsity").idxmax()
        print(f"{s:.0%}: diet {diet[s]:.4f} vs best other {best} {others.xs(s, level='sparsity').max():.4f} "
              f"(diff {diet[s] - others.xs(s, level='sparsity').max():+.4f})", file=sys.stderr)


if __name__ == "__main__":
    main()
