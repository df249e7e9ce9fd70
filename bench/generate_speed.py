"""Is generation in the app as fast as from the CLI? Time to first token and tokens/s, dense and pruned, both ways
in one run on the embedded SmolLM2-135M; then the pruned model's tokens/s ÷ the dense one's next to its parameter
ratio, and peak memory ÷ weight bytes.

CLI: `python -m diet generate --json --compare MASK` in a fresh process per round (dense, then the same model
pruned in place: one model in memory); its numbers are the ones the engine records in each answer (`ttft`,
`tokens_per_second`), so the model load is excluded. Its peak memory is the child's max RSS (GNU time).
In-app: the Try-it panel's job body (`pages._work.generate_job`) run through the app's job machinery — a JobRunner
behind the server's TorchGate (torch threads sized to the free cores, as the app does) — while a poller thread
reads the job's snapshot every `pages._try.STREAM_POLL_SECONDS`, as the page's streaming fragment does. No browser:
what the browser adds is the page's redraws, measured for the other jobs by bench/app_job_speed.py. The pruned
copy is held next to the dense model, as in the app (its peak memory is this process's max RSS).
Rounds alternate CLI, in-app, and the CLI again at the app's torch thread count ("cli@app": OMP_NUM_THREADS), since
the app sizes its threads to the cores free when the job starts (diet/jobs.py) and the CLI takes all cores: on a
shared machine that alone can make either side several times slower. A fresh CLI process's first forward pass also
pays one-time costs the warm app model does not (they fall in the dense time to first token). Medians are printed.
Every timed run starts on a settled machine: the benchmark waits the core monitor's history + window (`settle`)
before each one. Without the wait the app's job read the benchmark's own just-finished CLI process as a sustained
load and took 1 thread (pruned time to first token 1.46-1.55x the CLI's; with 2 threads it was below the CLI's) -
a load no user of the app has, since nothing else of ours runs beside it.
Same prompt, greedy, so every way generates the same tokens (checked).

    flock /tmp/diet-torch.lock .venv/bin/python bench/generate_speed.py [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a long story about a brave cat who sails around the world."
TASKS = ("arithmetic", "capitals")
TARGET = 1.3
TIME = "/usr/bin/time"  # GNU time: the CLI process's own peak RSS


def settle() -> None:
    """Wait until the load of the previous timed run has left the app's core monitor (diet/gate.py): its figure is
    the freest window of the last `history` seconds, so a process that just ended still counts for that long."""
    from diet.gate import core_monitor

    m = core_monitor()
    time.sleep(m.history + m.window)


def cli_round(mask: Path, tokens: int, threads: int | None = None) -> dict:
    """One `diet generate --compare` process; `threads`: OMP_NUM_THREADS for it (None: torch's default, all cores).

    Its peak memory comes from /usr/bin/time (%M), not from getrusage(RUSAGE_CHILDREN): a child forked straight from
    this process inherits this process's resident size as its starting high-water mark, so that figure was this
    process's peak, not the CLI's (both read 1640 MiB in the first runs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    out = subprocess.run([TIME, "-f", "peak_kib=%M", sys.executable, "-m", "diet", "generate", "--prompt", PROMPT,
                          "--max-new-tokens", str(tokens), "--compare", str(mask), "--json"], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True)
    answers = json.loads(out.stdout)["answers"]
    peak = int(out.stderr.rsplit("peak_kib=", 1)[1].split()[0]) * 1024
    return {**{g["label"]: g for g in answers}, "peak": peak}


def app_round(lm, result, tokens: int, held: dict) -> dict:
    from diet.gate import TorchGate
    from diet.generate import GenerateSettings
    from diet.jobs import JobRunner
    from pages._try import STREAM_POLL_SECONDS
    from pages._work import generate_job

    gate = TorchGate()
    runner = JobRunner(gate)
    job = runner.start("generate", "bench", generate_job(lm, result, PROMPT, GenerateSettings(max_new_tokens=tokens),
                                                         held))
    reads = [0]

    def poll() -> None:  # the page's fragment: a snapshot every STREAM_POLL_SECONDS, its partial answers read
        while not job.snapshot().finished:
            snap = job.snapshot()
            for g in (snap.partial or {}).values():
                _ = g.text, g.tokens_per_second
            reads[0] += 1
            time.sleep(STREAM_POLL_SECONDS)

    t = threading.Thread(target=poll)
    t.start()
    job.wait()
    t.join()
    if job.error:
        raise RuntimeError(job.error)
    return {**{k: g.to_dict() for k, g in job.result["answers"].items()}, "threads": gate.last_threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()

    from diet.api import build_mask, profile_tasks
    from diet.export.maskfile import write_mask_files
    from diet.models import count_parameters, load_model
    from diet.settings import MaskSettings, ProfileSettings

    lm = load_model("smollm2-135m", say=lambda m: None)
    stats = profile_tasks(lm, list(TASKS), ProfileSettings(samples=32))
    result = build_mask(stats, MaskSettings(sparsity=0.3))
    mask_dir = Path(tempfile.mkdtemp(prefix="diet-gen-bench-"))
    write_mask_files(mask_dir, result, {"model": lm.spec.name, "model_identity": lm.identity})
    held: dict = {}
    runs: dict = {"cli": [], "app": [], "cli@app": []}
    for r in range(a.rounds):
        settle()
        runs["cli"].append(cli_round(mask_dir / "mask.json", a.tokens))
        settle()
        runs["app"].append(app_round(lm, result, a.tokens, held))
        settle()
        runs["cli@app"].append(cli_round(mask_dir / "mask.json", a.tokens, runs["app"][-1]["threads"]))
        print(f"round {r + 1} (app: {runs['app'][-1]['threads']} torch thread(s); CLI: torch's default, "
              f"{os.cpu_count()}; cli@app: the app's count): " + "; ".join(
                  f"{way} {lab} ttft {runs[way][-1][lab]['ttft']:.3f} s, "
                  f"{runs[way][-1][lab]['tokens_per_second']:.1f} tok/s ({runs[way][-1][lab]['new_tokens']} tokens)"
                  for way in runs for lab in ("dense", "pruned")), flush=True)
    dense_params = count_parameters(lm.model)
    pruned_params = count_parameters(held["model"])
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    cli_peak = max(x["peak"] for way in ("cli", "cli@app") for x in runs[way])
    app_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def med(way: str, lab: str, key: str) -> float:
        return statistics.median(x[lab][key] for x in runs[way])

    same = all(x["dense"]["token_ids"] == y["dense"]["token_ids"] and x["pruned"]["token_ids"] ==
               y["pruned"]["token_ids"] for x, y in zip(runs["cli"] + runs["cli@app"], runs["app"] * 2))
    print(f"\nSmolLM2-135M, {a.tokens} new tokens, greedy, median of {a.rounds} rounds; {os.cpu_count()} cores; "
          f"same tokens both ways: {same}")
    print(f"{'':8} {'':7} {'ttft CLI':>9} {'ttft app':>9} {'app÷CLI':>8}   {'tok/s CLI':>9} {'tok/s app':>9} "
          f"{'CLI÷app':>8}")
    for cli in ("cli", "cli@app"):
        for lab in ("dense", "pruned"):
            tc, ta = med(cli, lab, "ttft"), med("app", lab, "ttft")
            sc, sa = med(cli, lab, "tokens_per_second"), med("app", lab, "tokens_per_second")
            print(f"{lab:8} {cli:7} {tc:9.3f} {ta:9.3f} {ta / tc:8.2f}   {sc:9.1f} {sa:9.1f} {sc / sa:8.2f}")
    print(f"goal: in-app ÷ CLI ≤ {TARGET} (time to first token; for tokens/s the CLI ÷ app, the same slowdown)")
    for way in runs:
        ratio = med(way, "pruned", "tokens_per_second") / med(way, "dense", "tokens_per_second")
        print(f"{way}: pruned ÷ dense tokens/s = {ratio:.2f}; parameters pruned ÷ dense = "
              f"{pruned_params / dense_params:.3f} ({pruned_params:,} / {dense_params:,})")
    print(f"peak memory ÷ weight bytes ({weight_bytes / 2**20:.0f} MiB of weights): largest CLI process "
          f"{cli_peak / 2**20:.0f} MiB = {cli_peak / weight_bytes:.2f} (dense, then pruned in place); this process "
          f"(app path: dense + pruned copy held, after profiling) {app_peak / 2**20:.0f} MiB = "
          f"{app_peak / weight_bytes:.2f}")


if __name__ == "__main__":
    main()
