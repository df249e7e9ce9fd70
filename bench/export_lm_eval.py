"""Bench: an exported pruned folder evaluates with lm-eval's own CLI exactly as with our evaluator.

Why: "loads anywhere" is the export's promise. This script prunes SmolLM2-135M (uniform, 25% of MLP channels by
default), exports it with `diet.export.export_model`, then scores an offline task four ways and prints them side by
side: ours on the in-memory pruned model, ours on the folder reloaded with plain `AutoModelForCausalLM`, and
`lm_eval --model hf --model_args pretrained=DIR` run as a separate command on the folder (plus ours on the dense
model, for reference). Exit status 1 when lm-eval's accuracy differs from ours by more than 0.1 point.

    flock /tmp/diet-torch.lock .venv/bin/python bench/export_lm_eval.py --tasks arithmetic

The lm-eval task files (YAML + JSONL of exactly our items) come from bench/eval_vs_lm_eval.py when present.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_DELTA_POINTS = 0.1


def _helpers():
    """ensure_lm_eval and write_lm_eval_task from bench/eval_vs_lm_eval.py, else small local equivalents."""
    path = ROOT / "bench" / "eval_vs_lm_eval.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("eval_vs_lm_eval", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.ensure_lm_eval, mod.write_lm_eval_task
    return _ensure_lm_eval, _write_lm_eval_task


def _ensure_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        import torch

        subprocess.run([sys.executable, "-m", "pip", "install", "lm-eval", f"torch=={torch.__version__.split('+')[0]}"],
                       check=True)


def _write_lm_eval_task(task, items, folder: Path) -> str:
    name = f"diet_{task.name}"
    with (folder / f"{name}.jsonl").open("w") as f:
        for it in items:
            f.write(json.dumps({"context": it.context, "choices": list(it.choices), "gold": it.gold}) + "\n")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
        f"{json.dumps(str(folder / f'{name}.jsonl'))}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: gold\ntarget_delimiter: \" \"\n"
        "num_fewshot: 0\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n")
    return name


def run_lm_eval_cli(folder: Path, names: list[str], include: Path, batch_size: int, device: str,
                    out: Path) -> tuple[dict, float, str]:
    """lm-eval's own command line on the exported folder: (results per task, seconds, the command)."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
           "--tasks", ",".join(names), "--include_path", str(include), "--batch_size", str(batch_size),
           "--device", device, "--output_path", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lm-eval failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    files = sorted(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"lm-eval wrote no results under {out}:\n{proc.stdout[-2000:]}")
    return json.loads(files[-1].read_text())["results"], seconds, shlex.join(["python", *cmd[1:]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="diet model name or folder (default smollm2-135m)")
    p.add_argument("--tasks", nargs="+", default=["arithmetic"], help="offline tasks to profile and to score")
    p.add_argument("--sparsity", type=float, default=0.25, help="fraction of MLP channels removed (default 0.25)")
    p.add_argument("--samples", type=int, default=32, help="calibration texts per task (default 32)")
    p.add_argument("--limit", type=int, default=None, help="first N evaluation items (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="same for both evaluators (default 16)")
    p.add_argument("--speed-repeats", type=int, default=3, help="model-card speed measurement (0 skips)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default=None, help="export folder (default: a new temp folder)")
    a = p.parse_args(argv)

    ensure_lm_eval, write_lm_eval_task = _helpers()
    ensure_lm_eval()
    import torch
    from transformers import AutoModelForCausalLM

    from diet.api import build_mask, profile_tasks
    from diet.evaluate import EvalSettings, evaluate_task
    from diet.export import export_model
    from diet.export.cut import build_export_model
    from diet.measure import SpeedSettings
    from diet.models import count_parameters, load_model
    from diet.settings import MaskSettings, ModelSpec, ProfileSettings
    from diet.tasks import get_task

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="diet-export-lm-eval-"))
    out = Path(a.out) if a.out else work / "pruned"
    lm = load_model(ModelSpec(name=a.model, device="cpu"), say=lambda m: print(m, file=sys.stderr))
    tasks = [get_task(t) for t in a.tasks]
    t0 = time.perf_counter()
    stats = profile_tasks(lm, tasks, ProfileSettings(samples=a.samples))
    result = build_mask(stats, MaskSettings(sparsity=a.sparsity))
    profile_s = time.perf_counter() - t0
    settings = EvalSettings(limit=a.limit, batch_size=a.batch_size)
    pruned = build_export_model(lm.model, result.keep(), "uniform")
    dense_r = [evaluate_task(lm.model, lm.tokenizer, t, settings) for t in tasks]
    pruned_r = [evaluate_task(pruned, lm.tokenizer, t, settings) for t in tasks]
    t0 = time.perf_counter()
    speed = SpeedSettings(repeats=a.speed_repeats) if a.speed_repeats else None
    export_model(lm, result, out, mode="uniform", evaluation={"dense": dense_r, "pruned": pruned_r}, speed=speed,
                 extra={"profile": {"samples": a.samples}}, say=lambda m: print(m, file=sys.stderr))
    export_s = time.perf_counter() - t0
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reload_r = [evaluate_task(reloaded, lm.tokenizer, t, settings) for t in tasks]

    include = work / "lm_eval_tasks"
    include.mkdir()
    names = [write_lm_eval_task(t, t.evaluation[: a.limit] if a.limit else t.evaluation, include) for t in tasks]
    theirs, lm_eval_s, cmd = run_lm_eval_cli(out, names, include, a.batch_size, "cpu", work / "lm_eval_out")

    import lm_eval

    config = json.loads((out / "config.json").read_text())
    print(f"model: {a.model} -> {out} (uniform, intermediate_size {config['intermediate_size']}, "
          f"{count_parameters(lm.model):,} -> {count_parameters(reloaded):,} parameters; "
          f"{result.summary['unit_sparsity']:.1%} of MLP channels = {result.summary['param_sparsity']:.1%} of all)")
    print(f"profile+mask {profile_s:.1f} s (cached statistics are reused), export {export_s:.1f} s, "
          f"lm-eval command {lm_eval_s:.1f} s")
    print(f"lm-eval {lm_eval.__version__}: {cmd}")
    head = (f"{'task':<12} {'n':>4} | {'metric':<8} | {'dense ours':>10} {'pruned ours':>11} {'folder ours':>11} "
            f"{'folder lm-eval':>14} | {'|Δ| acc pt':>10} {'|Δ| norm pt':>11}")
    print(head)
    print("-" * len(head))
    worst = 0.0
    for t, name, d, pr, rl in zip(tasks, names, dense_r, pruned_r, reload_r):
        th = theirs[name]
        d_acc, d_norm = 100 * abs(rl.acc - th["acc,none"]), 100 * abs(rl.acc_norm - th["acc_norm,none"])
        worst = max(worst, d_acc, d_norm, 100 * abs(pr.acc - rl.acc), 100 * abs(pr.acc_norm - rl.acc_norm))
        for metric, key in (("acc", "acc,none"), ("acc_norm", "acc_norm,none")):
            print(f"{t.name:<12} {rl.n:>4} | {metric:<8} | {getattr(d, metric):>10.4f} {getattr(pr, metric):>11.4f} "
                  f"{getattr(rl, metric):>11.4f} {th[key]:>14.4f} | "
                  + (f"{d_acc:>10.2f} {d_norm:>11.2f}" if metric == "acc" else ""))
    print(f"largest |Δ| between our scores and lm-eval's on the folder: {worst:.2f} points (limit {MAX_DELTA_POINTS})")
    print(f"export folder: {out}  (README.md holds the card; lm-eval outputs in {work / 'lm_eval_out'})")
    if worst > MAX_DELTA_POINTS:
        print("FAIL: accuracies disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
