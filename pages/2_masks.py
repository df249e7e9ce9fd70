"""Page 2: masks, instantly. Everything here comes from the cached statistics through diet.api.build_mask: no model,
no forward pass, so every slider move redraws at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from diet import masks as M
from diet import viz
from diet.api import build_mask
from diet.settings import MaskSettings
from pages._common import defaults, mask_note, need_stats, page_errors, prologue
from pages._work import overlap_refs, split_halves, task_scores, upset_figure

MERGE = {"budget": "exact budget (our default)", "threshold": "voting threshold"}
SCORE = {"mean_abs": "mean |x| (our default)", "rms": "RMS"}
ALLOC = {"layer": "same count in every layer (our default)", "global": "global ranking across layers"}


def chart(fig, key: str, caption: str) -> None:
    st.plotly_chart(fig, key=key)
    st.caption(caption)


def memo(key: tuple, make):
    """Derived arrays that depend only on the statistics and the score (not on the sliders): computed once."""
    store = st.session_state.setdefault("mask_memo", {})
    if key not in store:
        if len(store) > 16:
            store.clear()
        store[key] = make()
    return store[key]


def controls(names_all: list[str]) -> tuple[MaskSettings, list[str]]:
    ss = st.session_state
    defaults(p_sparsity=0.2, p_merge="budget", p_score="mean_abs", p_allocation="layer", p_min_keep=0.05,
             p_vote_tasks=list(names_all), p_threshold=len(names_all) // 2 + 1)
    if not ss["p_vote_tasks"] or not set(ss["p_vote_tasks"]) <= set(names_all):
        ss["p_vote_tasks"] = list(names_all)
    with st.container(border=True):
        c1, c2, c3, c4 = st.columns([2.2, 1.5, 1.2, 1.6])
        c1.slider("Sparsity: fraction of MLP channels removed", 0.0, 0.95, step=0.01, key="p_sparsity",
                  help="per task mask, keep the top (1 − sparsity) channels by score; 0.2 is our default")
        c2.radio("Merge the task masks", list(MERGE), key="p_merge", format_func=MERGE.get,
                 help="exact budget: rank channels by votes (ties: mean normalised score) and keep exactly the "
                      "target count; threshold: keep a channel if at least k task masks keep it")
        T = len(ss["p_vote_tasks"])
        threshold = None
        if ss["p_merge"] == "threshold":
            if not 1 <= ss["p_threshold"] <= T:
                ss["p_threshold"] = T // 2 + 1
            if T > 1:
                c2.slider(f"Keep if at least k of {T} tasks keep it (strict majority {T // 2 + 1} is our default)",
                          1, T, step=1, key="p_threshold")
            threshold = int(ss["p_threshold"])
        c3.radio("Channel score", list(SCORE), key="p_score", format_func=SCORE.get,
                 help="both come from the same cached sums: mean |x| or sqrt(mean x²) of the channel's activation")
        c4.radio("Allocation", list(ALLOC), key="p_allocation", format_func=ALLOC.get,
                 help="per layer: a stock config after export; global: layers compete after per-layer "
                      "normalisation (widths then differ per layer)")
        if ss["p_allocation"] == "global":
            c4.slider("Minimum kept fraction per layer", 0.01, 1.0, step=0.01, key="p_min_keep")
        st.multiselect("Tasks in the vote", names_all, key="p_vote_tasks")
    settings = MaskSettings(sparsity=float(ss["p_sparsity"]), score=ss["p_score"], merge=ss["p_merge"],
                            threshold=threshold, allocation=ss["p_allocation"], min_keep=float(ss["p_min_keep"]))
    return settings, list(ss["p_vote_tasks"])


def headline(result) -> None:
    s = result.summary
    c = st.columns(4)
    c[0].metric(f"MLP channels kept (of {s['units_total']:,})", f"{s['units_kept']:,}")
    c[1].metric("Removed: share of MLP channels", f"{s['unit_sparsity']:.1%}")
    c[2].metric("Removed: share of all parameters", f"{s['param_sparsity']:.1%}",
                help=f"{s['params_removed']:,} of {s['params_total']:,} parameters")
    c[3].metric("Layer widths", "uniform" if s["uniform"] else "per layer",
                help="uniform: every layer keeps the same count, so the export is a smaller stock model; per layer: "
                     "widths differ (padded or heterogeneous export)")


def kept_tab(result, scores: np.ndarray, key: tuple) -> None:
    names = result.tasks
    ss = st.session_state
    defaults(p_view="merged", p_sort=True, p_layer=0)
    if ss["p_view"] not in ["merged", *names]:
        ss["p_view"] = "merged"
    L = result.mask.shape[0]
    ss["p_layer"] = min(int(ss["p_layer"]), L - 1)
    c1, c2 = st.columns([2, 3])
    c1.selectbox("Mask", ["merged", *names], key="p_view",
                 format_func=lambda v: "merged (DIET's vote)" if v == "merged" else f"task: {v}")
    c2.toggle("Sort channels by score, highest first (channel numbers carry no meaning in an MLP)", key="p_sort")
    if ss["p_view"] == "merged":
        mask, sc, title = result.mask, scores.mean(0), "Merged mask: kept channels"
    else:
        i = names.index(ss["p_view"])
        mask, sc, title = result.task_masks[i], scores[i], f"Task mask of {names[i]}: kept channels"
    order = memo((*key, "order", ss["p_view"]), lambda: viz.order_by(sc)) if ss["p_sort"] else None
    chart(viz.kept_overview(mask, title, order), "overview", viz.CAPTIONS["kept_overview"])
    if L > 1:
        st.slider("Layer for the full-resolution view", 0, L - 1, step=1, key="p_layer")
    layer = int(ss["p_layer"])
    rows = {"merged": result.mask[layer], **{n: result.task_masks[i, layer] for i, n in enumerate(names)}}
    chart(viz.layer_strip(layer, rows, scores.mean(0)[layer], sort=bool(ss["p_sort"]),
                          score_name="score"), "strip", viz.CAPTIONS["layer_strip"])


def votes_tab(result) -> None:
    T = len(result.tasks)
    defaults(p_sort_votes=False)
    st.toggle("Sort each layer's channels by votes", key="p_sort_votes")
    chart(viz.votes_map(result.votes, T, sort=bool(st.session_state["p_sort_votes"])), "votes",
          viz.CAPTIONS["votes_map"])
    hist = result.summary["votes_histogram"]
    st.dataframe(pd.DataFrame({"kept by exactly k task masks": list(range(T + 1)), "channels": hist}).T,
                 width="content")


def refs_block(refs, T: int, names: list[str]) -> None:
    split = ", ".join(f"{n} {refs.split_half[n]:.3f}" for n in names)
    st.markdown(
        "**Read against**\n"
        f"- chance for independent masks of the same sizes: **{refs.chance:.3f}**\n"
        f"- split-half self-overlap (each task's noise ceiling): {split}\n"
        f"- kept by all {T} tasks: **{refs.kept_by_all:,}** (independence predicts {refs.kept_by_all_expected:,.0f})\n"
        f"- kept by exactly one task: **{refs.kept_by_one:,}** (independence predicts "
        f"{refs.kept_by_one_expected:,.0f})")


def overlap_tab(result, stats: dict, key: tuple) -> None:
    names, T = result.tasks, len(result.tasks)
    if T < 2:
        st.info("Overlap needs at least two tasks in the vote.")
        return
    s = result.settings
    split = memo((*key, "split", s.sparsity, s.allocation, s.min_keep), lambda: split_halves(result, stats))
    refs = overlap_refs(result, stats, split)
    st.caption("A Jaccard number alone misleads: random masks of the same size already overlap. Each figure is "
               "shown next to its references. Nothing here says the voted mask is better: measure it on the "
               "Prune and evaluate page.")
    for key, fig, caption in (
        ("jaccard", viz.jaccard_matrix(np.asarray(result.summary["jaccard"]), names,
                                       viz.chance_matrix(result.task_masks)), viz.CAPTIONS["jaccard_matrix"]),
        ("references", viz.references(names, refs.split_half, refs.mean_jaccard, refs.chance),
         viz.CAPTIONS["references"]),
        ("jaccard_layers", viz.jaccard_layers(result.task_masks, names, float(np.mean(list(refs.split_half.values())))),
         viz.CAPTIONS["jaccard_layers"]),
        ("upset", upset_figure(result), viz.CAPTIONS["upset"]),
    ):
        c1, c2 = st.columns([3, 1.3])
        with c1:
            chart(fig, key, caption)
        with c2:
            refs_block(refs, T, names)


def layers_tab(result) -> None:
    s = result.summary
    chart(viz.kept_per_layer(M.kept_per_layer(result.mask), result.shape["widths"], result.task_masks.sum(-1),
                             result.tasks), "kept_per_layer", viz.CAPTIONS["kept_per_layer"])
    chart(viz.params_breakdown(s), "params", viz.CAPTIONS["params"])


def page(stats: dict, slot) -> None:
    settings, vote_tasks = controls(list(stats))
    sub = {n: stats[n] for n in vote_tasks}
    result = build_mask(sub, settings)
    st.session_state["mask_result"] = result
    mask_note(slot, result)
    headline(result)
    key = (tuple(id(sub[n]) for n in vote_tasks), settings.score)
    scores = memo((*key, "scores"), lambda: task_scores(sub, vote_tasks, settings.score))
    t1, t2, t3, t4 = st.tabs(["Kept channels", "Votes", "Overlap between tasks", "Per layer and parameters"])
    with t1:
        kept_tab(result, scores, key)
    with t2:
        votes_tab(result)
    with t3:
        overlap_tab(result, sub, key)
    with t4:
        layers_tab(result)


slot = prologue(())
st.title("2 · Masks")
with page_errors():
    stats = need_stats()
    if stats:
        page(stats, slot)
