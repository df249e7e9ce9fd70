"""llama.cpp speed of a pruned GGUF ÷ the dense GGUF of the same type, next to the ideal (the parameter ratio).

    flock /tmp/diet-torch.lock .venv/bin/python bench/gguf_speed.py [--outtype f32] [--repeats 5]

Writes the dense and the pruned SmolLM2-135M GGUF (DIET voting threshold 2 of 3 tasks at 25%: per-layer widths, the
`deci` architecture; q8_0 rounds the widths to multiples of 32 first), then measures both in llama.cpp through
llama-cpp-python, dense and pruned alternating, each run in its own child process (so its peak RSS is its own):
prompt processing (a 128-token prompt in one batch) and generation (64 tokens, one at a time, greedy). Prints
tokens/s, the speedup pruned ÷ dense, the ideal speedup (dense ÷ pruned parameters stored) and the fraction of the
ideal reached, and peak RSS ÷ file bytes for each model. Target: generation speedup ≥ 0.9 × ideal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(path: str, n_prompt: int, n_gen: int, threads: int, queue) -> None:
    """In a child process: one timed run of `diet.gguf_export.measure_speed` (the model card's figure), and the
    child's own peak RSS."""
    from diet.gguf_export import measure_speed

    r = measure_speed(path, repeats=1, n_prompt=n_prompt, n_gen=n_gen, threads=threads)
    # VmHWM, not getrusage: Linux hands a spawned child its parent's ru_maxrss (here a process with torch loaded)
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    queue.put({"prompt_tps": r["prompt_tokens_per_s"], "gen_tps": r["gen_tokens_per_s"], "peak_rss": peak})


def run_child(path: Path, args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=measure, args=(str(path), args.prompt, args.gen, args.threads, q))
    p.start()
    while True:  # a child that dies (an error is printed) must not leave us waiting
        try:
            out = q.get(timeout=5)
            break
        except Exception:
            if not p.is_alive():
                raise SystemExit(f"the measurement of {path.name} failed (exit code {p.exitcode})") from None
    p.join()
    return out


def build_files(args, folder: Path) -> dict:
    """Dense and pruned GGUF files of `args.outtype`; {name: (path, parameters stored, widths)}."""
    from diet.api import build_mask, profile_tasks, prune_copy, rounded
    from diet.gguf_export import GGUFSettings, tokenizer_fields, write_gguf
    from diet.models import load_model
    from diet.settings import MaskSettings, ProfileSettings

    lm = load_model("smollm2-135m", say=lambda m: None)
    stats = profile_tasks(lm, args.tasks.split(","), ProfileSettings(samples=args.samples))
    result = build_mask(stats, MaskSettings(sparsity=args.sparsity, merge="threshold", threshold=args.threshold))
    result = rounded(result, args.round_to or (32 if args.outtype == "q8_0" else 1))
    fields = tokenizer_fields(lm)
    settings = GGUFSettings(outtype=args.outtype)
    files = {}
    for name, model in (("dense", lm.model), ("pruned", prune_copy(lm, result))):
        path = folder / f"{name}.gguf"
        info = write_gguf(model, fields, path, settings, name=name)
        files[name] = (path, info["params_stored"], info["ffn"])
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q8_0-f16down"])
    ap.add_argument("--repeats", type=int, default=5, help="alternating dense/pruned runs (median reported)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (one batch)")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens (one at a time)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", default="arithmetic,capitals,facts")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--sparsity", type=float, default=0.25)
    ap.add_argument("--threshold", type=int, default=2)
    ap.add_argument("--round-to", type=int, default=None, choices=[1, 32, 64, 128, 256],
                    help="round the pruned widths first (default: 32 for q8_0, else 1 = exact)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        files = build_files(args, Path(tmp))
        runs: dict[str, list[dict]] = {"dense": [], "pruned": []}
        for _ in range(args.repeats):
            for name in ("dense", "pruned"):
                runs[name].append(run_child(files[name][0], args))
        sizes = {n: files[n][0].stat().st_size for n in files}
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("prompt_tps", "gen_tps", "peak_rss")}
           for n, rs in runs.items()}
    ideal = files["dense"][1] / files["pruned"][1]
    report = {"outtype": args.outtype, "round_to": args.round_to, "threads": args.threads, "repeats": args.repeats,
              "n_prompt": args.prompt,
              "n_gen": args.gen, "params": {n: files[n][1] for n in files}, "file_bytes": sizes,
              "pruned_ffn": files["pruned"][2], "ideal_speedup": ideal, "median": med,
              "prompt_speedup": med["pruned"]["prompt_tps"] / med["dense"]["prompt_tps"],
              "gen_speedup": med["pruned"]["gen_tps"] / med["dense"]["gen_tps"],
              "peak_rss_over_file": {n: med[n]["peak_rss"] / sizes[n] for n in sizes}}
    report["gen_fraction_of_ideal"] = report["gen_speedup"] / ideal
    report["prompt_fraction_of_ideal"] = report["prompt_speedup"] / ideal
    print(f"SmolLM2-135M {args.outtype}, widths rounded to {args.round_to or 'exact'}, llama.cpp {args.threads} "
          f"threads, median of {args.repeats} alternating runs")
    print(f"parameters: dense {files['dense'][1]:,}  pruned {files['pruned'][1]:,}  ideal speedup {ideal:.3f}x")
    for n in ("dense", "pruned"):
        print(f"{n:7s} prompt {med[n]['prompt_tps']:8.1f} tok/s  generation {med[n]['gen_tps']:7.1f} tok/s  "
              f"peak RSS / file {report['peak_rss_over_file'][n]:.2f} ({med[n]['peak_rss'] / 1e6:.0f} MB / "
              f"{sizes[n] / 1e6:.0f} MB)")
    print(f"speedup pruned/dense: prompt {report['prompt_speedup']:.3f}x ({report['prompt_fraction_of_ideal']:.2f} "
          f"of ideal), generation {report['gen_speedup']:.3f}x ({report['gen_fraction_of_ideal']:.2f} of ideal; "
          "target >= 0.90)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
