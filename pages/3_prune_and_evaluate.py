"""Page 3: prune for real and measure, on demand: dense vs pruned side by side, for the mask of the Masks page (any
method). Comparing methods over several sparsities is the Sweep page's job.

Evaluation runs as a background job (progress, cancel) and every number is cached per model, task, limit and
mask, in the session and on disk, so going back and forth costs nothing."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diet import viz
from diet.api import compensation_of, tasks_of
from diet.compare import SPEED_BATCH, SPEED_TOKENS, speed_key
from diet.evaluate import EvalSettings, average
from diet.report import comparison_table, counts_notes, mask_stats, settings_summary
from pages._common import (
    chart,
    current_mask,
    current_model,
    defaults,
    job_panel,
    runner,
    start_job,
    stats_page,
)
from pages._try import changed_items_section, try_it_panel
from pages._work import compare_job, speed_job


def eval_settings_section(tasks: list) -> tuple[EvalSettings, list]:
    ss = st.session_state
    names = [t.name for t in tasks if t.evaluation]
    defaults(p_eval_tasks=names, p_limit=50, p_eval_batch=16)
    if not set(ss["p_eval_tasks"]) <= set(names):
        ss["p_eval_tasks"] = names
    c1, c2, c3 = st.columns([3, 1, 1])
    c1.multiselect("Tasks to evaluate", names, key="p_eval_tasks")
    c2.number_input("Items per task (0 = all)", min_value=0, step=10, key="p_limit",
                    help="a limit gives a quick PREVIEW on the first items; it is marked as such everywhere")
    c3.number_input("Batch size", min_value=1, max_value=512, step=1, key="p_eval_batch")
    limit = int(ss["p_limit"]) or None
    chosen = [t for t in tasks if t.name in ss["p_eval_tasks"]]
    return EvalSettings(limit=limit, batch_size=int(ss["p_eval_batch"])), chosen


def speed_section(col, lm, result, comp: dict, stats: dict) -> None:
    """The forward-speed metric, measured on demand (its own job, `speed_job`) and kept in the session by the
    mask's digest: the comparison itself does what `diet eval` does, no timing."""
    if comp["digest"] != result.digest():
        col.caption("Forward speed: evaluate the current mask first.")
        return
    memo = st.session_state.setdefault("speed_memo", {})
    speed = memo.get(speed_key(lm, comp["digest"]))
    busy = runner().active() is not None
    if speed is None:
        label, again = "Measure forward speed", False
        col.caption(f"Forward speed: not measured yet ({SPEED_BATCH} × {SPEED_TOKENS} tokens through both models, "
                    "a few seconds).")
    else:
        comp["speed"] = speed  # so the Export page's report carries it, for this mask
        col.metric("Forward speed (measured)", f"{speed['pruned']:,.0f} tok/s",
                   f"{speed['pruned'] / speed['dense'] - 1:+.0%} vs dense {speed['dense']:,.0f} tok/s",
                   help=f"the same batch ({SPEED_BATCH} × {SPEED_TOKENS} tokens) through both models, timed "
                        "alternately; median of 3 after a warm-up. On a busy shared CPU the ratio is noisy: measure "
                        "again before concluding")
        label, again = "Measure again", True
    if col.button(label, disabled=busy, key="btn_speed"):
        start_job("speed", "Measuring forward speed, dense vs pruned", speed_job(lm, result, memo, stats, again))
        st.rerun()


def comparison_section(comp: dict, lm, result, stats: dict) -> None:
    digest = result.digest()
    if comp["digest"] != digest:
        st.warning(f"These results are for an earlier mask ({comp['sparsity']:.0%} of MLP channels removed, "
                   f"{comp.get('described', comp['settings']['merge'] + ' merge')}). Run again to measure the "
                   "current one.")
    for note in counts_notes(comp["dense"]):
        st.info(note)
    size = comp["size"]
    dense_avg, pruned_avg = average(comp["dense"]), average(comp["pruned"])
    p_dense, p_pruned = size["dense"]["params"], size["pruned"]["params"]
    c = st.columns(4)
    c[0].metric("Average accuracy (primary metric)", f"{pruned_avg:.1%}",
                f"{(pruned_avg - dense_avg) * 100:+.1f} points vs dense {dense_avg:.1%}")
    c[1].metric("Parameters", f"{p_pruned / 1e6:.1f} M", f"{p_pruned / p_dense - 1:+.1%} vs {p_dense / 1e6:.1f} M",
                delta_color="inverse")
    c[2].metric("Size in memory", f"{size['pruned']['mb']:.0f} MB",
                f"{size['pruned']['mb'] / size['dense']['mb'] - 1:+.1%} vs {size['dense']['mb']:.0f} MB",
                delta_color="inverse")
    speed_section(c[3], lm, result, comp, stats)
    tasks = comp["tasks"]
    chart(viz.accuracy_bars(tasks + ["average"], [r.value for r in comp["dense"]] + [average(comp["dense"])],
                            [r.value for r in comp["pruned"]] + [average(comp["pruned"])]), key="accuracy")
    st.caption(viz.CAPTIONS["accuracy"])
    table = pd.DataFrame(comparison_table(comp))
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in table.columns
                                if c not in ("task", "metric", "items")})
    st.caption("dense / pruned: each task's primary metric; acc: the highest log-likelihood choice is right; "
               "acc_norm: the same, length-normalised (lm-eval conventions). Averages are unweighted over tasks.")


def page(lm, stats: dict) -> None:
    result = current_mask(stats)
    s = result.summary
    st.markdown(f"Current mask: **{settings_summary(result)}** on tasks **{', '.join(mask_stats(result, stats))}**, "
                f"**{s['unit_sparsity']:.1%}** of MLP channels removed = **{s['param_sparsity']:.1%}** of all "
                "parameters" + (" (with FLAP's bias compensation)." if result.compensation is not None else
                                " (with the lstsq refit)." if compensation_of(result) is not None else "."))
    st.page_link("pages/2_masks.py", label="Change the mask or the method", icon="⬅️")
    tasks = tasks_of(stats)
    settings, chosen = eval_settings_section(tasks)
    busy = runner().active() is not None
    n_req = sum(len(it.requests()) for t in chosen for it in t.evaluation[: settings.limit])
    if st.button(f"Prune and evaluate, dense vs pruned ({n_req:,} scored choices per model)", type="primary",
                 disabled=busy or not chosen, key="btn_evaluate"):
        memo = st.session_state.setdefault("eval_memo", {})
        start_job("compare", "Evaluating dense vs pruned", compare_job(lm, result, chosen, settings, memo, stats))
        st.rerun()
    job_panel(("compare", "speed"), key="main")
    comp = st.session_state.get("comparison")
    if comp:
        comparison_section(comp, lm, result, stats)
        changed_items_section(comp, tasks)
    try_it_panel(lm, result, stats, chosen)
    st.page_link("pages/5_sweep.py", label="Accuracy vs sparsity, several methods side by side: the Sweep page",
                 icon="➡️")


stats_page(("compare", "speed", "generate"), "3 · Prune and evaluate",
           lambda stats, _slot: page(current_model(), stats))
