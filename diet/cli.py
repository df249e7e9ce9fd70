"""`python -m diet …` — the command-line contract other tools and our own checks call.

Every user mistake ends as one line `error: …` and exit code 2 (never a traceback); Ctrl-C ends with exit 130 and,
since every write is atomic, leaves no half-written file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from diet.errors import DietError
from diet.settings import DEFAULT_MODEL, MaskSettings, ModelSpec, ProfileSettings


def _tasks_arg(s: str) -> list[str]:
    names = [t.strip() for t in s.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one task (comma-separated names or JSONL/CSV paths)")
    return names


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1) (fraction of channels removed), got {v}")
    return v


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"'{DEFAULT_MODEL}' (embedded, offline), a Hugging Face id, or a local folder "
                        f"(default: {DEFAULT_MODEL})")
    g.add_argument("--revision", default=None, help="hub revision: branch, tag or commit (default: main)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (statistics are always summed in fp32; default: float32)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a large model over GPUs (accelerate)")
    g.add_argument("--quantization", default=None, choices=["8bit", "4bit"],
                   help="bitsandbytes loading, for profiling large models in less memory (not for pruning)")
    g.add_argument("--trust-remote-code", action="store_true", help="run code shipped in the model folder (off)")


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, type=_tasks_arg,
                   help="comma-separated task names (see `python -m diet tasks`) or paths to JSONL/CSV task files")
    p.add_argument("--samples", type=int, default=100, help="calibration texts per task (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of calibration texts (default: 0)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per text, longer ones truncated (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default: 8)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m diet", description="DIET Explorer: task-aware, training-free "
                                 "structured pruning of LLMs (profile once, vote, prune exactly).")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("tasks", help="list the available tasks", description="List the offline suite and hub tasks.")

    p = sub.add_parser("profile", help="profile tasks (cached: a second run does no forward pass)",
                       description="Record per-channel activation statistics of every MLP layer for each task, "
                                   "and cache them on disk.")
    _model_args(p)
    _profile_args(p)

    p = sub.add_parser("prune", help="profile (cached), vote, prune and write a model folder",
                       description="Build one mask per task at the target sparsity, merge them by DIET's vote, "
                                   "physically remove the pruned channels and write a loadable model folder with "
                                   "mask.json, mask.safetensors and summary.json.")
    _model_args(p)
    _profile_args(p)
    p.add_argument("--sparsity", type=_fraction, required=True,
                   help="fraction of MLP channels removed, e.g. 0.2 (the total-parameter fraction is reported too)")
    p.add_argument("--threshold", type=int, default=None,
                   help="keep a channel if at least K task masks keep it (widths then differ per layer and the "
                        "model is saved zero-padded); default: exact budget, same count in every layer")
    p.add_argument("--score", default="mean_abs", choices=["mean_abs", "rms"],
                   help="channel score: mean |x| (our default) or RMS")
    p.add_argument("--allocation", default="layer", choices=["layer", "global"],
                   help="layer: same kept count per layer (default); global: rank across layers")
    p.add_argument("--min-keep", type=float, default=0.05, help="global allocation: minimum kept fraction per layer")
    p.add_argument("--export-mode", default=None, choices=["uniform", "padded"],
                   help="uniform: smaller stock model; padded: zeroed channels, stock shapes (default: uniform when "
                        "every layer keeps the same count, else padded)")
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")

    p = sub.add_parser("eval", help="zero-shot multiple-choice accuracy (lm-eval scoring)",
                       description="Evaluate a model (embedded default, hub id or folder) on tasks; prints a table "
                                   "of acc and acc_norm per task.")
    _model_args(p)
    p.add_argument("--tasks", required=True, type=_tasks_arg, help="comma-separated task names or task files")
    p.add_argument("--limit", type=int, default=None, help="first N evaluation items per task only (a PREVIEW)")
    p.add_argument("--batch-size", type=int, default=16, help="requests per forward pass (default: 16)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return ap


def _spec(a) -> ModelSpec:
    return ModelSpec(name=a.model, revision=a.revision, dtype=a.dtype, device=a.device, device_map=a.device_map,
                     quantization=a.quantization, trust_remote_code=a.trust_remote_code)


def _profile(a):
    from tqdm import tqdm

    from diet.api import estimate_seconds, profile_tasks
    from diet.models import load_model
    from diet.tasks import get_task

    settings = ProfileSettings(samples=a.samples, seed=a.seed, max_length=a.max_length, batch_size=a.batch_size)
    tasks = [get_task(t) for t in a.tasks]  # validate every task before loading a model
    lm = load_model(_spec(a), say=lambda m: print(m, file=sys.stderr))
    eta = estimate_seconds(lm, tasks, settings)
    if eta:
        print(f"profiling {len(tasks)} task(s) x {settings.samples} samples: about {eta:.0f} s", file=sys.stderr)
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, desc=name, unit="text", file=sys.stderr))
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return lm, profile_tasks(lm, tasks, settings, progress=progress), settings


def cmd_tasks(a) -> None:
    from diet.tasks import list_tasks

    for t in list_tasks():
        print(f"{t.name:16s} {t.source:8s} {t.description}")


def cmd_profile(a) -> None:
    _, stats, _ = _profile(a)
    for name, s in stats.items():
        print(f"{name}: {int(s.meta['texts'])} texts, {int(s.count.sum())} tokens, "
              f"{len(s.meta['shape']['widths'])} layers x {s.meta['shape']['widths'][0]} channels")


def cmd_prune(a) -> None:
    from diet.api import build_mask
    from diet.cache import atomic_write_json
    from diet.export import check_out_dir, export_model

    out = Path(a.out)
    check_out_dir(out, a.overwrite)  # refuse before spending minutes on profiling
    merge = "threshold" if a.threshold is not None else "budget"
    mask_settings = MaskSettings(sparsity=a.sparsity, score=a.score, merge=merge, threshold=a.threshold,
                                 allocation=a.allocation, min_keep=a.min_keep)
    if a.threshold is not None:
        mask_settings.resolved_threshold(len(a.tasks))
    t0 = time.perf_counter()
    lm, stats, settings = _profile(a)
    result = build_mask(stats, mask_settings)
    s = result.summary
    summary = {"model": lm.spec.name, "model_identity": lm.identity, "tasks": result.tasks,
               "unit_sparsity": s["unit_sparsity"], "param_sparsity": s["param_sparsity"],
               "params_before": s["params_total"], "params_after": s["params_after"],
               "kept_per_layer": s["kept_per_layer"], "profile_settings": asdict(settings),
               "mask_settings": asdict(mask_settings)}
    folder = export_model(lm, result, out, mode=a.export_mode, overwrite=a.overwrite,
                          extra={"profile": asdict(settings)})
    summary["export_mode"] = json.loads((folder / "diet_settings.json").read_text())["mode"]
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(folder / "summary.json", summary)
    print(f"pruned {s['unit_sparsity']:.1%} of MLP channels = {s['param_sparsity']:.1%} of all parameters "
          f"({s['params_total']:,} -> {s['params_after']:,}); wrote {folder} ({summary['export_mode']})")


def cmd_eval(a) -> None:
    from diet.evaluate import EvalSettings, evaluate_tasks, format_table
    from diet.models import load_model
    from diet.tasks import get_task

    tasks = [get_task(t) for t in a.tasks]
    if a.limit is not None and a.limit < 1:
        raise DietError(f"--limit must be at least 1, got {a.limit}")
    lm = load_model(_spec(a), say=lambda m: print(m, file=sys.stderr))
    results = evaluate_tasks(lm.model, lm.tokenizer, tasks, EvalSettings(limit=a.limit, batch_size=a.batch_size))
    print(format_table(results))
    if a.json:
        from diet.cache import atomic_write_json

        atomic_write_json(Path(a.json), {"model": lm.spec.name, "model_identity": lm.identity,
                                         "results": [r.to_dict() for r in results]})


COMMANDS = {"tasks": cmd_tasks, "profile": cmd_profile, "prune": cmd_prune, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except DietError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was left behind", file=sys.stderr)
        return 130
    return 0
