"""Peak memory of real-size runs: `diet prune`, `diet profile` and `diet eval` on bf16 Llama-shaped checkpoints.

Why: a 1-9B model must be prunable within the memory its weights already take. This builds random-weight
checkpoints of about 0.1B, 0.5B and 1B parameters in bfloat16 (Llama shapes; the SmolLM2 tokenizer copied from the
embedded model's folder), runs each command in a fresh process with a private statistics cache, and reports

    ratio = (peak RSS of the run - peak RSS of a bare `import torch, transformers`) / checkpoint weight bytes

plus the dtype and size of the exported folder and the wall time. RSS is the kernel's own peak (ru_maxrss from
wait4), which counts the pages of memory-mapped weight files once they are read: nothing is left out.

    python bench/memory_scale.py --work /tmp/diet-memscale                       # every run, then the table
    python bench/memory_scale.py --work /tmp/diet-memscale --runs 1:prune,1:eval  # some runs (results accumulate)
    python bench/memory_scale.py --work /tmp/diet-memscale --table                # the table of what was measured

Targets at 1B: prune with default settings <= 1.3; with the interleaved dense-vs-pruned speed measurement <= 2.1;
profile alone and eval <= 1.15. Checkpoints and exports live under --work (never in the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # name -> Llama shape (hidden, MLP width, layers, attention heads, KV heads); vocab 49152, tied embeddings
    "0.1": (768, 3072, 8, 12, 4),
    "0.5": (1536, 6144, 14, 24, 8),
    "1": (2048, 8192, 16, 32, 8),
}
TASKS = "reading,facts"
RUNS = {  # run id -> (size, what, extra arguments)
    "0.1:prune": ("0.1", "prune", []),
    "0.5:prune": ("0.5", "prune", []),
    "1:prune": ("1", "prune", []),
    "1:prune-no-speed": ("1", "prune", ["--speed-repeats", "0"]),
    "1:prune-interleaved": ("1", "prune", ["--speed-interleaved"]),
    "1:prune-lstsq": ("1", "prune", ["--speed-repeats", "0", "--compensation", "lstsq", "--tasks",
                                     "reading,facts,physical", "--compensation-samples", "200"]),
    "1:profile": ("1", "profile", []),
    "1:eval": ("1", "eval", []),
}
WHAT = {
    "prune": "prune (default: dense timed, pruned in place, timed)",
    "prune-no-speed": "prune --speed-repeats 0 (no comparison)",
    "prune-interleaved": "prune --speed-interleaved (dense twin kept)",
    "prune-lstsq": "prune --compensation lstsq on 3 tasks x up to 200 texts (>= 6144 tokens) --speed-repeats 0",
    "profile": "profile only",
    "eval": "eval (--limit 16)",
}


def build(folder: Path, size: str) -> None:
    """A random bf16 Llama checkpoint of `size` with the embedded model's tokenizer (run in a child process)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from diet.models import ensure_embedded

    hidden, width, layers, heads, kv = SIZES[size]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=width, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=49152,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer = ensure_embedded()
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, tmp / f.name)
    os.replace(tmp, folder)


def peak_rss(cmd: list[str], env: dict) -> tuple[int, float, int, str]:
    """(peak RSS bytes, wall seconds, exit code, stderr tail) of `cmd` run in a fresh process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-600:]
    return usage.ru_maxrss * 1024, time.perf_counter() - t0, proc.returncode, tail


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors") if p.name != "mask.safetensors")


def export_facts(out: Path) -> dict:
    cfg = json.loads((out / "config.json").read_text())
    shards = sorted(p.name for p in out.glob("model*.safetensors"))
    return {"export_dtype": cfg.get("dtype") or cfg.get("torch_dtype"), "export_bytes": weight_bytes(out),
            "shards": len(shards), "index": (out / "model.safetensors.index.json").is_file()}


def run_one(run: str, work: Path, baseline: int) -> dict:
    size, what, extra = RUNS[run]
    folder = work / f"llama-{size}b-bf16"
    if not folder.is_dir():
        print(f"building {folder} ...", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--build", str(folder), "--size", size], check=True)
    env = {**os.environ, "DIET_CACHE": tempfile.mkdtemp(prefix="cache-", dir=work), "OMP_NUM_THREADS": "2",
           "TOKENIZERS_PARALLELISM": "false"}
    out = work / f"out-{run.replace(':', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    base = [sys.executable, "-m", "diet"]
    if what == "prune":
        cmd = base + ["prune", "--model", str(folder), "--tasks", TASKS, "--samples", "32", "--sparsity", "0.25",
                      "--out", str(out)]
    elif what == "profile":
        cmd = base + ["profile", "--model", str(folder), "--tasks", TASKS, "--samples", "32"]
    else:
        cmd = base + ["eval", "--model", str(folder), "--tasks", TASKS, "--limit", "16"]
    rss, seconds, code, tail = peak_rss(cmd + extra, env)
    shutil.rmtree(env["DIET_CACHE"], ignore_errors=True)
    if code != 0:
        raise SystemExit(f"{run} failed (exit {code}): {tail}")
    ckpt = weight_bytes(folder)
    row = {"run": run, "size": size, "what": WHAT[run.split(":")[1]], "command": " ".join(cmd[2:] + extra),
           "checkpoint_bytes": ckpt, "peak_rss": rss, "baseline_rss": baseline,
           "ratio": round((rss - baseline) / ckpt, 3), "seconds": round(seconds, 1)}
    if what == "prune":
        row.update(export_facts(out))
        shutil.rmtree(out, ignore_errors=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| checkpoint | run | peak RSS | over bare import ÷ checkpoint | export dtype | export size | time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        export = (f"{r['export_dtype']} | {r['export_bytes'] / 1e9:.2f} GB ({r['shards']} shard"
                  f"{'s + index' if r['index'] else ''})") if "export_dtype" in r else "— | —"
        lines.append(f"| {r['size']}B bf16, {r['checkpoint_bytes'] / 1e9:.2f} GB | {r['what']} | "
                     f"{r['peak_rss'] / 1e9:.2f} GB | **{r['ratio']:.2f}** | {export} | {r['seconds']:.0f} s |")
    base = rows[0]["baseline_rss"] if rows else 0
    lines.append(f"\nBare `import torch, transformers`: {base / 1e6:.0f} MB peak RSS (subtracted).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "diet-memscale"),
                    help="folder for the checkpoints, exports and results.json")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from: {', '.join(RUNS)}")
    ap.add_argument("--table", action="store_true", help="print the table of results.json and stop")
    ap.add_argument("--build", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.build:
        return build(Path(a.build), a.size)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.json"
    done = {r["run"]: r for r in json.loads(results.read_text())} if results.is_file() else {}
    if not a.table:
        baseline, _, _, _ = peak_rss([sys.executable, "-c", "import torch, transformers"], dict(os.environ))
        for run in [r.strip() for r in a.runs.split(",") if r.strip()]:
            if run not in RUNS:
                raise SystemExit(f"unknown run {run!r}: use {', '.join(RUNS)}")
            done[run] = run_one(run, work, baseline)
            print(json.dumps(done[run]), file=sys.stderr)
            results.write_text(json.dumps([done[r] for r in RUNS if r in done], indent=1))
    print(table([done[r] for r in RUNS if r in done]))


if __name__ == "__main__":
    main()
