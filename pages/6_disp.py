"""Page 6: DISP structure — DISP-LLM's five index sets per layer, chosen without training from activation statistics
per task and merged by DIET's vote (diet/disp/; docs/disp.md), explored with the same sliders and views.

DISP needs its own statistics (five hook points per layer, not DIET's one): profiled once per task in a background
job and cached on disk, loaded at once when cached. Every slider move then rebuilds the index sets with numpy from
those statistics (no forward pass). Pruning for real, evaluating and exporting are background jobs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diet import viz
from diet.api import recorded_profile_settings, tasks_of
from diet.disp import POSITION_SHORT, POSITION_WHAT, POSITIONS, DispSettings
from diet.disp.views import position_figures, position_rows
from diet.errors import DietError
from diet.evaluate import EvalSettings, average
from diet.folders import check_out_dir
from diet.report import comparison_table, counts_notes
from pages._common import (
    chart,
    choice_words,
    current_model,
    defaults,
    job_panel,
    profile_settings,
    runner,
    start_job,
    stats_page,
)
from pages._disp_work import (
    default_folder,
    disp_compare_job,
    disp_export_job,
    disp_key,
    disp_profile_job,
    load_cached,
    missing_tasks,
    timed_build,
)

SHORT, WHAT = POSITION_SHORT, POSITION_WHAT

KINDS = ("disp_profile", "disp_compare", "disp_export")
MERGE, SCORE, ALLOC = choice_words("merge"), choice_words("score"), choice_words("allocation")


def count(n: int) -> str:
    return f"{n:,}"


def statistics(lm, tasks: list, ps) -> tuple[str, dict | None]:
    """(key, DISP statistics of these tasks): from the session, else from the disk cache (no forward pass, no job),
    else None after offering the profiling job."""
    memo = st.session_state.setdefault("disp_stats_memo", {})
    key = disp_key(lm, tasks, ps)
    if key not in memo:
        missing = missing_tasks(lm, tasks, ps)
        if not missing:
            memo[key] = load_cached(lm, tasks, ps)
        else:
            names = ", ".join(t.name for t in missing)
            st.info(f"DISP reads its own statistics: at five points of every layer (the inputs of attention and "
                    f"MLP after their norms, what each block writes to the residual, the MLP channels). Not cached "
                    f"yet for: **{names}**. One forward pass over each task's calibration texts ("
                    + ", ".join(f"{t.name} {min(ps.samples, len(t.calibration))}" for t in missing)
                    + " texts, the settings of page 1), then cached on disk: the next time they load instantly.")
            if st.button(f"Profile {len(missing)} task(s) at the five positions", type="primary",
                         disabled=runner().active() is not None, key="btn_disp_profile"):
                start_job("disp_profile", f"DISP statistics of {len(tasks)} task(s)",
                          disp_profile_job(lm, tasks, ps, memo))
                st.rerun()
    job_panel(("disp_profile",), key="disp-profile")
    return key, memo.get(key)


def controls(n_tasks: int) -> DispSettings:
    ss = st.session_state
    d = DispSettings()  # the widgets start at the settings' own defaults
    defaults(p_disp_sparsity=d.sparsity, p_disp_merge=d.merge, p_disp_threshold=n_tasks // 2 + 1, p_disp_score=d.score,
             p_disp_allocation=d.allocation, p_disp_min_keep=d.min_keep, p_disp_positions=list(d.positions))
    with st.container(border=True):
        c1, c2, c3, c4 = st.columns([2.2, 1.5, 1.2, 1.6])
        c1.slider("DISP block sparsity: fraction of block parameters removed", 0.0, 0.7, step=0.01,
                  key="p_disp_sparsity", help="the paper's 1 − p: of the weights of q/k/v/o and gate/up/down, this "
                  "fraction is removed (embeddings, norms and lm_head never shrink). One kept fraction for every "
                  "pruned position, chosen so the kept block parameters come closest to p")
        c2.radio("Merge of the task masks", list(MERGE), key="p_disp_merge", format_func=MERGE.get)
        if ss["p_disp_merge"] == "threshold":
            c2.number_input(f"k: keep a dim kept by at least k task masks (1 … {n_tasks})", min_value=1, step=1,
                            key="p_disp_threshold", help="the budget is then approximate (the count is reported)")
        c3.radio("Score", list(SCORE), key="p_disp_score", format_func=SCORE.get)
        c4.radio("Allocation", list(ALLOC), key="p_disp_allocation", format_func=ALLOC.get)
        if ss["p_disp_allocation"] == "global":
            c4.slider("Each layer keeps at least", 0.01, 1.0, step=0.01, key="p_disp_min_keep")
        st.multiselect("Positions pruned (the others keep their full width)", list(POSITIONS),
                       key="p_disp_positions", format_func=lambda p: f"{SHORT[p]} — {WHAT[p]}")
    return DispSettings(sparsity=float(ss["p_disp_sparsity"]), score=ss["p_disp_score"], merge=ss["p_disp_merge"],
                        threshold=int(ss["p_disp_threshold"]) if ss["p_disp_merge"] == "threshold" else None,
                        allocation=ss["p_disp_allocation"], min_keep=float(ss["p_disp_min_keep"]),
                        positions=tuple(p for p in POSITIONS if p in ss["p_disp_positions"]))


def build(key: str, dstats: dict, settings: DispSettings):
    """The index sets of these settings, remembered per statistics and settings (a rerun redraws at once)."""
    memo = st.session_state.setdefault("disp_mask_memo", {})
    if (key, settings) not in memo:
        if len(memo) > 16:
            memo.clear()
        memo[(key, settings)] = timed_build(dstats, settings)
    return memo[(key, settings)]


def figures(result, dstats: dict, pos: str) -> list:
    """A position's figures, remembered with the index sets they show (a rerun from another widget redraws at once)."""
    memo = st.session_state.setdefault("disp_fig_memo", {})
    key = (id(result), pos)
    if key not in memo:
        if len(memo) > 5 * len(POSITIONS):
            memo.clear()
        memo[key] = (result, position_figures(result, dstats, pos))  # holding `result` keeps its id unique
    return memo[key][1]


def accounting(result, seconds: float) -> None:
    s = result.summary
    st.caption(f"Index sets rebuilt from the cached statistics in {seconds * 1000:.0f} ms — numpy only, no forward "
               "pass. Parameters are counted as the paper counts them (weights of q/k/v/o and gate/up/down).")
    c = st.columns(4)
    c[0].metric("Kept block parameters p", f"{s['block_kept_fraction']:.1%}",
                f"target {1 - result.settings.sparsity:.0%}", delta_color="off", delta_arrow="off",
                help=f"{count(s['block_params_kept'])} of {count(s['block_params'])} block weights kept")
    c[1].metric("All parameters removed", f"{s['param_sparsity']:.1%}",
                help="embeddings, norms and lm_head keep their full width, so this is below the block sparsity")
    c[2].metric("Parameters before", count(s["params_total"]))
    c[3].metric("Parameters after", count(s["params_after"]), f"-{count(s['params_removed'])}", delta_color="inverse")
    kept = ", ".join(f"{SHORT[p]} {s['keep_fraction'][p]:.0%}" for p in result.settings.positions)
    st.markdown(f"Kept fraction of every pruned position: {kept}.")


def views(result, dstats: dict) -> None:
    rows = position_rows(result)
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in
                                ("kept", "mean Jaccard between tasks", "chance") if c in table.columns})
    if len(result.tasks) < 2:
        st.info("One task: no vote and no overlap between tasks to show (profile two or more on page 1).")
    tabs = st.tabs([SHORT[p] for p in POSITIONS])
    for tab, pos in zip(tabs, POSITIONS, strict=True):
        with tab:
            st.markdown(f"**{SHORT[pos]}**: {WHAT[pos]}"
                        + ("" if pos in result.settings.positions else " — not pruned (full width)."))
            for key, caption, fig in figures(result, dstats, pos):
                chart(fig, key=key)
                st.caption(caption)


def eval_section(lm, result, tasks: list) -> None:
    ss = st.session_state
    names = [t.name for t in tasks if t.evaluation]
    defaults(p_disp_eval_tasks=names, p_disp_limit=50)
    if not set(ss["p_disp_eval_tasks"]) <= set(names):
        ss["p_disp_eval_tasks"] = names
    c1, c2 = st.columns([3, 1])
    c1.multiselect("Tasks to evaluate", names, key="p_disp_eval_tasks")
    c2.number_input("Items per task (0 = all)", min_value=0, step=10, key="p_disp_limit",
                    help="a limit gives a quick PREVIEW on the first items; it is marked as such")
    settings = EvalSettings(limit=int(ss["p_disp_limit"]) or None)
    chosen = [t for t in tasks if t.name in ss["p_disp_eval_tasks"]]
    n_req = sum(len(it.requests()) for t in chosen for it in t.evaluation[: settings.limit])
    box = ss.setdefault("disp_box", {})
    if st.button(f"Prune with these index sets and evaluate, dense vs DISP ({n_req:,} scored choices per model)",
                 type="primary", disabled=runner().active() is not None or not chosen, key="btn_disp_evaluate"):
        memo = ss.setdefault("eval_memo", {})
        start_job("disp_compare", "Evaluating dense vs DISP", disp_compare_job(lm, result, chosen, settings, memo, box))
        st.rerun()
    job_panel(("disp_compare",), key="disp-eval")
    comp = box.get("comparison")
    if comp and comp["model"] == lm.identity:
        comparison(comp, result.digest())


def comparison(comp: dict, digest: str) -> None:
    if comp["digest"] != digest:
        st.warning(f"These results are for earlier index sets (p = {comp['block_kept_fraction']:.1%}). Run again to "
                   "measure the current ones.")
    for note in counts_notes(comp["dense"]):
        st.info(note)
    size, speed = comp["size"], comp["speed"]
    d_avg, p_avg = average(comp["dense"]), average(comp["pruned"])
    c = st.columns(3)
    c[0].metric("Average accuracy, DISP (primary metric)", f"{p_avg:.1%}",
                f"{(p_avg - d_avg) * 100:+.1f} points vs dense {d_avg:.1%}")
    c[1].metric("Parameters, DISP (counted in the sliced model)", count(size["pruned"]["params"]),
                f"{size['pruned']['params'] / size['dense']['params'] - 1:+.1%} vs dense", delta_color="inverse")
    c[2].metric("Forward speed, DISP (measured)", f"{speed['pruned']:,.0f} tok/s",
                f"{speed['pruned'] / speed['dense'] - 1:+.0%} vs dense {speed['dense']:,.0f} tok/s",
                help="the same batch through both models, timed alternately (median); noisy on a busy CPU")
    tasks = comp["tasks"]
    chart(viz.accuracy_bars(tasks + ["average"], [r.value for r in comp["dense"]] + [d_avg],
                            [r.value for r in comp["pruned"]] + [p_avg], pruned_label="DISP"
                            ).update_layout(title_text="Dense vs DISP (measured)"), key="disp-accuracy")
    table = pd.DataFrame(comparison_table(comp)).rename(columns=lambda c: c.replace("pruned", "DISP"))
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="percent") for c in table.columns
                                if c not in ("task", "metric", "items")})


def export_section(lm, tasks: list, ps, settings: DispSettings) -> None:
    ss = st.session_state
    box = ss.setdefault("disp_box", {})
    c1, c2 = st.columns([3, 1])
    out = c1.text_input("Output folder", value=default_folder(lm, settings), key="disp_out_dir",
                        help="must be new or empty (or tick overwrite); written atomically")
    overwrite = c2.checkbox("Overwrite a non-empty folder", key="disp_overwrite")
    if st.button("Export the DISP model folder", disabled=runner().active() is not None, key="btn_disp_export"):
        try:
            check_out_dir(out.strip(), overwrite)  # the engine's own refusal, said at once (the job checks again)
        except DietError as e:
            st.error(str(e))
        else:
            start_job("disp_export", f"Exporting DISP to {out.strip()}",
                      disp_export_job(lm, tasks, out.strip(), ps, settings, overwrite, box))
            st.rerun()
    job_panel(("disp_export",), key="disp-export")
    if box.get("exported"):
        st.markdown(f"Written to `{box['exported']}` (its own config and modelling file: no DIET needed). Load it:")
        st.code('from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained('
                f'"{box["exported"]}", trust_remote_code=True)', language="python")


def page(lm, stats: dict) -> None:
    st.markdown("DISP-LLM prunes the **residual dimension independently in every block**: each layer keeps its own "
                "residual dims for the attention input and output, the MLP input and output, and its own MLP "
                "channels. Here the index sets are chosen **without training** (our adaptation): per-task "
                "activation statistics at those five positions, a top-k per task, merged by DIET's vote. "
                "See docs/disp.md.")
    tasks = tasks_of(stats)
    ps = recorded_profile_settings(stats, profile_settings())
    key, dstats = statistics(lm, tasks, ps)
    if dstats is None:
        return
    try:  # a bad k, an unreachable sparsity, no position: the engine's message, the sliders stay usable
        settings = controls(len(dstats))
        result, seconds = build(key, dstats, settings)
    except DietError as e:
        st.error(str(e))
        return
    st.session_state["disp_result"] = result
    accounting(result, seconds)
    views(result, dstats)
    st.subheader("Prune and evaluate")
    eval_section(lm, result, tasks)
    st.subheader("Export")
    export_section(lm, tasks, ps, settings)


stats_page(KINDS, "6 · DISP structure", lambda stats, _slot: page(current_model(), stats))
