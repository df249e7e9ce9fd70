"""The same sweep in one process and on a local Ray cluster, side by side in one run (docs/scale.md).

The sweep: 3 methods (diet, wanda-sp, random) × 2 sparsities (0.25, 0.5) × 2 tasks (capitals, facts), 50 evaluation
items each, plus the dense model: 7 pruned-or-dense models × 2 tasks = 14 rows, on the embedded SmolLM2-135M in fp32.
The statistics (the two tasks and the shipped general text) are profiled once before any clock starts, and each side
then runs the sweep into its own empty sweep cache, so both evaluate every cell.

- cluster: `--ray local` with 2 single-thread workers (`ClusterSettings(cpus_per_worker=1)`), model load excluded
  (the pool is ready before the clock starts); every cell is a unit;
- in-process: `run_sweep` on a model loaded here, torch with 2 threads, model load excluded.

Printed: the wall-time ratio cluster ÷ in-process (goal ≤ 1.0 on 2 cores), the per-unit overhead (submit → start
plus result → cached) as a share of the units' own time (goal ≤ 5 %), peak memory per worker ÷ the model's weight
bytes (and the driver's, which holds no model), and whether the two tables are identical (seconds column aside).

    flock /tmp/diet-torch.lock .venv/bin/python bench/cluster.py [--rounds 1] [--limit 50]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diet import api  # noqa: E402
from diet.cache import ArtifactCache  # noqa: E402
from diet.cluster import disconnect  # noqa: E402
from diet.general import general_task  # noqa: E402
from diet.settings import ClusterSettings, ModelSpec, ProfileSettings  # noqa: E402
from diet.sweep import SweepSettings, run_sweep, sweep_on_cluster, table  # noqa: E402


def fresh_cache(base: Path, name: str) -> ArtifactCache:
    """A cache holding the profiled statistics and nothing else: the sweep evaluates every cell."""
    root = base / name
    shutil.copytree(base / "stats-only", root)
    return ArtifactCache(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="cluster then in-process, this many times (default 1)")
    ap.add_argument("--limit", type=int, default=50, help="evaluation items per task (default 50)")
    ap.add_argument("--samples", type=int, default=32, help="calibration texts per task, profiled once (default 32)")
    a = ap.parse_args()
    import torch

    from diet.models import load_model

    spec = ModelSpec(name="smollm2-135m", device="cpu")
    sweep = SweepSettings(methods=("diet", "wanda-sp", "random"), sparsities=(0.25, 0.5), tasks=("capitals", "facts"),
                          limit=a.limit, general="generated")
    ps = ProfileSettings(samples=a.samples)
    tmp = Path(tempfile.mkdtemp(prefix="diet-bench-cluster-"))
    try:
        base = ArtifactCache(tmp / "stats-only")
        lm = load_model(spec, say=lambda m: None)  # profiles once (not timed), then held for the in-process side
        api.profile_tasks(lm, [*sweep.tasks, general_task(sweep.general)], ps, cache=base)
        weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in lm.model.parameters()}.values())
        rows_c = rows_i = None
        for r in range(a.rounds):
            with api.cluster_pool(ClusterSettings(address="local", cpus_per_worker=1, local_cpus=2), spec,
                                  say=lambda m: print(m, file=sys.stderr)) as pool:
                cache = fresh_cache(tmp, f"cluster{r}")
                t0 = time.perf_counter()
                rows_c = sweep_on_cluster(pool, sweep, ps, cache=cache)
                wall_c = time.perf_counter() - t0
                info = pool.worker_info()
                timings = list(pool.timings)
            torch.set_num_threads(2)
            cache = fresh_cache(tmp, f"inproc{r}")
            t0 = time.perf_counter()
            rows_i = run_sweep(lm, sweep, ps, cache=cache)
            wall_i = time.perf_counter() - t0
            unit = sum(t.finished - t.started for t in timings)
            to_start = sum(t.started - t.submitted for t in timings)
            to_cache = sum(t.stored - t.finished for t in timings)
            print(f"round {r + 1}: {len(timings)} units (cells) on {len(info)} workers x "
                  f"{info[0]['threads']} thread; load average {os.getloadavg()[0]:.1f}")
            print(f"  wall time: cluster {wall_c:.1f} s, in-process (2 threads) {wall_i:.1f} s -> ratio "
                  f"{wall_c / wall_i:.2f} (goal <= 1.0)")
            print(f"  per-unit overhead: submit->start {to_start / len(timings) * 1e3:.0f} ms, result->cache "
                  f"{to_cache / len(timings) * 1e3:.0f} ms; {(to_start + to_cache) / unit:.2%} of unit time "
                  f"(mean unit {unit / len(timings):.2f} s) (goal <= 5%)")
            peaks = ", ".join(f"{i['name']} {i['peak_rss'] / weights:.2f}" for i in info)
            print(f"  peak memory / weight bytes ({weights / 2**20:.0f} MiB): workers {peaks}")
        print(f"driver peak memory / weight bytes (it also ran the in-process side): "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / weights:.2f}")
        same = table(rows_c).drop(columns=["seconds"]).equals(table(rows_i).drop(columns=["seconds"]))
        print(f"tables identical (every cell but seconds): {same}")
    finally:
        disconnect()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
