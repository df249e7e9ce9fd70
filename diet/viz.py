"""Plotly figures of masks, overlaps and results — plain functions of numpy arrays, testable without Streamlit.

Why these choices:
- Arrays go in as uint8 / float32 numpy arrays, never lists: Plotly ≥ 6 ships them to the browser as compact
  base64, so a 42 × 14336 mask stays a few hundred kB and building a figure stays fast.
- Wide layers (9216 or 14336 channels) are shown twice: an overview binned to a few hundred columns (fraction kept
  per bin) and a full-resolution strip of one selected layer. A browser cannot usefully draw 600k cells.
- Every overlap figure carries its reference (chance level for independent masks, split-half noise ceiling): a bare
  Jaccard number misleads (docs/app.md, "Why the references").
- `CAPTIONS` holds the one line under each figure that says how to read it; the app and the HTML report use the
  same words.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import numpy as np
import plotly.graph_objects as go

from diet import masks as M

KEPT, REMOVED = "#1b7f79", "#e4e4e4"  # one colour pair for "kept" / "removed" in every figure
DENSE, PRUNED = "#7f7f7f", "#1b7f79"
TEMPLATE = "plotly_white"  # for the HTML report; in the app Streamlit applies its own theme
MAX_OVERVIEW_COLUMNS = 300  # binned overview width: enough to see structure, small enough to draw instantly
MAX_VOTE_COLUMNS = 2048  # the votes map stays full resolution up to this width, then bins
MAX_UPSET_BARS = 25

CAPTIONS = {
    "kept_overview": "Each row is a layer, each column a bin of MLP channels; colour = fraction of the bin's channels "
                     "kept (dark = kept, light = removed). Hover for the exact layer, channels and fraction.",
    "layer_strip": "One layer at full resolution: the top panel is each channel's score, below it one row per mask "
                   "(merged and each task); dark = kept. Hover for the channel index and score.",
    "votes_map": "Colour = in how many task masks a channel is kept (0 … T). The merged mask keeps the channels "
                 "with the most votes. Hover for the exact count.",
    "jaccard_matrix": "Jaccard overlap |A∩B| / |A∪B| of two task masks over all layers (1 = identical). Read it "
                      "against the chance level and the split-half ceiling next to it, not on its own.",
    "jaccard_layers": "Per-layer Jaccard of every pair of task masks (thin lines), their mean (bold), the chance "
                      "level for independent masks (dashed) and the mean split-half self-overlap (dotted).",
    "upset": "Bars: channels kept by exactly the tasks marked with dark dots below (largest groups first); "
             "diamonds: what independent masks of the same sizes would give.",
    "references": "Per task: overlap with itself on two halves of its samples (noise ceiling), mean overlap with the "
                  "other tasks, and the level independent random masks reach. Overlap between tasks means something "
                  "only where it is clearly above chance.",
    "kept_per_layer": "Channels kept per layer by the merged mask (bars) out of the layer's width (line).",
    "params": "Where the model's parameters go: kept MLP channels, removed MLP channels, and everything else "
              "(attention, embeddings, norms).",
    "accuracy": "Zero-shot accuracy per task (each task's primary metric), dense vs pruned, measured side by side.",
    "who_loses": "Top: for each task, the share of its own top-k channels each mask keeps (bars) and the share of "
                 "its importance mass (sum of its per-layer-normalised scores) kept (diamonds). Bottom: per layer, "
                 "the share of the tasks' own top-k that each mask drops, averaged over tasks.",
}


def _figure(traces: Sequence[Mapping], title: str, height: int, *base: Mapping, **layout) -> go.Figure:
    """The figure in ONE validated construction: trace dicts (with "type") and a layout of title, height, margins,
    `base` (e.g. `_two_rows`) and `layout`, merged key by key as `update_layout` merges them.

    Why: plotly validates on every add_trace and update_layout, and each update also runs its relayout machinery;
    building the same figure trace by trace cost about five times as much (bench/ui_latency.py), for identical
    data. Validation stays on: a wrong key still fails here, not in the browser."""
    spec: dict = {"title": dict(text=title, x=0, xanchor="left"), "height": height,
                  "margin": dict(l=60, r=20, t=50, b=40)}
    for part in (*base, layout):
        _merge(spec, part)
    return go.Figure(data=list(traces), layout=spec)


def _merge(into: dict, update: Mapping) -> dict:
    """`update` merged into `into` recursively (nested dicts update, anything else replaces): update_layout's rule."""
    for k, v in update.items():
        old = into.get(k)
        into[k] = _merge(dict(old), v) if isinstance(v, Mapping) and isinstance(old, Mapping) else v
    return into


def _two_rows(top: float) -> dict:
    """Layout of two stacked panels sharing x (what make_subplots builds, without its ~20 ms cost): traces on the
    top panel use xaxis="x", yaxis="y"; on the bottom one xaxis="x", yaxis="y2"."""
    gap = 0.04
    return dict(yaxis=dict(domain=[1 - top + gap / 2, 1.0]), yaxis2=dict(domain=[0.0, 1 - top - gap / 2]),
                xaxis=dict(anchor="y2"))


# ----------------------------------------------------------------------------------------------- binning


def bin_edges(width: int, max_columns: int = MAX_OVERVIEW_COLUMNS) -> np.ndarray:
    """Start index of each bin (plus `width` at the end): at most `max_columns` bins of near-equal size."""
    n = min(width, max_columns)
    return np.linspace(0, width, n + 1).round().astype(np.int64)


def bin_mean(a: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(L, B) float32 mean of `a` (L, I) over each column bin (reduceat: one pass, no Python loop)."""
    sums = np.add.reduceat(np.asarray(a, dtype=np.float32), edges[:-1], axis=1)
    return (sums / np.diff(edges).astype(np.float32)).astype(np.float32)


def order_by(scores: np.ndarray) -> np.ndarray:
    """Per-row column order, highest score first (stable, so equal scores keep channel order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=-1, kind="stable")


# ----------------------------------------------------------------------------------------------- masks


def kept_overview(mask: np.ndarray, title: str = "Kept channels", order: np.ndarray | None = None,
                  max_columns: int = MAX_OVERVIEW_COLUMNS, unit: str = "channel") -> go.Figure:
    """Layers × channels overview of a (L, I) mask, binned to `max_columns` columns (fraction kept per bin).

    `order` (L, I), e.g. `order_by(scores)`, reorders each layer's channels (highest score first) before binning, so
    the picture shows how deep into the score ranking the mask keeps; None keeps channel order. `unit` names a
    column's element in the hover and axis ("residual dim" for DISP's residual positions)."""
    mask = np.asarray(mask, dtype=bool)
    L, width = mask.shape
    if order is not None:
        mask = np.take_along_axis(mask, order, axis=1)
    edges = bin_edges(width, max_columns)
    z = bin_mean(mask, edges)
    ends = np.broadcast_to((edges[1:] - 1).astype(np.int32), z.shape)
    xname = "rank by score" if order is not None else unit
    bins = len(edges) - 1
    heat = dict(type="heatmap", z=z, x=edges[:-1].astype(np.int32), y=np.arange(L, dtype=np.int32), customdata=ends,
                zmin=0.0, zmax=1.0, colorscale=[[0, REMOVED], [1, KEPT]], colorbar=dict(title="kept", tickformat=".0%"),
                hovertemplate=f"layer %{{y}}<br>{xname}s %{{x}}–%{{customdata}}<br>kept %{{z:.1%}}<extra></extra>")
    xtitle = f"{xname} ({width} per layer" + (f", {bins} bins)" if bins < width else ")")
    return _figure([heat], title, 140 + 9 * L, xaxis=dict(title=xtitle), yaxis=dict(title="layer",
                                                                                     autorange="reversed"))

def _index_dtype(width: int):
    return np.uint16 if width < 65536 else np.int32  # half the bytes for the per-cell channel index


def layer_strip(layer: int, masks: Mapping[str, np.ndarray], scores: np.ndarray, sort: bool = False,
                score_name: str = "score") -> go.Figure:
    """Full resolution of one layer: channel scores on top, one kept/removed row per mask below.

    `masks` maps a row name (e.g. "merged", then each task) to that layer's (I,) boolean mask; `scores` is the (I,)
    score used for sorting and shown on top (e.g. the mean normalised score over tasks)."""
    scores = np.asarray(scores, dtype=np.float32)
    width = scores.shape[0]
    order = order_by(scores) if sort else np.arange(width)
    names = list(masks)
    z = np.stack([np.asarray(masks[n], dtype=bool)[order] for n in names]).astype(np.uint8)
    idx = order.astype(_index_dtype(width))
    pos = np.arange(width, dtype=np.int32)
    line = dict(type="scatter", x=pos, y=scores[order], customdata=idx, mode="lines", line=dict(color="#555", width=1),
                name=score_name, showlegend=False, xaxis="x", yaxis="y",
                hovertemplate=f"channel %{{customdata}}<br>{score_name} %{{y:.4g}}<extra></extra>")
    heat = dict(type="heatmap", z=z, x=pos, y=names, customdata=np.ascontiguousarray(np.broadcast_to(idx, z.shape)),
                zmin=0, zmax=1, colorscale=[[0, REMOVED], [0.5, REMOVED], [0.5, KEPT], [1, KEPT]], showscale=False,
                xaxis="x", yaxis="y2", hovertemplate="%{y}<br>channel %{customdata}<br>kept %{z}<extra></extra>")
    return _figure([line, heat], f"Layer {layer}: every channel", 230 + 22 * len(names), _two_rows(0.35),
                   yaxis=dict(title=score_name), yaxis2=dict(autorange="reversed"),
                   xaxis=dict(title="channels sorted by score (highest first)" if sort else "channel"))

def sort_votes(votes: np.ndarray, n_tasks: int) -> np.ndarray:
    """Each row of (L, I) votes sorted descending — built from per-row counts (votes are small integers), which is
    several times faster than a general sort."""
    v = np.asarray(votes, dtype=np.uint8)
    L, width = v.shape
    counts = np.zeros((L, n_tasks + 1), dtype=np.int64)
    for k in range(n_tasks + 1):
        counts[:, k] = np.count_nonzero(v == k, axis=1)
    levels = np.arange(n_tasks, -1, -1, dtype=np.uint8)
    return np.stack([np.repeat(levels, row[::-1]) for row in counts])


def discrete_colorscale(n_tasks: int) -> list:
    """Piecewise-constant colours for the integers 0 … T (used with zmin = −0.5, zmax = T + 0.5)."""
    import plotly.colors as pc

    colours = [REMOVED] + pc.sample_colorscale("Tealgrn", [i / max(n_tasks - 1, 1) for i in range(n_tasks)])
    scale = []
    for k, c in enumerate(colours):
        scale += [[k / (n_tasks + 1), c], [(k + 1) / (n_tasks + 1), c]]
    return scale


def votes_map(votes: np.ndarray, n_tasks: int, sort: bool = False, max_columns: int = MAX_VOTE_COLUMNS,
              title: str = "Votes: in how many task masks each channel is kept", unit: str = "channel") -> go.Figure:
    """(L, I) vote counts in discrete colours 0 … T with fixed zmin/zmax (so colours mean the same at any setting).

    Wider than `max_columns`: bins show the rounded mean vote (say so on the axis). With `sort`, each layer's
    channels are ordered by votes (most first): the picture becomes a per-layer profile of agreement."""
    v = np.asarray(votes, dtype=np.uint8)
    L, width = v.shape
    if sort:
        v = sort_votes(v, n_tasks)
    binned = width > max_columns
    if binned:
        edges = bin_edges(width, max_columns)
        z = np.rint(bin_mean(v, edges)).astype(np.uint8)
        x = edges[:-1].astype(np.int32)
        xtitle = f"{unit} bins ({len(edges) - 1} of ~{width // (len(edges) - 1)}; rounded mean vote)"
    else:
        z, x = v, np.arange(width, dtype=np.int32)
        xtitle = unit
    if sort:
        xtitle = f"{unit}s sorted by votes (most first)" + (", binned" if binned else "")
    heat = dict(type="heatmap", z=z, x=x, y=np.arange(L, dtype=np.int32), zmin=-0.5, zmax=n_tasks + 0.5,
                colorscale=discrete_colorscale(n_tasks),
                colorbar=dict(title="votes", tickmode="array", tickvals=list(range(n_tasks + 1))),
                hovertemplate=f"layer %{{y}}<br>{unit} %{{x}}<br>votes %{{z}}<extra></extra>")
    return _figure([heat], title, 140 + 9 * L, xaxis=dict(title=xtitle), yaxis=dict(title="layer",
                                                                                     autorange="reversed"))

def kept_per_layer(kept: np.ndarray, widths: Sequence[int], task_kept: np.ndarray | None = None,
                   names: Sequence[str] = ()) -> go.Figure:
    """Merged mask's kept count per layer (bars), layer widths (line), and each task's count when they differ."""
    kept = np.asarray(kept, dtype=np.int32)
    layers = np.arange(kept.shape[0], dtype=np.int32)
    traces = [dict(type="bar", x=layers, y=kept, name="kept (merged mask)", marker=dict(color=KEPT),
                   hovertemplate="layer %{x}<br>kept %{y}<extra></extra>"),
              dict(type="scatter", x=layers, y=np.asarray(widths, dtype=np.int32), name="layer width", mode="lines",
                   line=dict(color="#999", dash="dash"), hovertemplate="layer %{x}<br>width %{y}<extra></extra>")]
    if task_kept is not None and not (np.asarray(task_kept) == kept[None]).all():
        traces += [dict(type="scatter", x=layers, y=row, name=name, mode="lines", line=dict(width=1),
                        hovertemplate=f"{name}<br>layer %{{x}}<br>kept %{{y}}<extra></extra>")
                   for name, row in zip(names, np.asarray(task_kept, dtype=np.int32))]
    return _figure(traces, "Kept channels per layer", 320, xaxis=dict(title="layer"),
                   yaxis=dict(title="channels", rangemode="tozero"))

def params_breakdown(summary: Mapping) -> go.Figure:
    """One stacked horizontal bar: kept unit parameters, removed unit parameters, the rest of the model."""
    removed = int(summary["params_removed"])
    total = int(summary["params_total"])
    unit_total = round(removed / summary["unit_sparsity"]) if summary["unit_sparsity"] > 0 else None
    parts = []
    if unit_total is not None:
        parts = [("MLP channels kept", unit_total - removed, KEPT), ("MLP channels removed", removed, "#d62728"),
                 ("rest of the model", total - unit_total, "#bbbbbb")]
    else:
        parts = [("whole model (nothing removed)", total, "#bbbbbb")]
    bars = [dict(type="bar", y=["parameters"], x=[n], orientation="h", name=name, marker=dict(color=colour),
                 hovertemplate=f"{name}<br>%{{x:,}} parameters ({n / total:.1%})<extra></extra>")
            for name, n, colour in parts]
    return _figure(bars, f"Parameters removed: {removed:,} of {total:,} ({removed / total:.1%} of the model)", 220,
                   barmode="stack", legend=dict(orientation="h", y=-0.4), xaxis=dict(title="parameters"))

# ----------------------------------------------------------------------------------------------- overlap


def chance_matrix(task_masks: np.ndarray) -> np.ndarray:
    """(T, T) expected Jaccard of independent random masks with the same per-layer sizes (ratio of expectations)."""
    n = task_masks.shape[-1]
    k = task_masks.sum(-1).astype(np.float64)  # (T, L)
    inter = np.einsum("al,bl->ab", k, k) / n
    size = k.sum(1)
    union = size[:, None] + size[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def jaccard_matrix(jaccard: np.ndarray, names: Sequence[str], chance: np.ndarray | None = None) -> go.Figure:
    """T × T Jaccard heatmap with the value in each cell; hover adds the chance level of that pair."""
    J = np.asarray(jaccard, dtype=np.float32)
    C = np.asarray(chance if chance is not None else np.full_like(J, np.nan), dtype=np.float32)
    heat = dict(type="heatmap", z=J, x=list(names), y=list(names), customdata=C, zmin=0.0, zmax=1.0,
                colorscale="Blues", texttemplate="%{z:.2f}", colorbar=dict(title="Jaccard"),
                hovertemplate="%{y} vs %{x}<br>Jaccard %{z:.4f}<br>chance %{customdata:.4f}<extra></extra>")
    return _figure([heat], "Overlap between task masks (Jaccard)", 180 + 40 * len(names),
                   yaxis=dict(autorange="reversed"))

def pairwise_layer_jaccard(task_masks: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """(pairs, (P, L) per-layer Jaccard, (P, L) per-layer chance level) for every pair of task masks."""
    tm = np.asarray(task_masks, dtype=bool)
    T, L, n = tm.shape
    pairs = list(itertools.combinations(range(T), 2))
    counts = M.layer_overlap_counts(tm, tm)  # (T, T, L): every pair at once, exact counts
    k = counts[np.arange(T), np.arange(T)].astype(np.float64)  # (T, L) kept per task and layer
    J = np.empty((len(pairs), L), dtype=np.float32)
    C = np.empty((len(pairs), L), dtype=np.float32)
    for p, (a, b) in enumerate(pairs):
        inter = counts[a, b].astype(np.float64)
        union = k[a] + k[b] - inter
        J[p] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        ei = k[a] * k[b] / n
        eu = k[a] + k[b] - ei
        C[p] = np.where(eu > 0, ei / np.where(eu > 0, eu, 1), 1.0)
    return pairs, J, C


def jaccard_layers(task_masks: np.ndarray, names: Sequence[str], split_half_mean: float | None = None) -> go.Figure:
    """Per-layer Jaccard of each pair of tasks, with the chance level and the split-half ceiling as references."""
    pairs, J, C = pairwise_layer_jaccard(task_masks)
    layers = np.arange(J.shape[1], dtype=np.int32)
    traces = []
    for (a, b), row in zip(pairs, J):
        label = f"{names[a]} vs {names[b]}"
        traces.append(dict(type="scatter", x=layers, y=row, mode="lines", name=label, line=dict(width=1),
                           opacity=0.6, hovertemplate=f"{label}<br>layer %{{x}}<br>Jaccard %{{y:.4f}}<extra></extra>"))
    if len(pairs) > 1:
        traces.append(dict(type="scatter", x=layers, y=J.mean(0), mode="lines", name="mean of pairs",
                           line=dict(color="black", width=3),
                           hovertemplate="mean of pairs<br>layer %{x}<br>Jaccard %{y:.4f}<extra></extra>"))
    traces.append(dict(type="scatter", x=layers, y=C.mean(0), mode="lines", name="chance (independent masks)",
                       line=dict(color="#d62728", dash="dash", width=2),
                       hovertemplate="chance<br>layer %{x}<br>Jaccard %{y:.4f}<extra></extra>"))
    if split_half_mean is not None:
        traces.append(dict(type="scatter", x=layers[[0, -1]], y=np.full(2, split_half_mean, dtype=np.float32),
                           mode="lines", name="split-half self-overlap (mean)", line=dict(color="#2ca02c", dash="dot"),
                           hovertemplate="split-half self-overlap %{y:.4f}<extra></extra>"))
    return _figure(traces, "Overlap per layer", 380, xaxis=dict(title="layer"),
                   yaxis=dict(title="Jaccard", range=[0, 1.02]))

def expected_intersections(task_masks: np.ndarray, combos: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Channels kept by exactly each task combination if the masks were independent with the same per-layer sizes:
    Σ_layers n · Π_{t in combo} p_t · Π_{t not in combo} (1 − p_t)."""
    tm = np.asarray(task_masks, dtype=bool)
    T, _, n = tm.shape
    p = tm.sum(-1) / n  # (T, L)
    out = np.empty(len(combos), dtype=np.float64)
    for i, combo in enumerate(combos):
        inside = np.zeros(T, dtype=bool)
        inside[list(combo)] = True
        out[i] = float((n * np.where(inside[:, None], p, 1 - p).prod(axis=0)).sum())
    return out


def upset(intersections: Mapping[tuple[int, ...], int], names: Sequence[str], expected: np.ndarray | None = None,
          max_bars: int = MAX_UPSET_BARS) -> go.Figure:
    """UpSet-style chart (Plotly has none): bars of exact-intersection sizes over a dot matrix of the task sets.

    `intersections` is diet.masks.intersections(task_masks); `expected` (same order as the sorted bars, or None)
    comes from `expected_intersections` and is drawn as diamonds."""
    combos = sorted(intersections, key=lambda c: (-intersections[c], len(c), c))[:max_bars]
    counts = np.array([intersections[c] for c in combos], dtype=np.int64)
    x = np.arange(len(combos), dtype=np.int32)
    labels = [" & ".join(names[t] for t in c) for c in combos]
    T = len(names)
    traces = [dict(type="bar", x=x, y=counts, customdata=labels, marker=dict(color=KEPT),
                   name="channels kept by exactly these",
                   hovertemplate="%{customdata}<br>%{y:,} channels<extra></extra>")]
    if expected is not None:
        exp = np.asarray(expected, dtype=np.float32)[: len(combos)]
        traces.append(dict(type="scatter", x=x, y=exp, mode="markers",
                           marker=dict(symbol="diamond", color="#d62728", size=9), customdata=labels,
                           name="expected if independent",
                           hovertemplate="%{customdata}<br>expected %{y:,.1f}<extra></extra>"))
    gx, gy = np.meshgrid(x, np.arange(T, dtype=np.int32))
    traces.append(dict(type="scatter", x=gx.ravel(), y=gy.ravel(), mode="markers",
                       marker=dict(color="#dddddd", size=10), hoverinfo="skip", showlegend=False, yaxis="y2"))
    mx, my, lx, ly = [], [], [], []
    for i, c in enumerate(combos):
        mx += [i] * len(c)
        my += list(c)
        lx += [i, i, None]
        ly += [min(c), max(c), None]
    traces += [dict(type="scatter", x=lx, y=ly, mode="lines", line=dict(color="#333", width=2), hoverinfo="skip",
                    showlegend=False, yaxis="y2"),
               dict(type="scatter", x=np.array(mx, dtype=np.int32), y=np.array(my, dtype=np.int32), mode="markers",
                    marker=dict(color="#333", size=10), hoverinfo="skip", showlegend=False, yaxis="y2")]
    shown = f" (largest {len(combos)} of {len(intersections)})" if len(intersections) > len(combos) else ""
    return _figure(traces, "Which tasks keep the same channels" + shown, 300 + 22 * T, _two_rows(0.62),
                   yaxis=dict(title="channels"), xaxis=dict(showticklabels=False),
                   yaxis2=dict(tickmode="array", tickvals=list(range(T)), ticktext=list(names), range=[T - 0.5, -0.5]),
                   legend=dict(orientation="h", y=1.08))

def references(names: Sequence[str], split_half: Mapping[str, float], mean_jaccard: Sequence[float],
               chance: float) -> go.Figure:
    """Per task: split-half self-overlap (ceiling), mean Jaccard with the other tasks, and the chance level."""
    names = list(names)
    traces = [dict(type="bar", x=names, y=np.array([split_half.get(n, np.nan) for n in names], dtype=np.float32),
                   name="split-half self-overlap (noise ceiling)", marker=dict(color="#2ca02c"),
                   hovertemplate="%{x}<br>split-half %{y:.4f}<extra></extra>"),
              dict(type="bar", x=names, y=np.asarray(mean_jaccard, dtype=np.float32),
                   name="mean overlap with other tasks", marker=dict(color="#1f77b4"),
                   hovertemplate="%{x}<br>mean Jaccard %{y:.4f}<extra></extra>"),
              dict(type="scatter", x=names, y=np.full(len(names), chance, dtype=np.float32), mode="lines+markers",
                   name="chance (independent masks)", line=dict(color="#d62728", dash="dash"),
                   marker=dict(symbol="line-ew-open", size=18), hovertemplate="chance %{y:.4f}<extra></extra>")]
    return _figure(traces, "Is the overlap meaningful? References", 340, barmode="group",
                   legend=dict(orientation="h", y=-0.25), yaxis=dict(title="Jaccard", range=[0, 1.02]))

# ----------------------------------------------------------------------------------------------- results


def accuracy_bars(tasks: Sequence[str], dense: Sequence[float], pruned: Sequence[float],
                  pruned_label: str = "pruned") -> go.Figure:
    """Grouped bars per task (plus the average): dense vs pruned, as fractions in [0, 1]."""
    tasks = list(tasks)
    bars = [dict(type="bar", x=tasks, y=np.asarray(values, dtype=np.float32), name=label, marker=dict(color=colour),
                 texttemplate="%{y:.1%}", textposition="outside",
                 hovertemplate=f"{label}<br>%{{x}}: %{{y:.2%}}<extra></extra>")
            for label, values, colour in (("dense", dense, DENSE), (pruned_label, pruned, PRUNED))]
    return _figure(bars, "Dense vs pruned", 360, barmode="group",
                   yaxis=dict(title="accuracy", range=[0, 1.08], tickformat=".0%"))

def sweep_curves(sparsities: Sequence[float], values: Mapping[str, Sequence[float]],
                 dense: Mapping[str, float]) -> go.Figure:
    """Accuracy vs sparsity, one line per task (and the average); each dense value as a dashed line."""
    x = np.asarray(sparsities, dtype=np.float32)
    traces = []
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for i, (name, ys) in enumerate(values.items()):
        colour = "black" if name == "average" else palette[i % len(palette)]
        width = 3 if name == "average" else 1.5
        traces.append(dict(type="scatter", x=x, y=np.asarray(ys, dtype=np.float32), mode="lines+markers", name=name,
                           line=dict(color=colour, width=width),
                           hovertemplate=f"{name}<br>sparsity %{{x:.0%}}<br>%{{y:.2%}}<extra></extra>"))
        if name in dense:
            traces.append(dict(type="scatter", x=x[[0, -1]] if len(x) > 1 else np.array([0, 1], dtype=np.float32),
                               y=np.full(2, dense[name], dtype=np.float32), mode="lines",
                               line=dict(color=colour, dash="dash", width=1), name=f"{name} (dense)",
                               showlegend=False, hovertemplate=f"{name} dense %{{y:.2%}}<extra></extra>"))
    return _figure(traces, "Accuracy vs sparsity", 380,
                   xaxis=dict(title="sparsity (fraction of MLP channels removed)", tickformat=".0%"),
                   yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1.02]))

def who_loses(data: Mapping) -> go.Figure:
    """Who loses in the merge (`diet.methods.who_loses` output): top, per task, the share of its own top-k each mask
    keeps (bars) and the share of its importance mass kept (diamonds); bottom, per layer, the share of the tasks'
    own top-k each mask drops (mean over tasks), which shows where the losses concentrate."""
    tasks, masks = list(data["tasks"]), list(data["masks"])
    palette = [PRUNED, "#ff7f0e", "#7f7f7f", "#9467bd", "#8c564b"]
    traces = []
    for i, m in enumerate(masks):
        colour = palette[i % len(palette)]
        lost = 1.0 - np.asarray(data["layer_topk"][m], dtype=np.float32).mean(axis=0)
        traces += [
            dict(type="bar", x=tasks, y=np.asarray(data["topk"][m], dtype=np.float32), name=f"{m}: own top-k kept",
                 marker=dict(color=colour), offsetgroup=str(i), legendgroup=m,
                 hovertemplate=f"{m}<br>%{{x}}: %{{y:.1%}} of its own top-k kept<extra></extra>"),
            dict(type="scatter", x=tasks, y=np.asarray(data["mass"][m], dtype=np.float32), mode="markers",
                 name=f"{m}: importance mass kept", legendgroup=m, offsetgroup=str(i),
                 marker=dict(symbol="diamond", size=9, color=colour, line=dict(color="black", width=1)),
                 hovertemplate=f"{m}<br>%{{x}}: %{{y:.1%}} of its score mass kept<extra></extra>"),
            dict(type="scatter", x=np.arange(lost.size, dtype=np.int32), y=lost, mode="lines+markers", xaxis="x2",
                 yaxis="y2", name=f"{m}: lost per layer", legendgroup=m, showlegend=False, line=dict(color=colour),
                 hovertemplate=f"{m}<br>layer %{{x}}: %{{y:.1%}} of the tasks' top-k lost<extra></extra>")]
    return _figure(traces, "Who loses in the merge", 560, _two_rows(0.55),
                   barmode="group", xaxis=dict(anchor="y"), xaxis2=dict(anchor="y2", title="layer"),
                   yaxis=dict(title="share kept", tickformat=".0%", range=[0, 1.05]),
                   yaxis2=dict(title="top-k lost", tickformat=".0%", rangemode="tozero"),
                   legend=dict(orientation="h", y=-0.15))

# ----------------------------------------------------------------------------------------------- report


def anchor(heading: str) -> str:
    """The id of a report section: its heading in lower case, words joined by '-' (links point here)."""
    return "-".join("".join(c if c.isalnum() else " " for c in heading.lower()).split())


def report_html(title: str, sections: Sequence[tuple[str, str, go.Figure | str]], notes: Sequence[str] = (),
                lead: str = "") -> str:
    """A self-contained HTML report: a heading, `lead` (trusted HTML: the headline sentence with links to its
    sections), notes, then (title, caption, figure or HTML table) sections, each with an id (`anchor`).

    plotly.js is inlined once (about 4.7 MB) so the report opens offline, e.g. on a stakeholder's laptop."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "p.cap{color:#555;font-size:0.9em;margin-top:0}table{border-collapse:collapse}"
             "td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f5f5f5}</style>"
             "</head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='cap'>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by DIET Explorer.</p>"]
    if lead:
        parts.append(f"<p class='lead' style='font-size:1.3em'>{lead}</p>")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    first = True
    for heading, caption, body in sections:
        parts.append(f"<a id='{anchor(heading)}'></a><h2>{html.escape(heading)}</h2>")
        if isinstance(body, go.Figure):
            fig = go.Figure(body).update_layout(template=TEMPLATE)
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
            first = False
        else:
            parts.append(body)  # trusted HTML built by the caller (e.g. a pandas table)
        if caption:
            parts.append(f"<p class='cap'>{html.escape(caption)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
