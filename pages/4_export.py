"""Page 4: export — a model folder (through diet.export.export_model, whatever modes it offers), the mask as JSON,
and an HTML report with every figure."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from diet.export.maskfile import mask_json
from diet.export.modes import MODES, SERVING_MODES
from diet.folders import default_export_folder
from diet.report import mask_stats, report, settings_summary
from pages._common import current_mask, current_model, job_panel, runner, start_job, stats_page
from pages._work import compare_job, export_job

MODE_HELP = {
    "auto": "auto: uniform when every layer keeps the same count, else padded (our default)",
    "uniform": "uniform: same kept count per layer, a smaller stock model that loads anywhere",
    "padded": "padded: per-layer masks, pruned channels zeroed, stock shapes (identical outputs, no size gain)",
    "heterogeneous": "heterogeneous: per-layer widths, smallest model; loads with trust_remote_code=True",
    "gguf": "gguf: one model.gguf for llama.cpp / Ollama, exact per-layer widths (llama.cpp's deci architecture)",
    "vllm": "vllm: a folder vLLM serves as DeciLMForCausalLM, exact per-layer widths",
}
OUTTYPE_HELP = {"f32": "f32 (exact)", "f16": "f16", "bf16": "bf16", "q8_0": "q8_0 (widths must be multiples of 32)",
                "q8_0-f16down": "q8_0 with ffn_down in f16 (any width, 15% larger)"}


def rounding_section(lm, result, stats: dict | None) -> int:
    """--round-to and its cost next to the unrounded mask: parameters at once, accuracy from an evaluation of the
    rounded mask on the tasks and items the unrounded one was evaluated on (Prune and evaluate page)."""
    from diet.api import rounded
    from diet.masks import ROUND_TO

    n = st.selectbox("Round each layer's kept channels to a multiple of", ROUND_TO, key="round_to",
                     format_func=lambda v: "1 (exact widths)" if v == 1 else str(v),
                     help="by the mask's own ranking (votes, then score): for quantized GGUF types (q8_0 needs 32) "
                          "and tensor parallelism")
    if n == 1 or result.unit != "mlp":
        return 1
    r = rounded(result, n)
    seen = st.session_state.setdefault("comparisons", {})  # every dense-vs-pruned result of this session, by mask
    comp = st.session_state.get("comparison")
    if comp:
        seen[comp["digest"]] = comp
    before, after = seen.get(result.digest()), seen.get(r.digest())

    def acc(c):
        return f"{100 * sum(p.value for p in c['pruned']) / len(c['pruned']):.1f}" if c else "not evaluated"

    s0, s1 = result.summary, r.summary
    st.table({"": ["MLP channels kept", "parameters", "average accuracy (%)"],
              "exact mask": [f"{sum(s0['kept_per_layer']):,}", f"{s0['params_after']:,}", acc(before)],
              f"rounded to {n}": [f"{sum(s1['kept_per_layer']):,}", f"{s1['params_after']:,}", acc(after)]})
    if before and not after and st.button("Evaluate the rounded mask (same tasks and items as the exact one)",
                                          disabled=runner().active() is not None, key="btn_eval_rounded"):
        from diet.evaluate import EvalSettings
        from diet.tasks import get_task

        tasks = [get_task(p.task) for p in before["pruned"]]
        memo = st.session_state.setdefault("eval_memo", {})
        start_job("compare", f"Evaluating the mask rounded to {n}",
                  compare_job(lm, r, tasks, EvalSettings(**before["eval"]), memo, stats))
        st.rerun()
    if not before:
        st.caption("Evaluate the exact mask on the Prune and evaluate page to compare the rounding's accuracy cost.")
    job_panel(("compare",), key="round")
    return n


def default_folder(lm, result) -> str:
    return str(default_export_folder(lm.spec.name, result.method, result.summary["unit_sparsity"]))


def model_folder_section(lm, result, stats: dict | None = None) -> None:
    c1, c2 = st.columns([3, 2])
    out = c1.text_input("Output folder", value=default_folder(lm, result), key="out_dir",
                        help="must be new or empty (or tick overwrite); written atomically")
    mode = c2.selectbox("Export mode", ["auto", *MODES], key="export_mode",
                        format_func=lambda m: MODE_HELP.get(m, m))
    overwrite = st.checkbox("Overwrite a non-empty folder", key="overwrite")
    optional: dict = {}
    if mode == "gguf":
        optional["outtype"] = st.selectbox("GGUF tensor type", list(OUTTYPE_HELP), key="gguf_outtype",
                                           format_func=OUTTYPE_HELP.get)
    optional["round_to"] = rounding_section(lm, result, stats)
    from diet.api import sample_prompts, tasks_of

    kept = [s["prompt"] for s in st.session_state.get("try_samples", [])]
    optional["sample_prompts"] = (kept + sample_prompts([t for t in tasks_of(stats) if t.name in result.tasks]))[:3]
    if st.checkbox("Measure dense vs pruned forward speed for the model card", value=True,
                                         key="export_speed"):
        from diet.measure import SpeedSettings

        optional["speed"] = SpeedSettings()
    comp = st.session_state.get("comparison")
    if comp and comp["digest"] == result.digest():  # measured results of exactly this mask
        optional["evaluation"] = {"dense": [r.to_dict() for r in comp["dense"]],
                                  "pruned": [r.to_dict() for r in comp["pruned"]]}
        st.caption("The dense-vs-pruned results measured on the Prune and evaluate page go into the model card.")
    else:
        st.caption("No measured results of this mask yet: evaluate it on the Prune and evaluate page first to put "
                   "them in the model card.")
    from diet.compensate import bias_supported

    reason = bias_supported(lm.model, result.unit) if result.compensation is not None else None
    if reason:  # the engine refuses too (export_model); say why before anyone presses the button
        st.warning(f"This mask carries a bias compensation, which export does not support for this model: {reason}. "
                   "Choose **lstsq** or **none** as the compensation on the Masks page (or switch FLAP's bias off) "
                   "to export a folder; the mask JSON and the report below work as they are, and Prune and "
                   "evaluate measures the compensated model.")
    if st.button("Export the pruned model", type="primary", disabled=runner().active() is not None or bool(reason),
                 key="btn_export"):
        start_job("export", f"Exporting to {out}",
                  export_job(lm, result, out.strip(), None if mode == "auto" else mode, overwrite, optional, stats))
        st.rerun()
    job_panel(("export",), key="main")
    path = st.session_state.get("exported")
    if path:
        written = Path(path) / "diet_settings.json"
        facts = json.loads(written.read_text()) if written.is_file() else {}
        written_mode = facts.get("mode")
        for line in facts.get("warnings", []):  # optional work that failed; the folder itself is complete
            st.warning(line)
        if written_mode in SERVING_MODES:  # the model card's own run instructions for that engine
            from diet.export.card import LOAD_SNIPPETS, SNIPPET_LANGUAGE

            st.markdown(f"Written to `{path}`. Run it:")
            st.code(LOAD_SNIPPETS[written_mode].format(dir=path), language=SNIPPET_LANGUAGE[written_mode])
            return
        arg = ", trust_remote_code=True" if written_mode == "heterogeneous" else ""
        st.markdown(f"Written to `{path}`. Load it anywhere:")
        st.code(f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{path}"'
                f'{arg})', language="python")


def all_figures_button(col, result, stats: dict, comp: dict | None) -> None:
    """Every figure of the report as PNG and SVG in one zip (rendered on the click), or why it cannot be."""
    from diet import figures
    from diet.report import report_figures

    if figures.browser_path() is None:
        col.caption(figures.NO_BROWSER + ".")
        return
    sweep = st.session_state.get("sweep")
    col.download_button("All figures (zip: PNG + SVG)", key="dl_figures", on_click="ignore",
                        data=lambda: figures.zip_of([(t, f) for t, _, f in report_figures(result, stats, comp, sweep)]),
                        file_name="diet-figures.zip", mime="application/zip",
                        help="every figure of the report, each as PNG and SVG at its on-screen size")


def downloads_section(lm, stats, result) -> None:
    from diet.api import changed_items, tasks_of

    comp = st.session_state.get("comparison")
    changes = None
    if comp and all(len(r.logliks) == r.n for r in comp["dense"] + comp["pruned"]):
        changes = changed_items([t for t in tasks_of(stats) if t.name in comp["tasks"]], comp["dense"],
                                comp["pruned"])
    c1, c2, c3 = st.columns(3)
    c1.download_button("Download the mask (JSON)", data=json.dumps(mask_json(result), indent=1),
                       file_name=f"{result.method}-mask.json", mime="application/json", on_click="ignore",
                       key="dl_mask",
                       help="kept channel indices per layer, tasks, settings and the summary")
    c2.download_button("Download the report (HTML with every figure)",
                       data=lambda: report(lm.spec.name, result, stats, comp, st.session_state.get("sweep"),
                                           st.session_state.get("try_samples"), changes),
                       file_name="diet-report.html", mime="text/html", on_click="ignore", key="dl_report",
                       help="opens offline in any browser (plotly.js is inside); each chart also has a PNG button")
    all_figures_button(c3, result, stats, comp)


def page(lm, stats) -> None:
    result = current_mask(stats)
    s = result.summary
    st.markdown(f"Current mask: **{settings_summary(result)}** on tasks **{', '.join(mask_stats(result, stats))}**, "
                f"**{s['unit_sparsity']:.1%}** of MLP channels removed = **{s['param_sparsity']:.1%}** of all "
                f"parameters; layer widths {'uniform' if s['uniform'] else 'differ per layer'}.")
    st.subheader("Model folder")
    model_folder_section(lm, result, stats)
    st.subheader("Downloads")
    downloads_section(lm, stats, result)


stats_page(("export",), "4 · Export", lambda stats, _slot: page(current_model(), stats))
