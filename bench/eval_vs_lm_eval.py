"""Bench: DIET's `evaluate_task` against lm-evaluation-harness 0.4.x on the same model, items and batch size.

Why: `diet.evaluate` claims lm-eval's exact numbers at a fraction of its time. This script checks both claims on
real weights: it writes an lm-eval task (YAML + JSONL of exactly the items we score) per task, runs lm-eval's
`simple_evaluate` with `--model hf pretrained=<model folder>`, runs ours on the in-memory model, and prints
accuracies both ways, |Δ| in points, the largest per-choice loglik difference, and wall times side by side.
Exit status 1 when an accuracy differs by more than 0.1 point.

    flock /tmp/diet-torch.lock .venv/bin/python bench/eval_vs_lm_eval.py --tasks arithmetic physical

Timing: "ours" is the whole `evaluate_task` call (tokenization included). For lm-eval we time the whole
`simple_evaluate` call and, inside it, `HFLM.loglikelihood` (its tokenization + forward passes): the ratio
uses the latter, the fairer (smaller) of the two. Model loading is excluded on both sides. On a shared CPU
other jobs slow either side at random: `--repeat 2` alternates the sides and keeps each one's fastest run.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on a network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_DELTA_POINTS = 0.1


def ensure_lm_eval() -> None:
    """Install lm-eval 0.4.x into this interpreter if missing, pinning the installed torch (never upgrade it)."""
    if importlib.util.find_spec("lm_eval") is not None:
        return
    import torch

    pin = torch.__version__.split("+")[0]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(f"torch=={pin}\n")
    cmd = [sys.executable, "-m", "pip", "install", "lm-eval==0.4.*", "-c", f.name]
    print("installing lm-eval:", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def write_lm_eval_task(task, items, folder: Path) -> str:
    """An lm-eval task (YAML + JSONL test split) holding exactly `items`; returns its lm-eval name.

    Fields are passed by name (`doc_to_text: context`), not through Jinja, so lm-eval sees the strings verbatim.
    Per-choice-context items (WinoGrande style) use lm-eval's multiple-input form: doc_to_text is the gold
    index, doc_to_choice the contexts, doc_to_target the shared suffix."""
    name = f"diet_{task.name}"
    data = folder / f"{name}.jsonl"
    multi = any(it.contexts is not None for it in items)
    with data.open("w") as f:
        for it in items:
            if multi:
                rec = {"gold": it.gold, "contexts": list(it.contexts), "suffix": it.choices[0]}
            else:
                rec = {"context": it.context, "choices": list(it.choices), "gold": it.gold}
            f.write(json.dumps(rec) + "\n")
    fields = ("gold", "contexts", "suffix") if multi else ("context", "choices", "gold")
    yaml = f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: multiple_choice
doc_to_text: {fields[0]}
doc_to_choice: {fields[1]}
doc_to_target: {fields[2]}
target_delimiter: " "
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    (folder / f"{name}.yaml").write_text(yaml)
    return name


def token_work(tokenizer, items) -> tuple[int, int]:
    """Token positions each side runs through the model for `items`: (ours, lm-eval's), padding not counted.

    Why: it is the floor under the time ratio. lm-eval 0.4 runs one row per distinct context + continuation[:-1]
    (its one-token-continuation grouping: choices that are one token share their context's row), full width, with
    the LM head on every position; we run each distinct context once, then each distinct continuation input
    (continuation[:-1]) that is not a prefix of another one of the same context."""
    from diet.evaluate import encode_pair

    encoded = [encode_pair(tokenizer, c, x) for it in items for c, x in it.requests()]
    theirs = sum(len(k) for k in {tuple(c + x[:-1]) for c, x in encoded})
    fed: dict[tuple, set] = {}
    for c, x in encoded:
        fed.setdefault(tuple(c), set()).add(tuple(x[:-1]))
    ours = 0
    for ctx, rows in fed.items():
        rows = [r for r in rows if r]
        ours += len(ctx) + sum(len(r) for r in rows if not any(o != r and o[: len(r)] == r for o in rows))
    return ours, theirs


def run_lm_eval(hflm, task_manager, name: str, batch_size: int) -> tuple[dict, list[list[float]], float, float]:
    """(metrics, per-item logliks in doc order, seconds of simple_evaluate, seconds inside HFLM.loglikelihood)."""
    from lm_eval import simple_evaluate

    spent = [0.0]
    original = type(hflm).loglikelihood

    def timed(requests, disable_tqdm=False):
        t = time.perf_counter()
        try:
            return original(hflm, requests, disable_tqdm=True)
        finally:
            spent[0] += time.perf_counter() - t

    hflm.loglikelihood = timed
    try:
        t0 = time.perf_counter()
        out = simple_evaluate(model=hflm, tasks=[name], task_manager=task_manager, batch_size=batch_size,
                              num_fewshot=0, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
        total = time.perf_counter() - t0
    finally:
        del hflm.loglikelihood
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    logliks = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    return out["results"][name], logliks, total, spent[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["arithmetic", "physical"], help="task names or files (diet)")
    p.add_argument("--limit", type=int, default=None, help="first N evaluation items per task (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="same for both sides (default 16)")
    p.add_argument("--max-length", type=int, default=2048, help="same for both sides (default 2048)")
    p.add_argument("--model-path", default="smollm2-135m",
                   help="diet model name or local model folder (default: the embedded smollm2-135m)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both sides (default 2)")
    p.add_argument("--repeat", type=int, default=1,
                   help="time each side this many times, alternating, and report the fastest (default 1)")
    p.add_argument("--keep-dir", default=None, help="write the lm-eval task files here (default: a temp dir)")
    a = p.parse_args(argv)

    ensure_lm_eval()
    load_start = os.getloadavg()[0]
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from diet.evaluate import EvalSettings, evaluate_task
    from diet.models import load_model
    from diet.settings import ModelSpec
    from diet.tasks import get_task

    torch.set_num_threads(a.threads)
    lm = load_model(ModelSpec(name=a.model_path), say=lambda m: print(m, file=sys.stderr))
    dtype = str(lm.model.dtype).removeprefix("torch.")
    device = str(next(lm.model.parameters()).device)
    folder = Path(a.keep_dir or tempfile.mkdtemp(prefix="diet-lm-eval-"))
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [get_task(t) for t in a.tasks]
    names = [write_lm_eval_task(t, t.evaluation[: a.limit] if a.limit else t.evaluation, folder) for t in tasks]

    t0 = time.perf_counter()
    hflm = HFLM(pretrained=lm.path, dtype=dtype, device=device, batch_size=a.batch_size, max_length=a.max_length)
    load_s = time.perf_counter() - t0
    task_manager = TaskManager(include_path=str(folder))
    settings = EvalSettings(limit=a.limit, batch_size=a.batch_size, max_length=a.max_length)

    with torch.inference_mode():  # warm both models up so neither pays first-call allocation in its timing
        lm.model(torch.tensor([[1, 2, 3]], device=device))
        hflm.model(torch.tensor([[1, 2, 3]], device=device))

    lm_eval_cmd = (f"lm_eval --model hf --model_args pretrained={lm.path},dtype={dtype},max_length={a.max_length} "
                   f"--tasks {','.join(names)} --include_path {folder} --batch_size {a.batch_size} --device {device}")
    print(f"command:  {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"lm-eval:  {lm_eval_cmd}   (run in-process via simple_evaluate; HFLM load {load_s:.1f} s, not timed)")
    import lm_eval

    print(f"versions: lm-eval {lm_eval.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}, dtype {dtype}, batch size {a.batch_size}, max_length {a.max_length}")
    header = (f"{'task':<14} {'n':>4} | {'acc ours':>8} {'lm-eval':>8} {'|Δ|pt':>6} | {'norm ours':>9} {'lm-eval':>8} "
              f"{'|Δ|pt':>6} | {'max|Δll|':>8} | {'ours s':>7} {'lm-eval s':>9} {'(total)':>8} {'ratio':>6} "
              f"{'tokens':>6}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    ratios = []
    for task, name in zip(tasks, names):
        ours_s, ll_s, total_s = [], [], []
        for _ in range(a.repeat):  # alternate the two sides; the minimum is robust to other jobs on the CPU
            ours = evaluate_task(lm.model, lm.tokenizer, task, settings)
            ours_s.append(ours.seconds)
            theirs, their_ll, tot, inner = run_lm_eval(hflm, task_manager, name, a.batch_size)
            ll_s.append(inner)
            total_s.append(tot)
        ours_s, ll_s, total_s = min(ours_s), min(ll_s), min(total_s)
        acc, norm = theirs["acc,none"], theirs["acc_norm,none"]
        d_acc, d_norm = 100 * abs(ours.acc - acc), 100 * abs(ours.acc_norm - norm)
        worst = max(worst, d_acc, d_norm)
        if len(their_ll) != ours.n:
            raise SystemExit(f"{task.name}: lm-eval scored {len(their_ll)} items, we scored {ours.n}")
        max_dll = max(abs(x - y) for mine, th in zip(ours.logliks, their_ll) for x, y in zip(mine, th))
        ratio = ours_s / ll_s
        ratios.append(ratio)
        mine, their_tokens = token_work(lm.tokenizer, task.evaluation[: a.limit])
        print(f"{task.name:<14} {ours.n:>4} | {ours.acc:>8.4f} {acc:>8.4f} {d_acc:>6.2f} | {ours.acc_norm:>9.4f} "
              f"{norm:>8.4f} {d_norm:>6.2f} | {max_dll:>8.1e} | {ours_s:>7.1f} {ll_s:>9.1f} {total_s:>8.1f} "
              f"{ratio:>6.2f} {mine / their_tokens:>6.2f}", flush=True)
    print(f"largest accuracy |Δ|: {worst:.2f} points (limit {MAX_DELTA_POINTS}); wall-time ratio ours ÷ lm-eval "
          f"scoring: {', '.join(f'{r:.2f}' for r in ratios)} (target ≤ 0.5); 'tokens' = positions run through "
          "the model, ours ÷ lm-eval's (the floor under the time ratio; see token_work)")
    print(f"lm-eval task files: {folder}; load average (1 min) {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs (other jobs slow both sides unevenly; "
          "see --repeat)")
    if worst > MAX_DELTA_POINTS:
        print("FAIL: accuracies disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
