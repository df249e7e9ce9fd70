"""The Prune and evaluate page's two "what does it say" sections: Try it (dense and pruned answers to a prompt,
streamed side by side) and the items pruning changed (a filterable table with a CSV download).

Why in their own module: page 3 only places them (one call each), so its own code stays as it was; the work runs in
a background job (`pages._work.generate_job`) whose snapshot carries the partial answers, which a fragment polls.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diet.api import changed_items, sample_prompt
from diet.changed import BROKEN, FIXED, csv_text, rows, summary_lines
from diet.generate import RAW_FALLBACK, GenerateSettings, has_chat_template
from pages._common import defaults, job_panel, runner, start_job

# How often the answers being written are redrawn. Why faster than the job panel's 2 s: text appearing token by token
# is the point of the panel; each redraw is one small fragment (two text blocks), and bench/generate_speed.py
# measures what it costs the generation (in-app ÷ CLI).
STREAM_POLL_SECONDS = 0.5
KIND = "generate"


def _settings() -> GenerateSettings:
    ss = st.session_state
    temperature = float(ss["p_try_temperature"])
    return GenerateSettings(max_new_tokens=int(ss["p_try_max_new"]), temperature=temperature,
                            top_p=float(ss["p_try_top_p"]), seed=int(ss["p_try_seed"]), chat=bool(ss["p_try_chat"]))


def _fill_from_task() -> None:
    name = st.session_state.get("p_try_task")
    if name:
        st.session_state["p_try_prompt"] = sample_prompt(st.session_state["_try_tasks"][name])


def _answer_block(col, title: str, g, waiting: str = "") -> None:
    col.markdown(f"**{title}**")
    if g is None:
        col.caption(waiting or "not started")
        return
    col.text(g.text or "…")
    stats = (f"{g.new_tokens} tokens · time to first token {g.ttft:.2f} s · {g.tokens_per_second:.1f} tokens/s"
             if g.new_tokens else "waiting for the first token")
    finish = {"eos": "the model ended its answer", "length": "max new tokens reached",
              "stopped": "stopped: the partial answer is kept", "": "writing…"}[g.finish]
    col.caption(f"{stats} · {finish}")
    if g.note:
        col.caption(g.note)


def _answers(answers: dict, running: bool) -> None:
    left, right = st.columns(2)
    _answer_block(left, "Dense", answers.get("dense"))
    pruned_wait = "waits for the dense answer (one model at a time)" if running else "not started (stopped)"
    _answer_block(right, "Pruned", answers.get("pruned"), pruned_wait)


@st.fragment(run_every=STREAM_POLL_SECONDS)
def _streaming() -> None:
    job = runner().active()
    if job is None or job.kind != KIND:
        st.rerun()
    snap = job.snapshot()
    if snap.finished:
        st.rerun()
    if snap.waiting:
        st.info(f"Waiting — {snap.waiting}.")
    _answers(snap.partial or {}, running=True)
    if snap.stop_requested:
        st.caption("Stopping after the current token…")
    elif st.button("Stop", key="btn_try_stop", help="ends the answer being written and keeps what it wrote"):
        job.cancel()
        st.rerun(scope="fragment")


def try_it_panel(lm, result, stats: dict, tasks: list) -> None:
    """Prompt box (prefilled from a task's item), settings under "more", Generate / Stop, the two answers."""
    from pages._work import TRY_MODE, generate_job

    st.subheader("Try it: what does the pruned model say?")
    ss = st.session_state
    with_items = [t for t in tasks if t.evaluation]
    ss["_try_tasks"] = {t.name: t for t in with_items}
    template = has_chat_template(lm.tokenizer)
    defaults(p_try_task=with_items[0].name if with_items else None, p_try_max_new=64, p_try_temperature=0.0,
             p_try_top_p=1.0, p_try_seed=0, p_try_chat=template,
             p_try_prompt=sample_prompt(with_items[0]) if with_items else "")
    if with_items:
        if ss["p_try_task"] not in ss["_try_tasks"]:
            ss["p_try_task"] = with_items[0].name
        st.selectbox("Start from an item of", list(ss["_try_tasks"]), key="p_try_task", on_change=_fill_from_task,
                     help="puts the task's first evaluation question in the prompt box; edit it freely")
    st.text_area("Prompt", key="p_try_prompt", height=100)
    c1, c2 = st.columns([1, 3])
    c1.toggle("Chat template", key="p_try_chat", help="wrap the prompt in the model's chat template (a user turn); "
              "off: the model continues the raw text")
    if ss["p_try_chat"] and not template:
        c2.caption(RAW_FALLBACK + ".")
    with st.expander("more"):
        m = st.columns(4)
        m[0].number_input("Max new tokens", min_value=1, max_value=2048, step=16, key="p_try_max_new")
        m[1].number_input("Temperature (0 = greedy)", min_value=0.0, max_value=5.0, step=0.1, key="p_try_temperature")
        m[2].number_input("Top-p", min_value=0.01, max_value=1.0, step=0.05, key="p_try_top_p",
                          help="sampling only (temperature > 0)")
        m[3].number_input("Seed", min_value=0, step=1, key="p_try_seed", help="sampling only")
    settings = _settings()
    st.caption(f"Mode: {TRY_MODE} — on this machine two models computing at once would each run far slower. "
               + ("Greedy: the same prompt always gives the same answers." if settings.greedy else
                  f"Sampling at temperature {settings.temperature}, top-p {settings.top_p}, seed {settings.seed}."))
    job = runner().active()
    busy = job is not None
    if st.button("Generate, dense vs pruned", type="primary", disabled=busy, key="btn_try"):
        settings.check()  # bad input: one line at once (a prompt longer than the context is said by the job)
        if not ss["p_try_prompt"].strip():
            st.error("the prompt is empty: type something for the model to answer")
            return
        held = ss.setdefault("try_pruned", {})
        start_job(KIND, "Generating, dense vs pruned", generate_job(lm, result, ss["p_try_prompt"], settings, held,
                                                                    stats))
        st.rerun()
    if job is not None and job.kind == KIND:
        _streaming()
        return
    job_panel((KIND,), key="try")
    out = ss.get("try_it")
    if out:
        if out["digest"] != result.digest():
            st.caption("These answers are for an earlier mask.")
        st.caption(f"Prompt: {out['prompt'][:200]}")
        _answers(out["answers"], running=False)
        kept = ss.setdefault("try_samples", [])
        if st.button("Keep for the report", key="btn_try_keep",
                     help="the Export page's HTML report lists the kept samples (prompt, dense, pruned)"):
            kept.append({"prompt": out["prompt"], **{k: g.text for k, g in out["answers"].items()}})
        if kept:
            st.caption(f"{len(kept)} sample(s) kept for the report.")


def changed_items_section(comp: dict, tasks: list) -> None:
    """Per task, the items one model answered right and the other wrong; filter by task and direction; CSV."""
    if any(len(r.logliks) != r.n for r in comp["dense"] + comp["pruned"]):
        st.caption("The items pruning changed: these results carry no per-item scores; evaluate again.")
        return
    changes = changed_items([t for t in tasks if t.name in comp["tasks"]], comp["dense"], comp["pruned"])
    st.subheader("The items pruning changed")
    st.caption(" · ".join(summary_lines(changes)))
    f1, f2 = st.columns([3, 2])
    names = [c.task for c in changes]
    chosen = f1.multiselect("Tasks", names, default=names, key="changed_tasks")
    direction = f2.radio("Direction", ["both", BROKEN, FIXED], horizontal=True, key="changed_direction",
                         format_func={"both": "both", BROKEN: "dense right, pruned wrong",
                                      FIXED: "pruned right, dense wrong"}.get)
    shown = [c for c in changes if c.task in chosen]
    table = pd.DataFrame(rows(shown))
    if not table.empty and direction != "both":
        table = table[table["direction"] == direction]
    if table.empty:
        st.caption("No changed items for this filter.")
    else:
        st.dataframe(table, hide_index=True, width="stretch")
    st.caption("scores: per-choice log-likelihoods, normalised as the task's metric is (acc_norm: ÷ characters); "
               "swing: how much the right answer's margin over the best other choice moved, pruned − dense.")
    filtered = csv_text(shown) if direction == "both" else table.to_csv(index=False)
    st.download_button("Download the changed items (CSV)", filtered, file_name="changed_items.csv",
                       mime="text/csv", key="dl_changed")
