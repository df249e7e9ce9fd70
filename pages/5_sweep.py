"""Page 5: the sweep — methods × sparsities × tasks → a tidy results table (CSV) and accuracy-vs-sparsity curves.

The work is diet.sweep.run_sweep in a background job (progress per cell, cancel between cells). Each cell (one
method × sparsity × evaluation task number) is cached on disk under everything that determines it, so running again
reuses the finished cells: an interrupted sweep resumes, a wider one only measures what is new."""

from __future__ import annotations

from dataclasses import asdict, replace

import streamlit as st

from diet import sweep as S
from diet.api import recorded_profile_settings, tasks_of
from diet.errors import DietError
from diet.methods import get_method, list_methods, needs_general
from diet.report import SWEEP_CAPTION
from diet.settings import COMPENSATIONS, MaskSettings, MethodSettings
from diet.sweep import SweepSettings
from pages._common import (
    chart,
    current_model,
    defaults,
    job_panel,
    knob_settings,
    profile_settings,
    runner,
    start_job,
    stats_page,
)
from pages._work import sweep_job

CHOICES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
DEFAULT_METHODS = ["diet", "task-agnostic", "wanda-sp", "random"]


def task_ref(task) -> str:
    """What diet.tasks.get_task resolves back to this task: its name, or the path of an uploaded file."""
    return task.source.removeprefix("file:") if task.source.startswith("file:") else task.name


def controls(names: list[str]) -> tuple[list[str], list[float], list[str], int | None, int]:
    ss = st.session_state
    defaults(p_sweep_methods=list(DEFAULT_METHODS), p_sweep_sparsities=[0.1, 0.2, 0.3, 0.4, 0.5],
             p_sweep_tasks=list(names), p_sweep_limit=50, p_sweep_batch=16)
    if not set(ss["p_sweep_tasks"]) <= set(names):
        ss["p_sweep_tasks"] = list(names)
    with st.container(border=True):
        st.multiselect("Methods", [m["name"] for m in list_methods()], key="p_sweep_methods",
                       format_func=lambda n: get_method(n).label,
                       help="every method of the registry; single-task runs once per task")
        c1, c2 = st.columns([2, 3])
        c1.multiselect("Sparsities (fraction of MLP channels removed)", CHOICES, key="p_sweep_sparsities",
                       format_func=lambda s: f"{s:.0%}")
        c2.multiselect("Tasks: calibration of the task-aware methods, and evaluation", names, key="p_sweep_tasks")
        c3, c4 = st.columns([1, 1])
        c3.number_input("Evaluation items per task (0 = all)", min_value=0, step=10, key="p_sweep_limit",
                        help="a limit gives a quick PREVIEW on the first items of each task: noisy, and not "
                             "comparable with published numbers; it is marked as such in the table")
        c4.number_input("Evaluation batch size", min_value=1, max_value=512, step=1, key="p_sweep_batch",
                        help="does not change any number (not part of the cache key)")
        defaults(p_sweep_compensations=["none"])
        st.multiselect("Compensation after removal (each method × sparsity once per choice)", list(COMPENSATIONS),
                       key="p_sweep_compensations",
                       help="none: the method's own; bias: removed units' mean contribution added back; lstsq: the "
                            "output projection refitted from the kept units on the tasks' calibration texts "
                            "(a few forward passes per pruned model); see docs/methods.md")
    methods = list(ss["p_sweep_methods"])
    sparsities = sorted(float(s) for s in ss["p_sweep_sparsities"])
    return methods, sparsities, list(ss["p_sweep_tasks"]), int(ss["p_sweep_limit"]) or None, int(ss["p_sweep_batch"])


def settings_note(methods: list[str], mask: MaskSettings, ms: MethodSettings, general: str) -> None:
    """Which Masks-page settings the sweep uses (only those that matter for the chosen methods)."""
    parts = [f"{'mean |x|' if mask.score == 'mean_abs' else 'RMS'} score",
             "exact-budget vote" if mask.merge == "budget" else f"vote threshold k = {mask.threshold or 'majority'}",
             "same count in every layer" if mask.allocation == "layer"
             else f"global allocation (at least {mask.min_keep:.0%} per layer)"]
    if "task-fusion" in methods:
        parts.append(f"task-fusion τ = {ms.tau:g}, α = {ms.alpha:g}, {ms.fusion_norm}")
    if any(get_method(m).calibrated for m in methods):
        parts.append("baselines calibrated on " + ("the pooled tasks" if ms.calibration == "tasks" else
                                                     "general text"))
    if any(needs_general(m, ms) for m in methods):
        parts.append(f"general text: {general}")
    if "random" in methods:
        parts.append(f"random seed {ms.seed}")
    if "flap" in methods:
        parts.append("FLAP " + ("with" if ms.flap_bias else "without") + " bias compensation")
    st.caption("Mask and method settings as on the Masks page: " + "; ".join(parts) + ".")
    st.page_link("pages/2_masks.py", label="Change them on the Masks page", icon="⬅️")


def pruned_means(rows: list[dict]):
    """diet.sweep.mean_table without the dense row (it has one sparsity, 0: the page states it above the table),
    columns named as percentages."""
    means = S.mean_table([r for r in rows if r["method"] != "dense"])
    means.columns = [f"{c:.0%}" for c in means.columns]
    return means


def results_section(sweep: dict, current: dict | None) -> None:
    rows = sweep["rows"]
    if current is not None and {k: sweep[k] for k in current} != current:
        st.warning("These results are from an earlier sweep with other settings: run the sweep to measure the "
                   "current ones (cells measured before are reused).")
    st.info(f"{sweep['cached']} of {sweep['total']} cells cached (read, not evaluated again); "
            f"{sweep['evaluated']} evaluated in this run. A cell is one method × sparsity × task number; the dense "
            "model is one more row per task.")
    lim = sweep["settings"]["limit"]
    if lim:
        scored = {r["task"]: r["n"] for r in rows if r["method"] == "dense" and r.get("preview")}  # each task's own
        st.info("Preview: the first " + (", ".join(f"{n} items of {t}" for t, n in scored.items()) or
                                         f"{lim} evaluation items of each task")
                + ". Preview numbers are noisy and not comparable with published ones; set items to 0 for all.")
    chart(S.figure(rows).update_layout(title="Accuracy vs sparsity (measured)"), key="sweep_fig")
    st.caption(SWEEP_CAPTION)
    means = pruned_means(rows)
    dense = S.mean_table([r for r in rows if r["method"] == "dense"])
    st.markdown("**Mean over tasks** (each task's primary metric; columns: sparsity)"
                + (f" — dense model: **{float(dense.iloc[0, 0]):.1%}**" if len(dense) else ""))
    st.dataframe(means, width="stretch", column_config={c: st.column_config.NumberColumn(format="percent")
                                                         for c in means.columns})
    table = S.table(rows)
    st.markdown("**Tidy table** (one row per method × sparsity × task)")
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Download the table (CSV)", data=table.to_csv(index=False), file_name="diet-sweep.csv",
                       mime="text/csv", on_click="ignore", key="dl_sweep")


def page(stats: dict) -> None:
    tasks = tasks_of(stats)
    names = [t.name for t in tasks]
    methods, sparsities, chosen, limit, batch = controls(names)
    mask, ms, general = knob_settings()
    # run_sweep keys each cell on the whole MaskSettings; its sparsity is replaced per cell, so pin it to the
    # default: moving the Masks page's slider must not make every finished cell look new
    mask = replace(mask, sparsity=MaskSettings().sparsity)
    settings, problem = None, None
    with_items = [t for t in tasks if t.name in chosen and t.evaluation]
    if not methods:
        problem = "Choose at least one method to sweep."
    elif not sparsities:
        problem = "Choose at least one sparsity."
    elif not chosen:
        problem = "Choose at least one task."
    elif not with_items:
        problem = "None of the chosen tasks has evaluation items (text-only task files can only calibrate)."
    else:
        try:
            refs = {t.name: task_ref(t) for t in tasks}
            evals = tuple(refs[t.name] for t in with_items)
            calib = tuple(refs[n] for n in chosen)
            settings = SweepSettings(methods=tuple(methods), sparsities=tuple(sparsities), tasks=calib,
                                     eval_tasks=None if evals == calib else evals, limit=limit, general=general,
                                     batch_size=batch,
                                     compensations=tuple(st.session_state["p_sweep_compensations"]) or ("none",))
        except DietError as e:
            problem = str(e)
    if settings is not None:
        settings_note(methods, mask, ms, general)
    if problem:
        st.warning(problem)
    busy = runner().active() is not None
    label = "Run the sweep"
    if settings is not None:
        n_models = len(S.cells(settings))
        label += f" ({n_models} pruned models + dense, {S.total_cells(settings)} cells; cached cells are reused)"
    if st.button(label, type="primary", disabled=busy or settings is None, key="btn_sweep"):
        lm = current_model()
        ps = recorded_profile_settings(stats, profile_settings())
        start_job("sweep", f"Sweep: {len(methods)} method(s) × {len(sparsities)} sparsities × {len(with_items)} "
                  "task(s)", sweep_job(lm, settings, ps, mask, ms, st.session_state.get("cluster")))
        st.rerun()
    cluster = st.session_state.get("cluster")
    if cluster is not None:
        st.caption(f"Runs on the Ray cluster **{cluster.address}** (set on Model and tasks; empty there = this "
                   "process).")
    job_panel(("sweep",), key="main")
    sweep = st.session_state.get("sweep")
    if sweep and "rows" in sweep:
        results_section(sweep, None if settings is None else
                        {"settings": asdict(settings), "mask": asdict(mask), "method": asdict(ms)})


stats_page(("sweep",), "5 · Sweep", lambda stats, _slot: page(stats),
           caption="Methods × sparsities × tasks, each pruned model measured for real. Every cell is cached on disk: "
                   "running again, or a wider sweep, reuses the finished cells; a cancelled sweep resumes where it "
                   "stopped.")
