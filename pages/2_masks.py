"""Page 2: masks, instantly. Pick a method (DIET by default, or any baseline of the registry in diet/methods.py) and
its settings; the mask comes from the cached statistics, so every slider move redraws at once.

DIET goes through diet.api.build_mask (no model, no forward pass). The other methods run the same registry code as
diet.api.method_mask: those that read weights use the loaded model's weight norms (read once, no forward pass);
those that read general text profile it once in a background job (cached on disk), then they are instant too."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pandas as pd
import streamlit as st

from diet import masks as M
from diet import viz
from diet.adapters import model_shape
from diet.api import (
    build_mask,
    cached_general,
    estimate_seconds,
    mask_from,
    ranked_scores,
    recorded_profile_settings,
    with_compensation,
)
from diet.methods import get_method, list_methods, mask_knobs, method_knobs, needs_general, needs_model, weight_stats
from diet.report import (
    half_ranks,
    mask_stats,
    method_label,
    overlap_refs,
    settings_summary,
    single_mask,
    split_halves,
    task_scores,
    upset_figure,
    who_loses_ranks,
    who_loses_view,
)
from diet.settings import MaskSettings, MethodSettings
from pages._common import (
    MASK_DEFAULTS,
    METHOD_DEFAULTS,
    choice_words,
    current_model,
    defaults,
    job_panel,
    mask_note,
    profile_settings,
    runner,
    start_job,
    stats_page,
)
from pages._common import chart as common_chart
from pages._work import COMPENSATION, general_job, general_key

MERGE, SCORE, ALLOC = choice_words("merge"), choice_words("score"), choice_words("allocation")
GENERAL = {"generated": "the shipped corpus (offline; the app's default)",
           "auto": "WikiText-2 when the Hub answers, else the shipped corpus",
           "wikitext2": "WikiText-2 (needs network)", "c4": "C4 (needs network)"}
CALIBRATION = {"default": "general text, as in the method's paper (default)",
               "tasks": "the profiled tasks, pooled into one set"}
FUSION_NORM = {"rank": "per-layer rank (our default)", "zscore": "per-layer z-score"}
POOL_WEIGHT = {"tokens": "by tokens (every token counts once)", "tasks": "by tasks (every task counts once)"}
NEEDS = {"tasks": "the task statistics", "general": "statistics on general text", "weights": "the weights"}


def chart(fig, key: str, caption: str) -> None:
    common_chart(fig, key)
    st.caption(caption)


def memo(key: tuple, make):
    """Derived arrays that depend only on the statistics and the score (not on the sliders): computed once.

    Least recently used out first: per-move entries (split halves, who loses) age out while what every move reads
    (scores, their mean, the score order) stays; clearing the whole store made every ~8th move recompute them."""
    store = st.session_state.setdefault("mask_memo", {})
    if key in store:
        store[key] = store.pop(key)  # most recently used last
    else:
        while len(store) >= 16:
            store.pop(next(iter(store)))
        store[key] = make()
    return store[key]


def ranks_memo(key: tuple, make):
    """Like `memo`, for the large per-unit ranks (tens of MB at 9B scale): the three latest only."""
    store = st.session_state.setdefault("ranks_memo", {})
    if key not in store:
        while len(store) >= 3:
            store.pop(next(iter(store)))
        store[key] = make()
    return store[key]


def method_controls(names_all: list[str]) -> tuple[MethodSettings, str]:
    """The method and, only where they matter, its settings. Returns (method settings, general-text source)."""
    ss = st.session_state
    defaults(**METHOD_DEFAULTS, p_single_task=names_all[0])
    names = [m["name"] for m in list_methods()]
    if ss["p_method"] not in names:
        ss["p_method"] = "diet"
    if ss["p_single_task"] not in names_all:
        ss["p_single_task"] = names_all[0]
    with st.container(border=True):
        c1, c2 = st.columns([1.2, 3])
        c1.selectbox("Method", names, key="p_method", format_func=lambda n: get_method(n).label,
                     help="DIET and its variants (task-aware), the structured-pruning baselines (task-agnostic) and "
                          "two references; see docs/methods.md")
        name = ss["p_method"]
        method = get_method(name)
        c2.markdown(f"**{method.kind}** · {method.description}")
        c2.caption("Reads " + (", ".join(NEEDS[n] for n in method.needs) or "nothing but the model's shape")
                   + (" (weights: norms read once, no forward pass)" if "weights" in method.needs else ""))
        knobs = method_knobs(name, MethodSettings(method=name, calibration=ss["p_calibration"]))
        widgets = [k for k in ("calibration", "general", "tau", "alpha", "fusion_norm", "single_task", "seed",
                               "flap_bias", "pool_weight") if k in knobs]
        cols = st.columns(max(len(widgets), 1)) if widgets else []
        for col, k in zip(cols, widgets):
            if k == "calibration":
                col.radio("Calibration data", list(CALIBRATION), key="p_calibration", format_func=CALIBRATION.get,
                          help="pooled tasks: the same data DIET sees, without the per-task vote — separates "
                               "'task data' from 'voting'")
            elif k == "general":
                col.selectbox("General text", list(GENERAL), key="p_general", format_func=GENERAL.get,
                              help="profiled once per model and source (a forward pass), then cached on disk")
            elif k == "tau":
                col.slider("τ: exclusive above this quantile of the task/general ratio (our default 0.9)", 0.0, 1.0,
                           step=0.05, key="p_tau")
            elif k == "alpha":
                col.slider("α: weight of the general score for shared channels (our default 0.5)", 0.0, 1.0,
                           step=0.05, key="p_alpha")
            elif k == "fusion_norm":
                col.radio("Normalisation before fusing", list(FUSION_NORM), key="p_fusion_norm",
                          format_func=FUSION_NORM.get)
            elif k == "single_task":
                col.selectbox("The task whose mask is used", names_all, key="p_single_task")
            elif k == "seed":
                col.number_input("Seed of the random choice", min_value=0, step=1, key="p_seed")
            elif k == "flap_bias":
                col.toggle("Bias compensation (FLAP): pruned channels' mean contribution added back as a bias",
                           key="p_flap_bias", help="the pruned model then has a bias on down_proj; export writes it "
                                                   "where the model's stock config can carry one (Llama)")
            elif k == "pool_weight":
                col.radio("Pool the tasks' statistics", list(POOL_WEIGHT), key="p_pool_weight",
                          format_func=POOL_WEIGHT.get, help="tokens: the tasks' sums added (a task with longer texts "
                                                            "weighs more); tasks: each task's score weighs 1/T")
        defaults(p_compensation="none")
        st.radio("Compensation after removal", list(COMPENSATION), key="p_compensation", horizontal=True,
                 format_func=COMPENSATION.get,
                 help="training-free, closed form; the mask stays the same. bias: exports where the stock config "
                      "carries an output bias (Llama); lstsq: plain weights, exports everywhere, costs a few forward "
                      "passes over calibration texts when the model is pruned (docs/methods.md)")
    values = {"calibration": ss["p_calibration"], "tau": float(ss["p_tau"]), "alpha": float(ss["p_alpha"]),
              "fusion_norm": ss["p_fusion_norm"], "single_task": ss["p_single_task"], "seed": int(ss["p_seed"]),
              "flap_bias": bool(ss["p_flap_bias"]), "pool_weight": ss["p_pool_weight"]}
    own = {f.name for f in fields(MethodSettings)} & knobs  # only the knobs of this method; the rest as default
    return MethodSettings(method=name, **{k: values[k] for k in own}), ss["p_general"]


def controls(names_all: list[str], ms: MethodSettings) -> tuple[MaskSettings, list[str]]:
    ss = st.session_state
    knobs = mask_knobs(ms.method, ms)
    defaults(**MASK_DEFAULTS, p_vote_tasks=list(names_all), p_threshold=len(names_all) // 2 + 1)
    if not ss["p_vote_tasks"] or not set(ss["p_vote_tasks"]) <= set(names_all):
        ss["p_vote_tasks"] = list(names_all)
    with st.container(border=True):
        c1, c2, c3, c4 = st.columns([2.2, 1.5, 1.2, 1.6])
        c1.slider("Sparsity: fraction of MLP channels removed", 0.0, 0.95, step=0.01, key="p_sparsity",
                  help="per task mask, keep the top (1 − sparsity) channels by score; 0.2 is our default")
        T = len(ss["p_vote_tasks"])
        threshold = None
        if "merge" in knobs:
            c2.radio("Merge the task masks", list(MERGE), key="p_merge", format_func=MERGE.get,
                     help="exact budget: rank channels by votes (ties: mean normalised score) and keep exactly the "
                          "target count; threshold: keep a channel if at least k task masks keep it")
            if ss["p_merge"] == "threshold":
                if not 1 <= ss["p_threshold"] <= T:
                    ss["p_threshold"] = T // 2 + 1
                if T > 1:
                    c2.slider(f"Keep if at least k of {T} tasks keep it (strict majority {T // 2 + 1} is our "
                              "default)", 1, T, step=1, key="p_threshold")
                threshold = int(ss["p_threshold"])
        if "score" in knobs:
            c3.radio("Channel score", list(SCORE), key="p_score", format_func=SCORE.get,
                     help="both come from the same cached sums: mean |x| or sqrt(mean x²) of the channel's "
                          "activation")
        if "allocation" in knobs:
            c4.radio("Allocation", list(ALLOC), key="p_allocation", format_func=ALLOC.get,
                     help="per layer: a stock config after export; global: layers compete after per-layer "
                          "normalisation (widths then differ per layer)")
        else:
            c4.markdown("**Allocation**: global ranking across layers (part of the method)")
        if get_method(ms.method).own_allocation or ss["p_allocation"] == "global":
            c4.slider("Minimum kept fraction per layer", 0.01, 1.0, step=0.01, key="p_min_keep")
        if "tasks" in knobs and ms.method != "single-task":
            voted = get_method(ms.method).merges_tasks
            label = "Tasks in the vote" if voted else "Tasks pooled into the calibration set"
            st.multiselect(label, names_all, key="p_vote_tasks")
    merge = ss["p_merge"] if "merge" in knobs else "budget"
    settings = MaskSettings(sparsity=float(ss["p_sparsity"]), score=ss["p_score"] if "score" in knobs else "mean_abs",
                            merge=merge, threshold=threshold if merge == "threshold" else None,
                            allocation=ss["p_allocation"] if "allocation" in knobs else "layer",
                            min_keep=float(ss["p_min_keep"]))
    return settings, list(ss["p_vote_tasks"])


def general_stats(lm, source: str, ps):
    """General-text statistics of this model and source: from the session, else from the disk cache (local
    sources, no forward pass), else None (the page then offers the profiling job)."""
    memo = st.session_state.setdefault("general_stats", {})
    key = general_key(lm, source, ps)
    if key not in memo:
        hit = cached_general(lm, source, ps)
        if hit is not None:
            memo[key] = hit
    return memo.get(key)


def weights_of(lm, unit: str) -> dict:
    """Weight norms of the loaded model, read once per model (no forward pass)."""
    memo = st.session_state.setdefault("weights_memo", {})
    key = (lm.identity, lm.spec.dtype, unit)
    if key not in memo:
        memo.clear()
        memo[key] = weight_stats(lm.model, unit)
    return memo[key]


def general_section(lm, ms: MethodSettings, source: str, ps) -> None:
    """What the page shows while the general-text statistics are missing: why, how long, and the job."""
    text = f"**{ms.method}** reads statistics on general text ({GENERAL[source]})."
    if source == "generated":
        from diet.general import general_task

        eta = estimate_seconds(lm, [general_task(source)], ps)
        text += f" Profile them once: a forward pass over {ps.samples} texts, about {eta:.0f} s"
    else:
        text += f" Profile them once: a forward pass over {ps.samples} texts"
    st.info(text + " — cached on disk, so afterwards this method (and every other that needs them) is instant.")
    busy = runner().active() is not None
    if st.button("Profile the general text", type="primary", disabled=busy, key="btn_general"):
        start_job("general", f"Profiling general text ({source})", general_job(lm, source, ps))
        st.rerun()
    job_panel(("general",), key="main")


def build(stats: dict, settings: MaskSettings, vote_tasks: list[str], ms: MethodSettings, source: str):
    """The mask of the chosen method, or None while its general-text statistics are being made."""
    sub = {n: stats[n] for n in vote_tasks}
    if ms.method == "diet":  # no model, no forward pass; build_mask's result from ranks computed once
        ranked = ranks_memo((tuple(id(sub[n]) for n in sub), settings.score, "ranked"),
                            lambda: ranked_scores(sub, settings.score))
        return build_mask(sub, settings, ranked)
    ps = recorded_profile_settings(stats, profile_settings())
    lm = current_model() if needs_model(ms.method, ms) else None
    general = None
    if needs_general(ms.method, ms):
        general = general_stats(lm, source, ps)
        if general is None:
            general_section(lm, ms, source, ps)
            return None
    weights = weights_of(lm, ps.unit) if "weights" in get_method(ms.method).needs else None
    shape = model_shape(lm.model, ps.unit) if lm is not None else None
    return mask_from(stats if ms.method == "single-task" else sub, settings, ms, shape, general, weights, source)


def headline(result) -> None:
    s = result.summary
    st.markdown(f"Method: **{settings_summary(result)}**")
    c = st.columns(4)
    c[0].metric(f"MLP channels kept (of {s['units_total']:,})", f"{s['units_kept']:,}")
    c[1].metric("Removed: share of MLP channels", f"{s['unit_sparsity']:.1%}")
    c[2].metric("Removed: share of all parameters", f"{s['param_sparsity']:.1%}",
                help=f"{s['params_removed']:,} of {s['params_total']:,} parameters")
    c[3].metric("Layer widths", "uniform" if s["uniform"] else "per layer",
                help="uniform: every layer keeps the same count, so the export is a smaller stock model; per layer: "
                     "widths differ (padded or heterogeneous export)")


def kept_tab(result, scores: np.ndarray, key: tuple) -> None:
    """`scores` (T, L, I): DIET's per-task scores behind the task masks (or of every profiled task, for a single
    mask: a reference order, the method's own score is not kept)."""
    names = result.tasks
    per_task = not single_mask(result)
    ss = st.session_state
    defaults(p_view="merged", p_sort=True, p_layer=0)
    if ss["p_view"] not in ["merged", *names] or not per_task:
        ss["p_view"] = "merged"
    L = result.mask.shape[0]
    ss["p_layer"] = min(int(ss["p_layer"]), L - 1)
    c1, c2 = st.columns([2, 3])
    if per_task:
        c1.selectbox("Mask", ["merged", *names], key="p_view",
                     format_func=lambda v: f"merged ({method_label(result)}'s vote)" if v == "merged"
                     else f"task: {v}")
    c2.toggle("Sort channels by score, highest first (channel numbers carry no meaning in an MLP)", key="p_sort")
    if not per_task:
        c2.caption(f"{method_label(result)} keeps no per-channel score here: channels are sorted by DIET's mean score "
                   "over the profiled tasks, a reference order (where the two agree, kept channels gather left).")
    mean = memo((*key, "mean"), lambda: scores.mean(0))  # (L, I): no slider changes it
    if ss["p_view"] == "merged":
        title = "Merged mask: kept channels" if per_task else f"{method_label(result)} mask: kept channels"
        mask, sc = result.mask, mean
    else:
        i = names.index(ss["p_view"])
        mask, sc, title = result.task_masks[i], scores[i], f"Task mask of {names[i]}: kept channels"
    order = memo((*key, "order", ss["p_view"]), lambda: viz.order_by(sc)) if ss["p_sort"] else None
    chart(viz.kept_overview(mask, title, order), "overview", viz.CAPTIONS["kept_overview"])
    if L > 1:
        st.slider("Layer for the full-resolution view", 0, L - 1, step=1, key="p_layer")
    layer = int(ss["p_layer"])
    rows = {"merged" if per_task else method_label(result): result.mask[layer]}
    if per_task:
        rows.update({n: result.task_masks[i, layer] for i, n in enumerate(names)})
    chart(viz.layer_strip(layer, rows, mean[layer], sort=bool(ss["p_sort"]),
                          score_name="score" if per_task else "DIET score"), "strip", viz.CAPTIONS["layer_strip"])


def votes_tab(result) -> None:
    if single_mask(result):
        voting = ", ".join(m["name"] for m in list_methods() if get_method(m["name"]).merges_tasks)
        st.info(f"{method_label(result)} gives one mask, not one per task: votes belong to the methods that merge "
                f"task masks ({voting}).")
        return
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
    if single_mask(result):
        st.info(f"{method_label(result)} gives one mask, not one per task: there is no overlap between tasks to "
                "show. Compare methods by measuring them: the Sweep page.")
        return
    if T < 2:
        st.info("Overlap needs at least two tasks in the vote.")
        return
    s = result.settings
    halves = ranks_memo((*key, "halves"), lambda: half_ranks(stats, s.score))
    split = memo((*key, "split", s.sparsity, s.allocation, s.min_keep), lambda: split_halves(result, stats, halves))
    chance = viz.chance_matrix(result.task_masks)  # the references and the Jaccard figure's hover both read it
    refs = overlap_refs(result, stats, split, chance)
    st.caption("A Jaccard number alone misleads: random masks of the same size already overlap. Each figure is "
               "shown next to its references. Nothing here says the voted mask is better: measure it on the "
               "Prune and evaluate page.")
    for key, fig, caption in (
        ("jaccard", viz.jaccard_matrix(np.asarray(result.summary["jaccard"]), names, chance),
         viz.CAPTIONS["jaccard_matrix"]),
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


def who_loses_section(result, stats: dict, key: tuple) -> None:
    """Each task's own top-k and score mass kept by this mask, against pooled and random masks of the same size."""
    st.subheader("Who loses in the merge")
    s = result.settings
    ranks = None
    if result.method == "diet":  # ranks computed once per statistics: a slider move then only compares
        sub = mask_stats(result, stats)
        ids = tuple(id(sub[n]) for n in sub)
        ranked = ranks_memo((ids, s.score, "ranked"), lambda: ranked_scores(sub, s.score))
        ranks = ranks_memo((ids, s.score, "who_loses"), lambda: who_loses_ranks(sub, s.score, ranked))
    fig, reading = memo((*key, "who_loses", result.method, s.sparsity, s.merge, s.threshold, s.allocation,
                         s.min_keep, result.mask.tobytes()), lambda: who_loses_view(result, stats, ranks))
    st.markdown(f"**{reading}**")
    chart(fig, "who_loses", viz.CAPTIONS["who_loses"])


def layers_tab(result) -> None:
    s = result.summary
    per_task = result.task_masks.sum(-1) if not single_mask(result) else None
    chart(viz.kept_per_layer(M.kept_per_layer(result.mask), result.shape.widths, per_task, result.tasks),
          "kept_per_layer", viz.CAPTIONS["kept_per_layer"])
    chart(viz.params_breakdown(s), "params", viz.CAPTIONS["params"])


def page(stats: dict, slot) -> None:
    ms, source = method_controls(list(stats))
    settings, vote_tasks = controls(list(stats), ms)
    result = build(stats, settings, vote_tasks, ms, source)
    active = runner().active()
    if result is None:
        return
    comp = st.session_state.get("p_compensation", "none")
    if comp != "none":
        general = general_stats(current_model(), source, recorded_profile_settings(stats, profile_settings())) \
            if comp == "bias" and needs_general(ms.method, ms) else None
        result = with_compensation(result, comp, stats, ms, general)
    if active is not None and active.kind == "general":  # switched method while it runs: progress stays here
        job_panel(("general",), key="main")
    st.session_state["mask_result"] = result
    mask_note(slot, result)
    headline(result)
    sub = mask_stats(result, stats)
    names = list(sub)
    key = (tuple(id(sub[n]) for n in names), settings.score)
    scores = memo((*key, "scores"), lambda: task_scores(sub, names, settings.score))
    t1, t2, t3, t4 = st.tabs(["Kept channels", "Votes", "Overlap between tasks", "Per layer and parameters"])
    with t1:
        kept_tab(result, scores, key)
    with t2:
        votes_tab(result)
    with t3:
        overlap_tab(result, sub, key)
        who_loses_section(result, stats, key)
    with t4:
        layers_tab(result)


stats_page(("general",), "2 · Masks", page)
