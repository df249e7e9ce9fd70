"""How long one slider move on the Masks page takes at Gemma-2-9B scale: re-mask + statistics, then the figures.

Synthetic statistics shaped like Gemma-2-9B's MLP (42 layers × 14336 channels) for 7 tasks (the paper's seven
benchmarks). No model is involved: the Masks page never runs one. Prints the median of several repeats of each
step, the totals, and the targets (≤ 50 ms for vote + statistics, ≤ 150 ms for the figures).

    PYTHONPATH=. .venv/bin/python bench/ui_latency.py [--repeats 7] [--layers 42] [--width 14336] [--tasks 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from diet import masks as M
from diet import viz
from diet.api import build_mask, split_half_overlap
from diet.profile import Stats
from diet.settings import MaskSettings

VOTE_TARGET_MS = 50.0
FIGURES_TARGET_MS = 150.0


def synthetic_stats(tasks: int, layers: int, width: int, seed: int = 0) -> dict[str, Stats]:
    """Per-task sums with a shared component (tasks agree partly), as the profiler stores them (fp32, 2 halves)."""
    rng = np.random.default_rng(seed)
    shared = rng.gamma(2.0, 1.0, (layers, width)).astype(np.float32)
    out = {}
    for t in range(tasks):
        own = rng.gamma(2.0, 1.0, (2, layers, width)).astype(np.float32)
        abs_sum = (shared + own) * 1000
        meta = {"shape": {"family": "gemma2", "unit": "mlp", "layers": layers, "widths": [width] * layers,
                          "params_per_unit": [3 * 3584] * layers, "total_params": 9_241_705_984}}
        out[f"task{t}"] = Stats(abs_sum, abs_sum * 1.3, abs_sum * 0.1, np.array([2000.0, 2000.0]), meta)
    return out


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (imports, allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layers", type=int, default=42)
    ap.add_argument("--width", type=int, default=14336)
    ap.add_argument("--tasks", type=int, default=7)
    a = ap.parse_args()
    stats = synthetic_stats(a.tasks, a.layers, a.width)
    names = list(stats)
    settings = MaskSettings(sparsity=0.3)
    print(f"synthetic statistics: {a.tasks} tasks × {a.layers} layers × {a.width} channels; "
          f"median of {a.repeats} runs each\n")

    # ---- vote + statistics: what build_mask does on every slider move
    scores = np.stack([M.scores_from(stats[n], settings.score) for n in names])
    tm, mask = M.build_masks(scores, settings)
    steps = {
        "scores_from (all tasks)": lambda: [M.scores_from(stats[n], settings.score) for n in names],
        "build_masks (task top-k + vote)": lambda: M.build_masks(scores, settings),
        "  task_mask (all tasks)": lambda: [M.task_mask(s, settings) for s in scores],
        "  merge (vote, exact budget)": lambda: M.merge(tm, scores, settings),
        "votes + histogram": lambda: M.votes_histogram(M.votes(tm), a.tasks),
        "jaccard_matrix": lambda: M.jaccard_matrix(tm),
        "independence_expectations": lambda: M.independence_expectations(tm),
        "param_summary + kept_per_layer": lambda: (M.param_summary(mask, stats[names[0]].meta["shape"]),
                                                   M.kept_per_layer(mask)),
    }
    print("vote + statistics")
    for label, fn in steps.items():
        print(f"  {label:38s} {median_ms(fn, a.repeats):8.1f} ms")
    def vote_and_stats() -> None:  # build_mask minus scores_from (the scores change only with the score choice)
        t, merged = M.build_masks(scores, settings)
        v = M.votes(t)
        M.param_summary(merged, stats[names[0]].meta["shape"]), M.kept_per_layer(merged)
        M.votes_histogram(v, a.tasks), M.jaccard_matrix(t), M.independence_expectations(t)

    cached_ms = median_ms(vote_and_stats, a.repeats)
    print(f"  {'= vote + statistics from cached scores':38s} {cached_ms:8.1f} ms   target ≤ {VOTE_TARGET_MS:.0f} ms "
          f"-> {'OK' if cached_ms <= VOTE_TARGET_MS else 'OVER'} (×{cached_ms / VOTE_TARGET_MS:.2f} of target)")
    vote_ms = median_ms(lambda: build_mask(stats, settings), a.repeats)
    print(f"  {'= build_mask (what the page calls)':38s} {vote_ms:8.1f} ms   (includes scores_from for every task)")
    split_ms = median_ms(lambda: [split_half_overlap(stats[n], settings) for n in names], a.repeats)
    print(f"  {'split_half_overlap (all tasks; cached per sparsity in the app)':38s} {split_ms:8.1f} ms\n")

    # ---- figures: what the Masks page draws after a slider move (score order is cached in the app)
    result = build_mask(stats, settings)
    norm = np.stack([M.normalise(s) for s in scores])
    mean_norm = norm.mean(0)
    order = viz.order_by(mean_norm)
    refs_split = {n: 0.9 for n in names}
    J = np.asarray(result.summary["jaccard"])
    inter = M.intersections(result.task_masks)
    combos = sorted(inter, key=lambda c: (-inter[c], len(c), c))[: viz.MAX_UPSET_BARS]
    figures = {
        "kept_overview (binned, sorted)": lambda: viz.kept_overview(result.mask, "merged", order),
        "layer_strip (8 rows × 14336)": lambda: viz.layer_strip(
            3, {"merged": result.mask[3], **{n: result.task_masks[i, 3] for i, n in enumerate(names)}},
            mean_norm[3], sort=True),
        "votes_map (binned)": lambda: viz.votes_map(result.votes, a.tasks),
        "jaccard_matrix + chance": lambda: viz.jaccard_matrix(J, names, viz.chance_matrix(result.task_masks)),
        "references": lambda: viz.references(names, refs_split, [0.5] * a.tasks, 0.4),
        "jaccard_layers (21 pairs)": lambda: viz.jaccard_layers(result.task_masks, names, 0.9),
        "upset (intersections + expected)": lambda: viz.upset(
            M.intersections(result.task_masks), names, viz.expected_intersections(result.task_masks, combos)),
        "kept_per_layer": lambda: viz.kept_per_layer(M.kept_per_layer(result.mask), result.shape["widths"],
                                                     result.task_masks.sum(-1), names),
        "params_breakdown": lambda: viz.params_breakdown(result.summary),
    }
    print("figures (build / build + JSON serialisation as Streamlit sends it)")
    build_total = json_total = 0.0
    for label, fn in figures.items():
        b = median_ms(fn, a.repeats)
        j = median_ms(lambda fn=fn: fn().to_json(), a.repeats)
        build_total += b
        json_total += j
        print(f"  {label:38s} {b:8.1f} ms {j:8.1f} ms")
    print(f"  {'= all figures of the page':38s} {build_total:8.1f} ms {json_total:8.1f} ms   target ≤ "
          f"{FIGURES_TARGET_MS:.0f} ms (build) -> {'OK' if build_total <= FIGURES_TARGET_MS else 'OVER'} "
          f"(×{build_total / FIGURES_TARGET_MS:.2f} of target)")
    print(f"\none slider move, end to end (build_mask + figures + JSON): {vote_ms + json_total:.0f} ms")


if __name__ == "__main__":
    main()
