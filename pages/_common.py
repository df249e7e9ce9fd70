"""Streamlit helpers shared by every page: errors as messages, settings that survive page switches, the cached
model, and the job panel that polls background work.

Why here and not in diet/: this is the only UI glue that needs `st`; the engine never imports streamlit.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager

import streamlit as st

from diet.errors import DietError
from diet.gate import TorchGate
from diet.jobs import CANCELLED, DONE, JobRunner
from diet.settings import MaskSettings, MethodSettings, ModelSpec, ProfileSettings
from diet.sharing import SharedModels

TEST_MODEL = "_test_model"  # session-state seed: tests put a LoadedModel (a tiny random model) here
PERSIST = "p_"  # widget keys starting with this keep their value when the user switches pages (see app.py)
RESULT_KEYS = {"profile": "stats", "compare": "comparison", "sweep": "sweep", "export": "exported",
               "generate": "try_it"}
MEMO_KEYS = {"general": "general_stats"}  # jobs whose result ({key: value}) is added to a memo in the session
CANCELLED_NOTE = {"sweep": "the finished cells are kept in the cache: run the sweep again to resume"}
# How often a running job's progress is redrawn. Why not faster: each redraw is a script run (Python under the
# interpreter lock, which the job's thread needs between its torch calls) and a render in the browser (CPU that
# torch's threads need on a small machine); at 1 s the job's own compute ran ~1.2x slower than the CLI's.
POLL_SECONDS = 2.0
# Each redraw first waits up to this long for the job to end (the thread sleeps; Cancel is answered after it). Why:
# polled alone, a job's end showed up to POLL_SECONDS late; waiting 3/4 of each interval shows most ends at once,
# and a click on Cancel is still taken within 1.5 s.
END_WAIT_SECONDS = 1.5
# While a job runs, the page draws no CSS animation or transition (the running indicator, progress bars sliding,
# elements fading while they are redrawn). Why: a headless or GPU-less browser paints them in software; measured on
# 2 cores, a minimal page polling like this panel cost chromium 0.066 cores with them and 0.041 without, and
# bench/app_job_speed.py saw 0.20-0.24 cores (click to result) before, 0.09-0.22 after — CPU that torch's two
# threads, synchronised at every operation, need on a small machine (docs/app.md).
STILL_PAGE = "<style>*, *::before, *::after {animation: none !important; transition: none !important;}</style>"


@contextmanager
def page_errors():
    """Every problem becomes a message in the page, never a traceback: DietError as it is, anything else as one
    line (the traceback goes to the server log). st.rerun/st.stop are BaseExceptions and pass through."""
    try:
        yield
    except DietError as e:
        st.error(str(e))
    except Exception as e:  # a bug: say so plainly, keep the details for the log
        traceback.print_exc(file=sys.stderr)
        st.error(f"Unexpected problem ({type(e).__name__}: {e}). The details are in the server log.")


def defaults(**values) -> None:
    """Initial values of persistent widgets (set through session state, so widgets take no `value=`)."""
    for k, v in values.items():
        st.session_state.setdefault(k, v)


def keep_widget_state() -> None:
    """Re-assign persistent widget values so Streamlit does not drop them while their page is not shown."""
    for k in list(st.session_state):
        if isinstance(k, str) and k.startswith(PERSIST):
            st.session_state[k] = st.session_state[k]


# ----------------------------------------------------------------------------------------------- figures

IMAGE_MIME = {"png": "image/png", "svg": "image/svg+xml"}


def chart(fig, key: str, **kwargs) -> None:
    """`st.plotly_chart` plus PNG and SVG downloads of the same figure, for slides and papers.

    The images are rendered only when a button is clicked (a callable `data`: Streamlit runs it on the click), by
    `diet.figures` (kaleido driving Chromium), at the figure's own size. Where no browser is found, one line says
    so and the figure stays interactive HTML (a download of it instead)."""
    from diet import figures

    st.plotly_chart(fig, key=key, **kwargs)
    stem = figures.file_stem(fig.layout.title.text or key)
    if figures.browser_path() is None:
        st.caption(figures.NO_BROWSER + ".")
        st.download_button("HTML", data=lambda: fig.to_html(include_plotlyjs=True), file_name=f"{stem}.html",
                           mime="text/html", on_click="ignore", key=f"dl-html-{key}")
        return
    size = "x".join(map(str, figures.size_of(fig)))
    cols = st.columns([1, 1, 8])
    for col, fmt in zip(cols, figures.FORMATS):
        col.download_button(fmt.upper(), data=lambda f=fmt: figures.image(fig, f), file_name=f"{stem}-{size}.{fmt}",
                            mime=IMAGE_MIME[fmt], on_click="ignore", key=f"dl-{fmt}-{key}",
                            help=f"this figure as {fmt.upper()}, {size} pixels (its size on the page)")


# ----------------------------------------------------------------------------------------------- model


@st.cache_resource(show_spinner=False)
def server() -> tuple[TorchGate, SharedModels]:
    """What every session of this server shares: the gate that lets one heavy job run at a time, and the loaded
    models by key. DIET_APP_MODELS: how many models memory holds at once (default 1); DIET_THREADS: a fixed torch
    thread count for jobs (default: the cores free when the job starts)."""
    threads = int(os.environ["DIET_THREADS"]) if os.environ.get("DIET_THREADS") else None
    return TorchGate(threads), SharedModels(int(os.environ.get("DIET_APP_MODELS", "1")))


def _load(spec: ModelSpec):
    from diet.models import load_model

    return load_model(spec, say=lambda m: print(m, file=sys.stderr))


def model_spec() -> ModelSpec:
    return st.session_state.get("spec") or ModelSpec()


def replaced_by(s: ModelSpec) -> list[str]:
    """Names of the models other sessions may be using that loading `s` would drop from memory."""
    return [k.name for k in server()[1].would_replace(s)]


def current_model():
    """The loaded model of the chosen spec (the embedded default unless the user picked another), shared by every
    session of the server that chose the same one. The shared models are keyed by the spec itself (a frozen
    dataclass: the strings that define a model before it is loaded, never a hash of its weights)."""
    if TEST_MODEL in st.session_state:
        return st.session_state[TEST_MODEL]
    s = model_spec()
    models = server()[1]
    if s in models.loaded():
        return models.get(s, lambda: _load(s))
    drop = replaced_by(s)
    note = f"; it replaces {', '.join(drop)} in memory, which holds one model at a time" if drop else ""
    with st.spinner(f"Loading {s.name}{note} (the first use of the embedded default converts it once, about 30 s)…"):
        lm = models.get(s, lambda: _load(s), describe=lambda k: k.name)
    if drop:
        st.session_state["replaced_note"] = (f"Loaded {s.name}: it replaced {', '.join(drop)} in memory (this server "
                                             "holds one model at a time); a session still using it loads it again "
                                             "when it needs it.")
    return lm


def profile_settings() -> ProfileSettings:
    return st.session_state.get("profile_settings") or ProfileSettings()


# Initial values of the mask and method widgets (Masks page), read from the settings' own defaults; the Sweep page
# reads the same ones. The general-text source is the shipped corpus: the page never waits for the Hub.
MASK_DEFAULTS = {f"p_{k}": getattr(MaskSettings(), k) for k in ("sparsity", "merge", "score", "allocation", "min_keep")}
METHOD_DEFAULTS = {**{f"p_{k}": getattr(MethodSettings(), k) for k in ("method", "calibration", "tau", "alpha",
                                                                        "fusion_norm", "seed", "flap_bias",
                                                                        "pool_weight")},
                   "p_general": "generated"}


def choice_words(field: str) -> dict[str, str]:
    """The options of a MaskSettings choice (merge, score, allocation) in words, the dataclass default marked as
    ours: what the Masks and DISP pages offer."""
    words = {"merge": {"budget": "exact budget", "threshold": "voting threshold"},
             "score": {"mean_abs": "mean |x|", "rms": "RMS"},
             "allocation": {"layer": "same count in every layer", "global": "global ranking across layers"}}[field]
    default = getattr(MaskSettings(), field)
    return {k: v + (" (our default)" if k == default else "") for k, v in words.items()}


def knob_settings() -> tuple[MaskSettings, MethodSettings, str]:
    """Every mask and method knob as set on the Masks page (defaults where it was not visited), whatever method is
    selected there: (mask settings, method settings, general-text source). The sweep runs with these."""
    ss = st.session_state
    v = {**MASK_DEFAULTS, **METHOD_DEFAULTS, **{k: ss[k] for k in (*MASK_DEFAULTS, *METHOD_DEFAULTS) if k in ss}}
    threshold = int(ss["p_threshold"]) if v["p_merge"] == "threshold" and "p_threshold" in ss else None
    mask = MaskSettings(sparsity=float(v["p_sparsity"]), score=v["p_score"], merge=v["p_merge"], threshold=threshold,
                        allocation=v["p_allocation"], min_keep=float(v["p_min_keep"]))
    ms = MethodSettings(method=v["p_method"], calibration=v["p_calibration"], tau=float(v["p_tau"]),
                        alpha=float(v["p_alpha"]), fusion_norm=v["p_fusion_norm"], seed=int(v["p_seed"]),
                        flap_bias=bool(v["p_flap_bias"]), pool_weight=v["p_pool_weight"])
    return mask, ms, v["p_general"]


def forget_results() -> None:
    """A different model or different profiling settings: earlier statistics and results no longer apply."""
    for k in ("stats", "mask_result", "comparison", "sweep", "exported", "mask_memo", "ranks_memo", "weights_memo"):
        st.session_state.pop(k, None)


# ----------------------------------------------------------------------------------------------- jobs


def runner() -> JobRunner:
    if "runner" not in st.session_state:
        st.session_state["runner"] = JobRunner(server()[0])
    return st.session_state["runner"]


def collect_jobs() -> None:
    """Take the results of finished jobs into the session, once, in the script thread (workers never touch st)."""
    outcomes = st.session_state.setdefault("job_outcomes", {})
    for job in runner().finished():
        snap = job.snapshot()
        job.collected = True
        if snap.status == DONE and job.kind in RESULT_KEYS:
            if job.kind == "profile":  # new statistics: masks and results built on the old ones no longer apply
                forget_results()
            st.session_state[RESULT_KEYS[job.kind]] = job.result
        if snap.status == DONE and job.kind in MEMO_KEYS:
            st.session_state.setdefault(MEMO_KEYS[job.kind], {}).update(job.result)
        outcomes[job.kind] = (snap.status, snap.title, snap.message, snap.elapsed)


def start_job(kind: str, title: str, fn) -> None:
    """Start a job of this session; the session's model stays in memory (shared, never dropped) until it ends."""
    release = server()[1].hold(model_spec()) if TEST_MODEL not in st.session_state else (lambda: None)

    def run(ctx):
        try:
            return fn(ctx)
        finally:
            release()

    try:
        runner().start(kind, title, run)
    except BaseException:
        release()
        raise
    st.session_state.setdefault("job_outcomes", {}).pop(kind, None)


def job_panel(kinds: tuple[str, ...], key: str) -> None:
    """Live progress of a running job of these kinds (polled), or how the last one ended."""
    job = runner().active()
    if job is not None and job.kind in kinds:
        _progress(key)
        return
    rerun_if_ended(kinds)
    for kind in kinds:
        outcome = st.session_state.get("job_outcomes", {}).get(kind)
        if outcome is None:
            continue
        status, title, message, seconds = outcome
        if status == DONE:
            st.success(f"{title}: done in {seconds:.0f} s.")
        elif status == CANCELLED:
            st.warning(f"{title}: cancelled after {seconds:.0f} s — "
                       f"{CANCELLED_NOTE.get(kind, 'nothing was written')}.")
        else:
            st.error(f"{title}: {message}")


def rerun_if_ended(kinds: tuple[str, ...] | None = None) -> None:
    """Rerun the page when a job (of these kinds; None: any) ended after this run's `collect_jobs`.

    Why: a short job (loading cached statistics takes milliseconds) can end between the top of the page, where
    results are collected, and the job panel further down. The panel then sees no running job and no outcome, no
    poll is left to notice, and the page stayed without its result until the next click (the four-viewer browser
    test caught it)."""
    if any(kinds is None or j.kind in kinds for j in runner().finished()):
        st.rerun()


@st.fragment(run_every=POLL_SECONDS)
def _progress(key: str) -> None:
    job = runner().active()
    if job is None or job.wait(END_WAIT_SECONDS):  # ended (or ends while we wait): rerun the page to show the result
        st.rerun()
    snap = job.snapshot()
    st.markdown(STILL_PAGE, unsafe_allow_html=True)  # inside the panel: it goes when the panel goes
    st.markdown(f"**{snap.title}** · {snap.elapsed:.0f} s")
    if snap.waiting:
        st.info(f"Waiting — {snap.waiting}. This server runs one job at a time and computes each result once: "
                "this job goes on as soon as that one ends, reading from the cache whatever it computed.")
    for line in snap.lines:
        st.progress(line.fraction, text=f"{line.label}: {line.done} / {line.total}")
    if snap.message:
        st.caption(snap.message)
    between = "cell" if job.kind == "sweep" else "batch"
    if snap.stop_requested:
        st.caption(f"Stopping after the current {between}…")
    elif st.button("Cancel", key=f"cancel-{key}", help=f"stops after the current {between}; "
                   + CANCELLED_NOTE.get(job.kind, "nothing is written")):
        job.cancel()
        st.rerun(scope="fragment")


def current_mask(stats: dict):
    """The mask chosen on the Masks page, or DIET's defaults when that page has not been visited."""
    from diet.report import single_mask

    result = st.session_state.get("mask_result")
    if result is None or not (single_mask(result) or set(result.tasks) <= set(stats)):
        from diet.api import build_mask

        result = build_mask(stats, MaskSettings())
        st.session_state["mask_result"] = result
    return result


def prologue(own_kinds: tuple[str, ...] = ()):
    """What every page does first: keep settings across page switches, take in finished jobs, draw the sidebar.

    Why each page calls it (not app.py): with a pages/ folder Streamlit may run a page file directly (its v1
    multipage mode, which AppTest uses), so a page must not rely on app.py having run before it.
    `own_kinds`: the jobs whose progress this page shows in its body; others show in the sidebar.
    Returns the sidebar slot of the mask summary, for a page that changes the mask (see `mask_note`)."""
    keep_widget_state()
    collect_jobs()
    with st.sidebar:
        st.caption("Session")
        stats = st.session_state.get("stats") or {}
        st.markdown(f"Model: **{model_spec().name}**  \nTasks profiled: **{len(stats)}**")
        slot = st.empty()
        mask_note(slot, st.session_state.get("mask_result"))
        job = runner().active()
        if job is not None and job.kind not in own_kinds:
            job_panel((job.kind,), key="sidebar")
        elif job is None:
            rerun_if_ended()
    return slot


def mask_note(slot, result) -> None:
    """The sidebar's one line about the current mask (redrawn by the Masks page after it builds a new one)."""
    if result is not None:
        from diet.report import method_label  # late: it imports torch, the landing page need not

        slot.markdown(f"Mask (**{method_label(result)}**): **{result.summary['unit_sparsity']:.1%}** of MLP "
                      f"channels, **{result.summary['param_sparsity']:.1%}** of parameters removed")


def need_stats() -> dict | None:
    """The profiled statistics, or a pointer to the page that makes them."""
    stats = st.session_state.get("stats")
    if not stats:
        st.info("No task statistics yet: pick tasks and profile them first (cached tasks load instantly).")
        st.page_link("pages/1_model_and_tasks.py", label="Go to Model and tasks", icon="➡️")
        return None
    return stats


def stats_page(own_kinds: tuple[str, ...], title: str, body, caption: str | None = None) -> None:
    """The frame of every page that works on profiled statistics: `prologue`, the title, problems as messages
    (`page_errors`), and `body(stats, sidebar_slot)` once statistics exist (else a pointer to page 1)."""
    slot = prologue(own_kinds)
    st.title(title)
    if caption:
        st.caption(caption)
    with page_errors():
        stats = need_stats()
        if stats:
            body(stats, slot)
