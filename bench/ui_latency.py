"""How long one slider move on the Masks page takes at Gemma-2-9B scale, now and with the previous implementation.

Synthetic statistics shaped like Gemma-2-9B's MLP (42 layers × 14336 channels) for 7 tasks (the paper's seven
benchmarks). No model is involved: the Masks page never runs one. One slider move (the sparsity) reruns the page:
the mask and its statistics, the split-half references of the Overlap tab, every figure of the four tabs (Streamlit
renders every tab) and what Streamlit does with each figure before it is sent (`st.plotly_chart`: the figure as a
dict, its JSON, the hash of that JSON for the element id). What the page computes once per statistics and score (no
slider changes it: scores, per-unit ranks, the score order of the overview) is timed separately.

"previous" is the code before the ranks: diet/masks.py at git revision PREVIOUS, with build_mask and
split_half_overlap exactly as diet/api.py runs them, and the page's figures (diet/viz.py and who-loses-in-the-merge
at PREVIOUS). Both paths are first checked to give the same masks, summaries and split-half overlaps on random cases
(and on the big one), and the same figures (JSON values) on the big one. The figure rows add a middle column,
"FIGURES_BEFORE": diet/viz.py and diet.methods.who_loses at that revision (figures built trace by trace with
add_trace/update_layout, before they were built in one validated construction each), with the page's other code as
it is now. Targets: vote + statistics ≤ 50 ms, one slider move end to end ≤ 150 ms (medians).

The figures carry the plotly template the app gives them: `import streamlit` makes Streamlit's theme plotly's
default template, as in the running app (without it they would carry plotly's own, about twice the JSON).

    .venv/bin/python bench/ui_latency.py [--repeats 7] [--layers 42] [--width 14336] [--tasks 7]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import plotly.io
import plotly.tools
import streamlit  # noqa: F401  (makes Streamlit's theme plotly's default template, as in the app)

from diet import api as W
from diet import masks as M
from diet import report as R
from diet import viz
from diet.api import MaskResult
from diet.methods import unit_scores
from diet.profile import Stats
from diet.settings import MaskSettings

PREVIOUS = "d0ea84e"  # the last commit before the ranked masks (diet/masks.py as it was)
FIGURES_BEFORE = "5616295"  # the last commit before the figures were built in one construction each
VOTE_TARGET_MS = 50.0
MOVE_TARGET_MS = 150.0
ROOT = Path(__file__).resolve().parent.parent


def previous(path: str, rev: str = PREVIOUS):
    """A module of the repository at `rev` (e.g. diet/masks.py), imported as its own module."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    spec = importlib.util.spec_from_loader(f"previous_{rev}_" + Path(path).stem, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def previous_masks():
    return previous("diet/masks.py")


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


def previous_build_mask(PM, stats: dict, settings: MaskSettings) -> MaskResult:
    """diet.api.build_mask on the previous mask module."""
    names = list(stats)
    scores = np.stack([unit_scores(stats[n], settings.score) for n in names])
    task_masks, mask = PM.build_masks(scores, settings)
    v = PM.votes(task_masks)
    shape = stats[names[0]].shape
    summary = {**PM.param_summary(mask, shape.to_dict()), "kept_per_layer": PM.kept_per_layer(mask).tolist(),
               "votes_histogram": PM.votes_histogram(v, len(names)).tolist(),
               "jaccard": PM.jaccard_matrix(task_masks).round(4).tolist(), **PM.independence_expectations(task_masks)}
    return MaskResult(names, settings, task_masks, mask, v, shape, summary, ranking=PM.vote_ranking(v, scores))


def previous_split_halves(PM, result: MaskResult, stats: dict) -> dict:
    """diet.api.split_half_overlap for each task, on the previous mask module."""
    out = {}
    for n in result.tasks:
        a = PM.task_mask(unit_scores(stats[n].half(0), result.settings.score), result.settings)
        b = PM.task_mask(unit_scores(stats[n].half(1), result.settings.score), result.settings)
        out[n] = float(PM.jaccard_matrix(np.stack([a, b]))[0, 1])
    return out


def check_same(PM, stats: dict, settings: MaskSettings, ranked, halves) -> None:
    want, got = previous_build_mask(PM, stats, settings), W.build_mask(stats, settings, ranked)
    for field in ("task_masks", "mask", "votes", "ranking"):
        if not np.array_equal(getattr(want, field), getattr(got, field)):
            raise SystemExit(f"error: {field} differs from the previous implementation at {settings}")
    # every number the previous summary had, equal; the summary now also names the method and its settings
    # (provenance that diet.methods.summarize adds for every method), which the previous one did not carry
    if want.summary != {k: got.summary.get(k) for k in want.summary}:
        raise SystemExit(f"error: the summary differs from the previous implementation at {settings}")
    if previous_split_halves(PM, want, stats) != R.split_halves(got, stats, halves):
        raise SystemExit(f"error: the split-half overlaps differ from the previous implementation at {settings}")


def random_checks(PM, cases: int = 60) -> None:
    rng = np.random.default_rng(1)
    for case in range(cases):
        stats = synthetic_stats(int(rng.integers(1, 8)), int(rng.integers(1, 6)), int(rng.integers(4, 400)), case)
        if case % 3 == 0:  # exact ties: scores from a handful of values
            for s in stats.values():
                s.abs_sum[:] = np.round(s.abs_sum / 2000.0) * 1000.0
        for score in ("mean_abs", "rms"):
            ranked, halves = W.ranked_scores(stats, score), R.half_ranks(stats, score)
            for sparsity in (0.0, 0.13, 0.5, 0.9):
                settings = MaskSettings(sparsity=sparsity, score=score, merge=str(rng.choice(["budget", "threshold"])),
                                        allocation=str(rng.choice(["layer", "global"])), min_keep=0.02)
                check_same(PM, stats, settings, ranked, halves)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (imports, allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def streamlit_sends(fig) -> str:
    """What st.plotly_chart does with a figure before sending it: a dict, its JSON, the JSON's hash (element id)."""
    spec = plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True),
                             validate=False)
    hashlib.md5(spec.encode(), usedforsecurity=False).hexdigest()
    return spec


def figure_builders(result: MaskResult, stats: dict, split: dict, mean: np.ndarray, order: np.ndarray,
                    ranked, viz=viz, who_loses_view=None) -> dict:
    """Every figure the Masks page draws (DIET, all four tabs), as the page builds them: {label: build}.
    `mean`: the tasks' mean normalised score (L, I), `order` its per-layer order (the page keeps both).
    `viz` and `who_loses_view`: an earlier implementation's, for the "previous" columns."""
    names = result.tasks
    layer = min(3, result.mask.shape[0] - 1)
    rows = {"merged": result.mask[layer], **{n: result.task_masks[i, layer] for i, n in enumerate(names)}}

    def references():  # the page computes the references once per move (it also passes them the chance matrix)
        refs = R.overlap_refs(result, stats, split)
        return viz.references(names, refs.split_half, refs.mean_jaccard, refs.chance)

    def upset():  # pages/_work.upset_figure, on this viz module
        inter = M.intersections(result.task_masks)
        combos = sorted(inter, key=lambda c: (-inter[c], len(c), c))[: viz.MAX_UPSET_BARS]
        return viz.upset(inter, names, viz.expected_intersections(result.task_masks, combos))

    out = {
        "kept_overview (binned, sorted)": lambda: viz.kept_overview(result.mask, "Merged mask: kept channels", order),
        "layer_strip (8 rows × width)": lambda: viz.layer_strip(layer, rows, mean[layer], sort=True),
        "votes_map (binned)": lambda: viz.votes_map(result.votes, len(names)),
        "jaccard_matrix + chance": lambda: viz.jaccard_matrix(np.asarray(result.summary["jaccard"]), names,
                                                              viz.chance_matrix(result.task_masks)),
        "references (+ overlap_refs)": references,
        "jaccard_layers (all pairs)": lambda: viz.jaccard_layers(result.task_masks, names,
                                                                 float(np.mean(list(split.values())))),
        "upset (intersections + expected)": upset,
        "kept_per_layer": lambda: viz.kept_per_layer(M.kept_per_layer(result.mask), result.shape.widths,
                                                     result.task_masks.sum(-1), names),
        "params_breakdown": lambda: viz.params_breakdown(result.summary),
    }
    if who_loses_view is not None:  # the Overlap tab's "who loses in the merge", as it was
        out["who_loses (own masks, pooled, random)"] = lambda: who_loses_view(result, stats)
    else:
        wl = R.who_loses_ranks(stats, result.settings.score, ranked)
        out["who_loses (own masks, pooled, random)"] = lambda: R.who_loses_view(result, stats, wl)[0]
    return out


def previous_who_loses(PV, PMeth):
    """pages/_work.who_loses_view at PREVIOUS: diet.methods.who_loses and viz.who_loses as they were."""
    from diet.methods import MethodInputs, run_method

    def view(result: MaskResult, stats: dict):
        inputs = MethodInputs(stats, shape=result.shape)
        settings = replace(result.settings, merge="budget")
        masks = {"DIET": result.mask, "pooled": run_method("pooled", inputs, settings).mask,
                 "random": run_method("random", inputs, settings).mask}
        return PV.who_loses(PMeth.who_loses(inputs, settings, masks))

    return view


def before_who_loses(PV, PMeth, ranks: dict):
    """diet.report.who_loses_view's path for a DIET mask (ranks kept by the page) on diet.methods.who_loses and
    viz.who_loses at FIGURES_BEFORE."""
    from diet.methods import MethodInputs

    def view(result: MaskResult, stats: dict):
        settings = replace(result.settings, merge="budget")
        k = M.keep_count(result.mask.shape[-1], settings.sparsity)
        masks = {"DIET": result.mask, "pooled": ranks["pooled"] < k, "random": ranks["random"] < k}
        return PV.who_loses(PMeth.who_loses(MethodInputs(stats, shape=result.shape), settings, masks,
                                            own=result.task_masks, norm=ranks["norm"]))

    return view


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layers", type=int, default=42)
    ap.add_argument("--width", type=int, default=14336)
    ap.add_argument("--tasks", type=int, default=7)
    a = ap.parse_args()
    PM = previous_masks()
    random_checks(PM)
    stats = synthetic_stats(a.tasks, a.layers, a.width)
    settings = MaskSettings(sparsity=0.3)
    once = {"ranked scores (scores, ranks, tie)": lambda: W.ranked_scores(stats, settings.score),
            "split-half ranks": lambda: R.half_ranks(stats, settings.score),
            "who-loses ranks (pooled, random, normalised)": lambda: R.who_loses_ranks(stats, settings.score, ranked),
            "normalised scores, their mean, score order": lambda: viz.order_by(
                R.task_scores(stats, list(stats), "mean_abs").mean(0))}
    ranked, halves = W.ranked_scores(stats, settings.score), R.half_ranks(stats, settings.score)
    check_same(PM, stats, settings, ranked, halves)
    print(f"synthetic statistics: {a.tasks} tasks × {a.layers} layers × {a.width} channels; median of {a.repeats} "
          f"runs each; previous = diet/masks.py at {PREVIOUS}. Same masks, summaries and split-half overlaps as the "
          "previous implementation: checked on 480 random cases (ties included) and on this one.\n")
    print("once per statistics and score (no slider changes these; the page keeps them)")
    for label, fn in once.items():
        print(f"  {label:44s} {median_ms(fn, 3):8.1f} ms")

    norm = R.task_scores(stats, list(stats), settings.score)
    order = viz.order_by(norm.mean(0))
    moves = [replace(settings, sparsity=s) for s in (0.3, 0.31)]  # alternate: nothing is cached across a move
    i = [0]

    def nxt() -> MaskSettings:
        i[0] += 1
        return moves[i[0] % 2]

    prev = {"vote + statistics (build_mask)": lambda: previous_build_mask(PM, stats, nxt()),
            "split-half references": lambda: previous_split_halves(PM, previous_build_mask(PM, stats, nxt()), stats)}
    cur = {"vote + statistics (build_mask)": lambda: W.build_mask(stats, nxt(), ranked),
           "split-half references": lambda: R.split_halves(W.build_mask(stats, nxt(), ranked), stats, halves)}
    timed = {}
    for label in prev:
        now = median_ms(cur[label], a.repeats)
        timed[label] = (median_ms(prev[label], a.repeats), now, now)  # FIGURES_BEFORE: this code as it is now
    # the split-half line above includes a build_mask: count only its own share
    timed["split-half references"] = tuple(s - v for s, v in zip(timed["split-half references"],
                                                                 timed["vote + statistics (build_mask)"]))
    result = W.build_mask(stats, settings, ranked)
    split = R.split_halves(result, stats, halves)
    mean = norm.mean(0)
    PV, BV = previous("diet/viz.py"), previous("diet/viz.py", FIGURES_BEFORE)
    variants = {  # column: {figure: build}
        "previous": figure_builders(result, stats, split, mean, order, None, PV,
                                    previous_who_loses(PV, previous("diet/methods.py"))),
        FIGURES_BEFORE: figure_builders(result, stats, split, mean, order, None, BV, before_who_loses(
            BV, previous("diet/methods.py", FIGURES_BEFORE), R.who_loses_ranks(stats, settings.score, ranked))),
        "now": figure_builders(result, stats, split, mean, order, ranked)}
    figs = {col: {label: build() for label, build in builders.items()} for col, builders in variants.items()}
    for col in ("previous", FIGURES_BEFORE):
        for label, fig in figs[col].items():
            if json.loads(fig.to_json()) != json.loads(figs["now"][label].to_json()):  # values, not key order
                raise SystemExit(f"error: the figure {label} differs from the implementation at {col}")
    per_figure = {col: {label: (median_ms(build, a.repeats),
                                median_ms(lambda f=figs[col][label]: streamlit_sends(f), a.repeats))
                        for label, build in builders.items()} for col, builders in variants.items()}
    timed["figures: build"] = tuple(sum(b for b, _ in per_figure[c].values()) for c in variants)
    timed["figures: what Streamlit sends"] = tuple(sum(j for _, j in per_figure[c].values()) for c in variants)
    print(f"\n{'one slider move':46s} {'previous':>9s} {FIGURES_BEFORE:>9s} {'now':>9s}")
    for label, row in timed.items():
        print(f"  {label:44s}" + "".join(f" {t:8.1f} ms" for t in row))
    totals = [sum(t[k] for t in timed.values()) for k in range(3)]
    print(f"  {'= one slider move, end to end':44s}" + "".join(f" {t:8.1f} ms" for t in totals)
          + f"   target ≤ {MOVE_TARGET_MS:.0f} ms -> {'OK' if totals[2] <= MOVE_TARGET_MS else 'OVER'}")
    vote_prev, _, vote_now = timed["vote + statistics (build_mask)"]
    print(f"\nvote + statistics now {vote_now:.1f} ms (target ≤ {VOTE_TARGET_MS:.0f} ms -> "
          f"{'OK' if vote_now <= VOTE_TARGET_MS else 'OVER'}); previous {vote_prev:.1f} ms. "
          f"The {FIGURES_BEFORE} column differs from now only in the figure rows (the other rows' code is unchanged "
          "since; they repeat the measurement of now).")
    print(f"\nper figure: build / what Streamlit sends, at {FIGURES_BEFORE} and now")
    for label in per_figure["now"]:
        (bb, bj), (nb, nj) = per_figure[FIGURES_BEFORE][label], per_figure["now"][label]
        print(f"  {label:44s} {bb:8.1f} ms {bj:6.1f} ms   {nb:8.1f} ms {nj:6.1f} ms")
    held = sum(a.nbytes for st_ in stats.values() for a in (st_.abs_sum, st_.sq_sum, st_.sum))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    print(f"\npeak memory of this process {peak / 2**20:.0f} MiB = {peak / held:.1f} × the statistics it holds "
          f"({held / 2**20:.0f} MiB; no model weights are involved), all three implementations and their figures "
          "included")

if __name__ == "__main__":
    main()
