"""DIET Explorer, the app: `streamlit run app.py` (binds to localhost: see .streamlit/config.toml).

This file is the landing page and the navigation. Every page is a thin view over the engine (diet/): widgets,
figures from diet.viz, background jobs from diet.jobs (taking turns through diet.gate, on models shared through
diet.sharing); each page starts with pages._common.prologue() (settings kept across page switches, finished
background jobs collected, the sidebar).
"""

from __future__ import annotations

import streamlit as st

from pages._common import model_spec, prologue

st.set_page_config(page_title="DIET Explorer", page_icon="✂️", layout="wide")

MODEL = "pages/1_model_and_tasks.py"
MASKS = "pages/2_masks.py"
PRUNE = "pages/3_prune_and_evaluate.py"
EXPORT = "pages/4_export.py"
SWEEP = "pages/5_sweep.py"
DISP = "pages/6_disp.py"


def home() -> None:
    prologue()
    st.title("DIET Explorer")
    st.markdown(
        "Task-aware, training-free **structured pruning** of language models. Profile a few tasks once "
        "(activation statistics are cached), then explore instantly which MLP channels each task needs, how much "
        "the tasks agree, and what DIET's majority vote keeps. Prune for real, measure dense vs pruned side by "
        "side, and export a model folder that loads with plain `transformers`.")
    stats = st.session_state.get("stats") or {}
    result = st.session_state.get("mask_result")
    comp = st.session_state.get("comparison")
    steps = [
        (MODEL, "1 · Model and tasks", f"model **{model_spec().name}**; "
         + (f"{len(stats)} task(s) profiled: {', '.join(stats)}" if stats else "no task profiled yet")),
        (MASKS, "2 · Masks", f"method **{result.method}**, sparsity {result.settings.sparsity:.0%}, "
         f"{result.summary['param_sparsity']:.1%} of the parameters removed" if result else
         "DIET or any baseline method; instant: everything from the cached statistics"),
        (PRUNE, "3 · Prune and evaluate", "results measured" if comp else "dense vs pruned, accuracy and speed"),
        (EXPORT, "4 · Export", "a model folder, the mask (JSON) and an HTML report"),
        (SWEEP, "5 · Sweep", "results of the last sweep in this session" if st.session_state.get("sweep") else
         "methods × sparsities × tasks: a results table (CSV) and accuracy-vs-sparsity curves, each cell cached"),
        (DISP, "6 · DISP structure", "DISP-LLM's per-block residual dims, chosen without training by DIET's vote: "
         "same sliders, per-position heatmaps, evaluate and export"),
    ]
    for page, label, note in steps:
        c1, c2 = st.columns([1, 3])
        c1.page_link(page, label=label)
        c2.markdown(note)
    st.caption("Works offline on the embedded default model (smollm2-135m, SmolLM2-135M-Instruct) and the offline "
               "task suite. Hub models and benchmarks need network. Where the DIET paper is silent, the app uses "
               "choices marked \"our default\" and lets you change them.")


pages = [st.Page(home, title="Overview", icon=":material/home:", default=True),
         st.Page(MODEL, title="Model and tasks", icon=":material/model_training:"),
         st.Page(MASKS, title="Masks", icon=":material/grid_on:"),
         st.Page(PRUNE, title="Prune and evaluate", icon=":material/content_cut:"),
         st.Page(EXPORT, title="Export", icon=":material/download:"),
         st.Page(SWEEP, title="Sweep", icon=":material/monitoring:"),
         st.Page(DISP, title="DISP structure", icon=":material/view_column:")]
st.navigation(pages).run()
