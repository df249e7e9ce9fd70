"""llama.cpp speed of a pruned GGUF ÷ the dense GGUF of the same type, next to the ideal (the parameter ratio).

    flock /tmp/diet-torch.lock .venv/bin/python bench/gguf_speed.py [--outtype f32] [--repeats 5]
    flock /tmp/diet-torch.lock .venv/bin/python bench/gguf_speed.py --outtype q8_0,q8_0-f16down   # both in one run

Writes the dense and the pruned SmolLM2-135M GGUF (DIET voting threshold 2 of 3 tasks at 25%: per-layer widths, the
`deci` architecture; q8_0 rounds the widths to multiples of 32 first, q8_0-f16down keeps them exact), then measures
both in llama.cpp through llama-cpp-python, dense and pruned alternating, each run in its own child process (so its
peak RSS is its own): prompt processing (a 128-token prompt in one batch) and generation (64 tokens, one at a time,
greedy). Prints tokens/s, the speedup pruned ÷ dense, the ideal speedup (dense ÷ pruned parameters stored) and the
fraction of the ideal reached, and peak RSS ÷ file bytes for each model. Target: generation speedup ≥ 0.9 × ideal.
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

from diet.export.gguf.writer import OUTTYPES  # noqa: E402


def measure(path: str, n_prompt: int, n_gen: int, threads: int, queue) -> None:
    """In a child process: one timed run of `diet.measure.gguf_speed` (the model card's figure), and the
    child's own peak RSS."""
    from diet.measure import gguf_speed

    r = gguf_speed(path, repeats=1, n_prompt=n_prompt, n_gen=n_gen, threads=threads)
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


def pruned_mask(args):
    """The loaded model and the voted mask (exact widths)."""
    from diet.api import build_mask, profile_tasks
    from diet.models import load_model
    from diet.settings import MaskSettings, ProfileSettings

    lm = load_model("smollm2-135m", say=lambda m: None)
    stats = profile_tasks(lm, args.tasks.split(","), ProfileSettings(samples=args.samples))
    return lm, build_mask(stats, MaskSettings(sparsity=args.sparsity, merge="threshold", threshold=args.threshold))


def build_files(lm, result, outtype: str, round_to: int, folder: Path) -> dict:
    """Dense and pruned GGUF files of `outtype`; {name: (path, parameters stored, widths)}."""
    from diet.api import prune_copy, rounded
    from diet.export.gguf.writer import GGUFSettings, tokenizer_fields, write_gguf

    fields = tokenizer_fields(lm)
    settings = GGUFSettings(outtype=outtype)
    files = {}
    for name, model in (("dense", lm.model), ("pruned", prune_copy(lm, rounded(result, round_to)))):
        path = folder / f"{outtype}-{name}.gguf"
        info = write_gguf(model, fields, path, settings, name=name)
        files[name] = (path, info["params_stored"], info["ffn"])
    return files


def measure_pair(files: dict, args) -> dict:
    """Dense and pruned alternating, `args.repeats` times each; medians, speedups and memory ratios."""
    runs: dict[str, list[dict]] = {"dense": [], "pruned": []}
    for _ in range(args.repeats):
        for name in ("dense", "pruned"):
            runs[name].append(run_child(files[name][0], args))
    sizes = {n: files[n][0].stat().st_size for n in files}
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("prompt_tps", "gen_tps", "peak_rss")}
           for n, rs in runs.items()}
    ideal = files["dense"][1] / files["pruned"][1]
    report = {"params": {n: files[n][1] for n in files}, "file_bytes": sizes, "pruned_ffn": files["pruned"][2],
              "ideal_speedup": ideal, "median": med,
              "prompt_speedup": med["pruned"]["prompt_tps"] / med["dense"]["prompt_tps"],
              "gen_speedup": med["pruned"]["gen_tps"] / med["dense"]["gen_tps"],
              "peak_rss_over_file": {n: med[n]["peak_rss"] / sizes[n] for n in sizes}}
    report["gen_fraction_of_ideal"] = report["gen_speedup"] / ideal
    report["prompt_fraction_of_ideal"] = report["prompt_speedup"] / ideal
    return report


def print_report(outtype: str, round_to: int, r: dict, args) -> None:
    med, sizes, ideal = r["median"], r["file_bytes"], r["ideal_speedup"]
    print(f"SmolLM2-135M {outtype}, widths rounded to {round_to if round_to > 1 else 'exact'}, llama.cpp "
          f"{args.threads} threads, median of {args.repeats} alternating runs")
    print(f"parameters: dense {r['params']['dense']:,}  pruned {r['params']['pruned']:,}  ideal speedup "
          f"{ideal:.3f}x")
    for n in ("dense", "pruned"):
        print(f"{n:7s} prompt {med[n]['prompt_tps']:8.1f} tok/s  generation {med[n]['gen_tps']:7.1f} tok/s  "
              f"peak RSS / file {r['peak_rss_over_file'][n]:.2f} ({med[n]['peak_rss'] / 1e6:.0f} MB / "
              f"{sizes[n] / 1e6:.0f} MB)")
    print(f"speedup pruned/dense: prompt {r['prompt_speedup']:.3f}x ({r['prompt_fraction_of_ideal']:.2f} of ideal), "
          f"generation {r['gen_speedup']:.3f}x ({r['gen_fraction_of_ideal']:.2f} of ideal; target >= 0.90)",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outtype", default="f32", help=f"one or more of {', '.join(OUTTYPES)}, comma-separated "
                    "(each measured dense vs pruned in turn, in one run)")
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
    outtypes = args.outtype.split(",")
    unknown = sorted(set(outtypes) - set(OUTTYPES))
    if unknown:
        ap.error(f"unknown --outtype {', '.join(unknown)}: choose from {', '.join(OUTTYPES)}")
    lm, result = pruned_mask(args)
    reports = []
    for outtype in outtypes:  # one run: the types are measured under the same machine conditions
        round_to = args.round_to or (32 if outtype == "q8_0" else 1)
        with tempfile.TemporaryDirectory() as tmp:
            report = measure_pair(build_files(lm, result, outtype, round_to, Path(tmp)), args)
        report.update({"outtype": outtype, "round_to": round_to, "threads": args.threads, "repeats": args.repeats,
                       "n_prompt": args.prompt, "n_gen": args.gen})
        print_report(outtype, round_to, report, args)
        reports.append(report)
    if args.json:
        Path(args.json).write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=1))


if __name__ == "__main__":
    main()
