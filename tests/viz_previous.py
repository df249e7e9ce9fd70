"""The Masks page's figures as diet/viz.py built them at 5616295, before they were built as one validated dict each:
plotly's object API (go.Figure, add_trace, update_layout, ~5x slower). Frozen here so that tests/test_viz.py can check
on random cases that the faster construction sends the browser the same data (values, not bytes: plotly orders keys
differently) without needing the git history (CI may clone shallow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from diet.viz import (
    DENSE,
    KEPT,
    MAX_OVERVIEW_COLUMNS,
    MAX_UPSET_BARS,
    MAX_VOTE_COLUMNS,
    PRUNED,
    REMOVED,
    bin_edges,
    bin_mean,
    discrete_colorscale,
    order_by,
    pairwise_layer_jaccard,
    sort_votes,
)


def _index_dtype(width: int):
    return np.uint16 if width < 65536 else np.int32


def _layout(fig: go.Figure, title: str, height: int, **layout) -> go.Figure:
    """Title, height, margins and any other layout keys in one update (each plotly update validates: slow)."""
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=height,
                      margin=dict(l=60, r=20, t=50, b=40), **layout)
    return fig


def _two_rows(top: float) -> go.Figure:
    """An empty figure with two stacked panels sharing x (what make_subplots builds, without its ~20 ms cost):
    traces on the top panel use xaxis="x", yaxis="y"; on the bottom one xaxis="x", yaxis="y2"."""
    gap = 0.04
    return go.Figure(layout=dict(yaxis=dict(domain=[1 - top + gap / 2, 1.0]),
                                 yaxis2=dict(domain=[0.0, 1 - top - gap / 2]),
                                 xaxis=dict(anchor="y2")))


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
    fig = go.Figure(go.Heatmap(
        z=z, x=edges[:-1].astype(np.int32), y=np.arange(L, dtype=np.int32), customdata=ends,
        zmin=0.0, zmax=1.0, colorscale=[[0, REMOVED], [1, KEPT]], colorbar=dict(title="kept", tickformat=".0%"),
        hovertemplate=f"layer %{{y}}<br>{xname}s %{{x}}–%{{customdata}}<br>kept %{{z:.1%}}<extra></extra>"))
    xtitle = f"{xname} ({width} per layer" + (f", {bins} bins)" if bins < width else ")")
    return _layout(fig, title, 140 + 9 * L, xaxis=dict(title=xtitle), yaxis=dict(title="layer", autorange="reversed"))


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
    fig = _two_rows(0.35)
    fig.add_trace(go.Scatter(x=pos, y=scores[order], customdata=idx, mode="lines", line=dict(color="#555", width=1),
                             name=score_name, showlegend=False, xaxis="x", yaxis="y",
                             hovertemplate=f"channel %{{customdata}}<br>{score_name} %{{y:.4g}}<extra></extra>"))
    fig.add_trace(go.Heatmap(z=z, x=pos, y=names, customdata=np.ascontiguousarray(np.broadcast_to(idx, z.shape)),
                             zmin=0, zmax=1, colorscale=[[0, REMOVED], [0.5, REMOVED], [0.5, KEPT], [1, KEPT]],
                             showscale=False, xaxis="x", yaxis="y2",
                             hovertemplate="%{y}<br>channel %{customdata}<br>kept %{z}<extra></extra>"))
    return _layout(fig, f"Layer {layer}: every channel", 230 + 22 * len(names),
                   yaxis=dict(title=score_name), yaxis2=dict(autorange="reversed"),
                      xaxis=dict(title="channels sorted by score (highest first)" if sort else "channel"))


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
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=np.arange(L, dtype=np.int32), zmin=-0.5, zmax=n_tasks + 0.5,
        colorscale=discrete_colorscale(n_tasks),
        colorbar=dict(title="votes", tickmode="array", tickvals=list(range(n_tasks + 1))),
        hovertemplate=f"layer %{{y}}<br>{unit} %{{x}}<br>votes %{{z}}<extra></extra>"))
    return _layout(fig, title, 140 + 9 * L,
                   xaxis=dict(title=xtitle), yaxis=dict(title="layer", autorange="reversed"))


def kept_per_layer(kept: np.ndarray, widths: Sequence[int], task_kept: np.ndarray | None = None,
                   names: Sequence[str] = ()) -> go.Figure:
    """Merged mask's kept count per layer (bars), layer widths (line), and each task's count when they differ."""
    kept = np.asarray(kept, dtype=np.int32)
    layers = np.arange(kept.shape[0], dtype=np.int32)
    fig = go.Figure(go.Bar(x=layers, y=kept, name="kept (merged mask)", marker_color=KEPT,
                           hovertemplate="layer %{x}<br>kept %{y}<extra></extra>"))
    fig.add_trace(go.Scatter(x=layers, y=np.asarray(widths, dtype=np.int32), name="layer width", mode="lines",
                             line=dict(color="#999", dash="dash"),
                             hovertemplate="layer %{x}<br>width %{y}<extra></extra>"))
    if task_kept is not None and not (np.asarray(task_kept) == kept[None]).all():
        for name, row in zip(names, np.asarray(task_kept, dtype=np.int32)):
            fig.add_trace(go.Scatter(x=layers, y=row, name=name, mode="lines", line=dict(width=1),
                                     hovertemplate=f"{name}<br>layer %{{x}}<br>kept %{{y}}<extra></extra>"))
    return _layout(fig, "Kept channels per layer", 320, xaxis=dict(title="layer"),
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
    fig = go.Figure()
    for name, n, colour in parts:
        fig.add_trace(go.Bar(y=["parameters"], x=[n], orientation="h", name=name, marker_color=colour,
                             hovertemplate=f"{name}<br>%{{x:,}} parameters ({n / total:.1%})<extra></extra>"))
    return _layout(fig, f"Parameters removed: {removed:,} of {total:,} ({removed / total:.1%} of the model)", 220,
                   barmode="stack", legend=dict(orientation="h", y=-0.4), xaxis=dict(title="parameters"))


def jaccard_matrix(jaccard: np.ndarray, names: Sequence[str], chance: np.ndarray | None = None) -> go.Figure:
    """T × T Jaccard heatmap with the value in each cell; hover adds the chance level of that pair."""
    J = np.asarray(jaccard, dtype=np.float32)
    C = np.asarray(chance if chance is not None else np.full_like(J, np.nan), dtype=np.float32)
    fig = go.Figure(go.Heatmap(
        z=J, x=list(names), y=list(names), customdata=C, zmin=0.0, zmax=1.0, colorscale="Blues",
        texttemplate="%{z:.2f}", colorbar=dict(title="Jaccard"),
        hovertemplate="%{y} vs %{x}<br>Jaccard %{z:.4f}<br>chance %{customdata:.4f}<extra></extra>"))
    return _layout(fig, "Overlap between task masks (Jaccard)", 180 + 40 * len(names),
                   yaxis=dict(autorange="reversed"))


def jaccard_layers(task_masks: np.ndarray, names: Sequence[str], split_half_mean: float | None = None) -> go.Figure:
    """Per-layer Jaccard of each pair of tasks, with the chance level and the split-half ceiling as references."""
    pairs, J, C = pairwise_layer_jaccard(task_masks)
    layers = np.arange(J.shape[1], dtype=np.int32)
    fig = go.Figure()
    for (a, b), row in zip(pairs, J):
        label = f"{names[a]} vs {names[b]}"
        fig.add_trace(go.Scatter(x=layers, y=row, mode="lines", name=label, line=dict(width=1), opacity=0.6,
                                 hovertemplate=f"{label}<br>layer %{{x}}<br>Jaccard %{{y:.4f}}<extra></extra>"))
    if len(pairs) > 1:
        fig.add_trace(go.Scatter(x=layers, y=J.mean(0), mode="lines", name="mean of pairs",
                                 line=dict(color="black", width=3),
                                 hovertemplate="mean of pairs<br>layer %{x}<br>Jaccard %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=layers, y=C.mean(0), mode="lines", name="chance (independent masks)",
                             line=dict(color="#d62728", dash="dash", width=2),
                             hovertemplate="chance<br>layer %{x}<br>Jaccard %{y:.4f}<extra></extra>"))
    if split_half_mean is not None:
        fig.add_trace(go.Scatter(x=layers[[0, -1]], y=np.full(2, split_half_mean, dtype=np.float32), mode="lines",
                                 name="split-half self-overlap (mean)", line=dict(color="#2ca02c", dash="dot"),
                                 hovertemplate="split-half self-overlap %{y:.4f}<extra></extra>"))
    return _layout(fig, "Overlap per layer", 380, xaxis=dict(title="layer"),
                   yaxis=dict(title="Jaccard", range=[0, 1.02]))


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
    fig = _two_rows(0.62)
    fig.add_trace(go.Bar(x=x, y=counts, customdata=labels, marker_color=KEPT, name="channels kept by exactly these",
                         hovertemplate="%{customdata}<br>%{y:,} channels<extra></extra>"))
    if expected is not None:
        exp = np.asarray(expected, dtype=np.float32)[: len(combos)]
        fig.add_trace(go.Scatter(x=x, y=exp, mode="markers", marker=dict(symbol="diamond", color="#d62728", size=9),
                                 customdata=labels, name="expected if independent",
                                 hovertemplate="%{customdata}<br>expected %{y:,.1f}<extra></extra>"))
    gx, gy = np.meshgrid(x, np.arange(T, dtype=np.int32))
    fig.add_trace(go.Scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", marker=dict(color="#dddddd", size=10),
                             hoverinfo="skip", showlegend=False, yaxis="y2"))
    mx, my, lx, ly = [], [], [], []
    for i, c in enumerate(combos):
        mx += [i] * len(c)
        my += list(c)
        lx += [i, i, None]
        ly += [min(c), max(c), None]
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line=dict(color="#333", width=2), hoverinfo="skip",
                             showlegend=False, yaxis="y2"))
    fig.add_trace(go.Scatter(x=np.array(mx, dtype=np.int32), y=np.array(my, dtype=np.int32), mode="markers",
                             marker=dict(color="#333", size=10), hoverinfo="skip", showlegend=False, yaxis="y2"))
    shown = f" (largest {len(combos)} of {len(intersections)})" if len(intersections) > len(combos) else ""
    return _layout(fig, "Which tasks keep the same channels" + shown, 300 + 22 * T,
                   yaxis=dict(title="channels"), xaxis=dict(showticklabels=False),
                   yaxis2=dict(tickmode="array", tickvals=list(range(T)), ticktext=list(names), range=[T - 0.5, -0.5]),
                   legend=dict(orientation="h", y=1.08))


def references(names: Sequence[str], split_half: Mapping[str, float], mean_jaccard: Sequence[float],
               chance: float) -> go.Figure:
    """Per task: split-half self-overlap (ceiling), mean Jaccard with the other tasks, and the chance level."""
    names = list(names)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=np.array([split_half.get(n, np.nan) for n in names], dtype=np.float32),
                         name="split-half self-overlap (noise ceiling)", marker_color="#2ca02c",
                         hovertemplate="%{x}<br>split-half %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Bar(x=names, y=np.asarray(mean_jaccard, dtype=np.float32), name="mean overlap with other tasks",
                         marker_color="#1f77b4", hovertemplate="%{x}<br>mean Jaccard %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=names, y=np.full(len(names), chance, dtype=np.float32), mode="lines+markers",
                             name="chance (independent masks)", line=dict(color="#d62728", dash="dash"),
                             marker=dict(symbol="line-ew-open", size=18),
                             hovertemplate="chance %{y:.4f}<extra></extra>"))
    return _layout(fig, "Is the overlap meaningful? References", 340, barmode="group",
                   legend=dict(orientation="h", y=-0.25), yaxis=dict(title="Jaccard", range=[0, 1.02]))


def accuracy_bars(tasks: Sequence[str], dense: Sequence[float], pruned: Sequence[float],
                  pruned_label: str = "pruned") -> go.Figure:
    """Grouped bars per task (plus the average): dense vs pruned, as fractions in [0, 1]."""
    tasks = list(tasks)
    fig = go.Figure()
    for label, values, colour in (("dense", dense, DENSE), (pruned_label, pruned, PRUNED)):
        fig.add_trace(go.Bar(x=tasks, y=np.asarray(values, dtype=np.float32), name=label, marker_color=colour,
                             texttemplate="%{y:.1%}", textposition="outside",
                             hovertemplate=f"{label}<br>%{{x}}: %{{y:.2%}}<extra></extra>"))
    return _layout(fig, "Dense vs pruned", 360, barmode="group",
                   yaxis=dict(title="accuracy", range=[0, 1.08], tickformat=".0%"))


def sweep_curves(sparsities: Sequence[float], values: Mapping[str, Sequence[float]],
                 dense: Mapping[str, float]) -> go.Figure:
    """Accuracy vs sparsity, one line per task (and the average); each dense value as a dashed line."""
    x = np.asarray(sparsities, dtype=np.float32)
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for i, (name, ys) in enumerate(values.items()):
        colour = "black" if name == "average" else palette[i % len(palette)]
        width = 3 if name == "average" else 1.5
        fig.add_trace(go.Scatter(x=x, y=np.asarray(ys, dtype=np.float32), mode="lines+markers", name=name,
                                 line=dict(color=colour, width=width),
                                 hovertemplate=f"{name}<br>sparsity %{{x:.0%}}<br>%{{y:.2%}}<extra></extra>"))
        if name in dense:
            fig.add_trace(go.Scatter(x=x[[0, -1]] if len(x) > 1 else np.array([0, 1], dtype=np.float32),
                                     y=np.full(2 if len(x) > 1 else 2, dense[name], dtype=np.float32), mode="lines",
                                     line=dict(color=colour, dash="dash", width=1), name=f"{name} (dense)",
                                     showlegend=False, hovertemplate=f"{name} dense %{{y:.2%}}<extra></extra>"))
    return _layout(fig, "Accuracy vs sparsity", 380,
                   xaxis=dict(title="sparsity (fraction of MLP channels removed)", tickformat=".0%"),
                   yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1.02]))


def who_loses(data: Mapping) -> go.Figure:
    """Who loses in the merge (`diet.methods.who_loses` output): top, per task, the share of its own top-k each mask
    keeps (bars) and the share of its importance mass kept (diamonds); bottom, per layer, the share of the tasks'
    own top-k each mask drops (mean over tasks), which shows where the losses concentrate."""
    tasks, masks = list(data["tasks"]), list(data["masks"])
    palette = [PRUNED, "#ff7f0e", "#7f7f7f", "#9467bd", "#8c564b"]
    fig = _two_rows(0.55)
    for i, m in enumerate(masks):
        colour = palette[i % len(palette)]
        fig.add_trace(go.Bar(x=tasks, y=np.asarray(data["topk"][m], dtype=np.float32), name=f"{m}: own top-k kept",
                             marker_color=colour, offsetgroup=str(i), legendgroup=m,
                             hovertemplate=f"{m}<br>%{{x}}: %{{y:.1%}} of its own top-k kept<extra></extra>"))
        fig.add_trace(go.Scatter(x=tasks, y=np.asarray(data["mass"][m], dtype=np.float32), mode="markers",
                                 name=f"{m}: importance mass kept", legendgroup=m, offsetgroup=str(i),
                                 marker=dict(symbol="diamond", size=9, color=colour, line=dict(color="black", width=1)),
                                 hovertemplate=f"{m}<br>%{{x}}: %{{y:.1%}} of its score mass kept<extra></extra>"))
        lost = 1.0 - np.asarray(data["layer_topk"][m], dtype=np.float32).mean(axis=0)
        fig.add_trace(go.Scatter(x=np.arange(lost.size, dtype=np.int32), y=lost, mode="lines+markers", xaxis="x2",
                                 yaxis="y2", name=f"{m}: lost per layer", legendgroup=m, showlegend=False,
                                 line=dict(color=colour),
                                 hovertemplate=f"{m}<br>layer %{{x}}: %{{y:.1%}} of the tasks' top-k lost"
                                               "<extra></extra>"))
    fig.update_layout(barmode="group", xaxis=dict(anchor="y"), xaxis2=dict(anchor="y2", title="layer"),
                      yaxis=dict(title="share kept", tickformat=".0%", range=[0, 1.05]),
                      yaxis2=dict(title="top-k lost", tickformat=".0%", rangemode="tozero"))
    return _layout(fig, "Who loses in the merge", 560, legend=dict(orientation="h", y=-0.15))
