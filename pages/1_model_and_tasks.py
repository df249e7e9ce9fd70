"""Page 1: pick the model and the tasks, see which tasks are already profiled, profile the rest in the background."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diet.adapters import model_shape, parameter_shares, shares_words
from diet.api import embedded_licence, embedded_models, estimate_seconds, is_profiled
from diet.errors import DietError
from diet.settings import DEFAULT_MODEL, ModelSpec, ProfileSettings
from diet.tasks import get_task, list_tasks
from pages._common import (
    current_model,
    defaults,
    forget_results,
    job_panel,
    model_spec,
    page_errors,
    prologue,
    runner,
    server,
    start_job,
)
from pages._work import cluster_settings, profile_job, save_upload

DTYPES = {"auto (checkpoint's)": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
BNB_NOTE = ("8/4-bit statistics are not the fp ones: on SmolLM2-135M (3 tasks x 32 texts) the 20% masks they give "
            "agree with the fp32 masks at Jaccard 0.96 (8-bit) and 0.85 (4-bit), against 0.67 for two random masks "
            "(bench/bnb_jaccard.py, docs/performance.md). Profile in bf16/fp when the model fits.")
QUANT = ["none", "8bit", "4bit"]


def seconds_text(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def embedded_words() -> str:
    return "; ".join(f"'{n}' = {e.title}, licence: {e.licence}" for n, e in embedded_models().items())


def licence_note(name: str) -> None:
    """The loaded embedded model's licence, with its text when the package ships one (Gemma: GEMMA_TERMS.html)."""
    e = embedded_models().get(name)
    if e is None:
        return
    path = embedded_licence(name)
    st.caption(f"{e.title}. Licence: **{e.licence}**" + (" (its text ships with the model's package)." if path
                                                        else "."))
    if path is not None:
        st.download_button(f"{e.licence} ({path.name})", path.read_bytes(), file_name=path.name, mime="text/html",
                           key="licence_text")


def model_section():
    spec = model_spec()
    with st.form("model"):
        c1, c2, c3, c4 = st.columns([3, 1.3, 1, 1])
        name = c1.text_input("Model", value=spec.name,
                             help=f"Embedded, offline: {embedded_words()} ('{DEFAULT_MODEL}' is the default); "
                                  "or a Hugging Face id such as google/gemma-2-2b (needs network); or a local folder")
        revision = c2.text_input("Revision", value=spec.revision or "", placeholder="main",
                                 help="hub branch, tag or commit (hub ids only)")
        labels = list(DTYPES)
        dtype = DTYPES[c3.selectbox("dtype", labels, index=list(DTYPES.values()).index(spec.dtype),
                                    help="weights dtype in memory and in exports; auto = the dtype the checkpoint "
                                         "was saved in (the embedded default is stored float32); statistics are "
                                         "always summed in fp32")]
        quant = c4.selectbox("8/4-bit", QUANT, index=QUANT.index(spec.quantization or "none"),
                             help="bitsandbytes loading (needs bitsandbytes and accelerate): less memory for "
                                  "profiling a large model; a quantized model cannot be pruned")
        if st.form_submit_button("Load model"):
            new = ModelSpec(name=name.strip() or DEFAULT_MODEL, revision=revision.strip() or None, dtype=dtype,
                            quantization=None if quant == "none" else quant)
            if new != spec:
                st.session_state["spec"] = new
                forget_results()
    st.caption(f"Embedded, offline: {embedded_words()}.")
    lm = current_model()
    if "replaced_note" in st.session_state:
        st.warning(st.session_state.pop("replaced_note"))
    shape = model_shape(lm.model)
    st.success(f"**{lm.spec.name}** is loaded: {shape.family} family, {shape.layers} layers × "
               f"{shape.widths[0]} MLP channels, {shape.total_params / 1e6:.0f} M parameters ({lm.spec.dtype}); "
               f"{shares_words(parameter_shares(lm.model))}.")
    licence_note(lm.spec.name)
    if lm.spec.quantization:
        st.info(BNB_NOTE)
    return lm


def resolve(ref: str):
    """get_task, remembered per session (a Hub task that failed offline is not retried on every rerun)."""
    memo = st.session_state.setdefault("task_memo", {})
    if ref not in memo:
        try:
            memo[ref] = get_task(ref)
        except DietError as e:
            memo[ref] = str(e)
    return memo[ref]


def chosen_tasks() -> list:
    infos = list_tasks()
    offline = {i.name: i for i in infos if i.source == "offline"}
    hub = {i.name: i for i in infos if i.source != "offline"}
    defaults(p_offline=[], p_hub=[], p_samples=100, p_max_length=256, p_seed=0, p_batch=8)
    c1, c2 = st.columns(2)
    c1.multiselect("Offline task suite (no network needed)", list(offline), key="p_offline",
                   placeholder="choose tasks", help="; ".join(f"{n}: {i.description}" for n, i in offline.items()))
    c2.multiselect("Hub benchmarks of the DIET paper (need network and `datasets`)", list(hub), key="p_hub",
                   placeholder="choose benchmarks")
    files = st.file_uploader("Your own task files (.jsonl or .csv, one item per line; see docs/tasks.md)",
                             type=["jsonl", "csv"], accept_multiple_files=True, key="uploads")
    refs = list(st.session_state["p_offline"]) + list(st.session_state["p_hub"])
    refs += [str(save_upload(f.name, f.getvalue())) for f in files or []]
    tasks = []
    for ref in refs:
        t = resolve(ref)
        if isinstance(t, str):
            st.error(t)
        else:
            tasks.append(t)
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        st.error(f"two tasks are named {', '.join(dup)}: rename the uploaded file(s)")
        tasks = list({t.name: t for t in tasks}.values())
    return tasks


def settings_section() -> ProfileSettings:
    c1, c2 = st.columns([1, 3])
    c1.number_input("Calibration samples per task", min_value=1, max_value=100_000, step=1, key="p_samples",
                    help="the DIET paper uses 100; fewer is faster and noisier (see the split-half overlap on the "
                         "Masks page)")
    with c2.expander("Advanced profiling settings"):
        a, b, c = st.columns(3)
        a.number_input("Max tokens per text", min_value=8, max_value=131_072, step=8, key="p_max_length")
        b.number_input("Seed (which calibration texts)", min_value=0, step=1, key="p_seed")
        c.number_input("Batch size", min_value=1, max_value=1024, step=1, key="p_batch",
                       help="texts per forward pass; does not change the statistics")
    ss = st.session_state
    settings = ProfileSettings(samples=int(ss["p_samples"]), seed=int(ss["p_seed"]),
                               max_length=int(ss["p_max_length"]), batch_size=int(ss["p_batch"]))
    ss["profile_settings"] = settings
    return settings


def cluster_section() -> None:
    """Where profiling and sweeps run: this process (default) or the Ray cluster at an address (docs/scale.md)."""
    defaults(p_cluster="")
    with st.expander("Cluster (Ray): profile and sweep on other workers"):
        st.text_input("Ray cluster address", key="p_cluster", placeholder="empty = this process",
                      help="local (a Ray instance on this machine), auto (the cluster `ray start` runs here) or the "
                           "head's host:port. The profiling job and the Sweep page then run their units on its "
                           "workers, each holding this model; results land in this app's cache. See docs/scale.md")
    st.session_state["cluster"] = cluster_settings(st.session_state["p_cluster"])
    if st.session_state["cluster"] is not None:
        st.caption(f"Profiling and sweeps run on the Ray cluster **{st.session_state['cluster'].address}**.")


def profile_section(lm, tasks: list, settings: ProfileSettings) -> None:
    if not tasks:
        st.info("Pick at least one task above (two or more to see how their masks overlap).")
    else:
        cached = {t.name: is_profiled(lm, t, settings) for t in tasks}
        rows = [{"task": t.name, "source": t.source.split(":")[0], "description": t.description,
                 "calibration texts": min(settings.samples, len(t.calibration)), "evaluation items": len(t.evaluation),
                 "metric": t.metric, "status": "cached ✓" if cached[t.name] else "to profile",
                 "note": t.split_note()} for t in tasks]
        if not any(r["note"] for r in rows):
            for r in rows:
                del r["note"]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        missing = [t for t in tasks if not cached[t.name]]
        if missing:
            with server()[0].now() as free:  # no forward pass while a job (of any session) runs one
                eta = estimate_seconds(lm, missing, settings, measure=free)
            label = f"Profile {len(missing)} task(s) — about {seconds_text(eta)}"
            st.caption("Estimated from the calibration texts' token counts and this machine's profiling speed "
                       "(the last profile's, or one batch measured now): about "
                       f"{seconds_text(eta)} for {', '.join(t.name for t in missing)}"
                       + (f"; {len(tasks) - len(missing)} cached task(s) load instantly." if len(missing) < len(tasks)
                          else "."))
        else:
            label = "Load the cached statistics (no forward pass)"
        busy = runner().active() is not None
        if st.button(label, type="primary", disabled=busy, key="btn_profile"):
            start_job("profile", f"Profiling {len(tasks)} task(s)",
                      profile_job(lm, tasks, settings, st.session_state.get("cluster")))
            st.rerun()
    job_panel(("profile",), key="main")
    stats = st.session_state.get("stats")
    if stats:
        counts = ", ".join(f"**{name}** ({int(s.meta.get('texts', 0))} texts)" for name, s in stats.items())
        st.markdown(f"Statistics in this session: {counts}.")
        st.page_link("pages/2_masks.py", label="Explore the masks", icon="➡️")


prologue(("profile",))
st.title("1 · Model and tasks")
with page_errors():
    st.subheader("Model")
    lm = model_section()
    st.subheader("Tasks")
    tasks = chosen_tasks()
    settings = settings_section()
    cluster_section()
    profile_section(lm, tasks, settings)
