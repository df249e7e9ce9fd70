"""The DISP structure page (pages/6_disp.py) with Streamlit's AppTest, on a tiny random Llama: profiling in the
background and from the cache, index sets equal to the engine's, the parameter accounting, sliders that never run
the model, clear errors, dense-vs-DISP evaluation equal to evaluating `disp_copy` directly, and the export folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from streamlit.testing.v1 import AppTest

from diet import disp as D
from diet.api import profile_tasks
from diet.evaluate import EvalSettings, evaluate_task
from diet.models import LoadedModel, count_parameters
from diet.settings import ModelSpec, ProfileSettings
from diet.tasks import get_task
from tests.test_app import finish_jobs
from tests.test_app import open_page as open_app_page
from tests.test_viz import arr
from tests.tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DISP = "pages/6_disp.py"
PS = ProfileSettings(samples=8)  # the tiny model's statistics are profiled with these (page 1's settings)
NAMES = ("arithmetic", "capitals")

def open_page(lm: LoadedModel, **state) -> AppTest:
    return open_app_page(DISP, lm, **state)


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def fig(at: AppTest, prefix: str) -> dict:
    found = [s for s in (json.loads(el.proto.spec) for el in at.get("plotly_chart"))
             if s["layout"]["title"]["text"].startswith(prefix)]
    assert len(found) == 1, prefix
    return found[0]


def forward_spy() -> tuple[list[str], object]:
    forwards: list[str] = []
    return forwards, torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: forwards.append(type(m).__name__))


def tasks() -> list:
    return [get_task(n) for n in NAMES]


def page_state(lm: LoadedModel) -> dict:
    """What page 1 leaves in the session: DIET statistics of the tasks and the settings they were made with."""
    return {"stats": profile_tasks(lm, tasks(), PS), "profile_settings": PS}


def disp_stats(lm: LoadedModel) -> dict:
    return D.profile_disp(lm, tasks(), PS)  # profiles once, then a cache hit


def same_sets(got: D.DispMaskResult, want: D.DispMaskResult) -> None:
    assert got.tasks == want.tasks and got.settings == want.settings
    for pos in D.POSITIONS:
        np.testing.assert_array_equal(got.masks[pos], want.masks[pos])
        np.testing.assert_array_equal(got.task_masks[pos], want.task_masks[pos])
        np.testing.assert_array_equal(got.votes[pos], want.votes[pos])


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# ------------------------------------------------------------------------------------------------ tests


def test_landing_page_links_the_disp_page(cache_dir):
    at = AppTest.from_file(APP, default_timeout=60).run()
    ok(at)
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert "6 · DISP structure" in links and links["6 · DISP structure"] == "disp"


def test_profiles_in_the_background_then_loads_from_the_cache_without_a_job(cache_dir, tiny_lm):
    state = page_state(tiny_lm)
    at = open_page(tiny_lm, **state)
    ok(at)
    assert not at.get("plotly_chart") and "disp_result" not in at.session_state
    assert any("Not cached yet" in i.value and "arithmetic" in i.value for i in at.info)
    assert at.button(key="btn_disp_profile").label == "Profile 2 task(s) at the five positions"
    at.button(key="btn_disp_profile").click().run()
    job = at.session_state["runner"].jobs[-1]
    assert job.kind == "disp_profile"
    finish_jobs(at)
    ok(at)
    assert [line.label for line in job.snapshot().lines] == list(NAMES)  # progress per task
    assert all(D.is_disp_profiled(tiny_lm, t, PS) for t in tasks())  # cached on disk
    want = D.build_disp_masks(disp_stats(tiny_lm), D.DispSettings())
    same_sets(at.session_state["disp_result"], want)
    assert any("done in" in s.value for s in at.success)

    forwards, spy = forward_spy()  # a new session: everything cached, so no job and no forward pass
    try:
        again = open_page(tiny_lm, **state)
        ok(again)
    finally:
        spy.remove()
    assert forwards == []
    assert again.session_state["runner"].jobs == []
    assert "btn_disp_profile" not in [b.key for b in again.button]
    same_sets(again.session_state["disp_result"], want)


def test_sliders_rebuild_the_engines_index_sets_and_accounting_without_a_forward_pass(cache_dir, tiny_lm):
    state = page_state(tiny_lm)
    dstats = disp_stats(tiny_lm)
    shape = D.disp_shape(tiny_lm.model)
    forwards, spy = forward_spy()
    try:
        at = open_page(tiny_lm, **state)
        ok(at)
        same_sets(at.session_state["disp_result"], D.build_disp_masks(dstats, D.DispSettings()))
        seen = []
        for change, settings in (
            (lambda: at.slider(key="p_disp_sparsity").set_value(0.5), D.DispSettings(sparsity=0.5)),
            (lambda: at.radio(key="p_disp_score").set_value("rms"), D.DispSettings(sparsity=0.5, score="rms")),
            (lambda: at.radio(key="p_disp_allocation").set_value("global"),
             D.DispSettings(sparsity=0.5, score="rms", allocation="global")),
            (lambda: at.multiselect(key="p_disp_positions").set_value(["attn_in", "mlp_mid"]),
             D.DispSettings(sparsity=0.5, score="rms", allocation="global", positions=("attn_in", "mlp_mid"))),
        ):
            change().run()
            ok(at)
            got = at.session_state["disp_result"]
            same_sets(got, D.build_disp_masks(dstats, settings))
            # the accounting shown == param_summary of the index sets, counted independently of the page
            want = D.param_summary(shape, D.counts_of(got.index_sets()))
            shown = metrics(at)
            assert shown["Kept block parameters p"] == f"{want['block_kept_fraction']:.1%}"
            assert shown["All parameters removed"] == f"{want['param_sparsity']:.1%}"
            assert shown["Parameters before"] == f"{want['params_total']:,}"
            assert shown["Parameters after"] == f"{want['params_after']:,}"
            assert any("no forward pass" in c.value for c in at.caption)
            seen.append(got)
        assert len({r.summary["params_after"] for r in seen}) > 1  # the settings really changed the sets
        last = seen[-1]
        assert last.masks["mlp_out"].all() and not last.masks["attn_in"].all()  # only chosen positions pruned

        # the per-position views show exactly these arrays (hidden 32: one column per residual dim, no bins)
        kept = fig(at, "Attention input: which")["data"][0]
        np.testing.assert_array_equal(arr(kept["z"]), last.masks["attn_in"].astype(np.float32))
        votes = fig(at, "Attention input: votes")["data"][0]
        np.testing.assert_array_equal(arr(votes["z"]), last.votes["attn_in"])
        mid_votes = fig(at, "MLP channels: votes")["data"][0]  # channels carry no order: sorted per layer
        np.testing.assert_array_equal(arr(mid_votes["z"]), -np.sort(-last.votes["mlp_mid"].astype(int), axis=1))
        bars = fig(at, "MLP channels: kept MLP channels per layer")["data"][0]
        np.testing.assert_array_equal(arr(bars["y"]), last.masks["mlp_mid"].sum(1))
        jac = fig(at, "Attention input: overlap")["data"][0]
        np.testing.assert_allclose(arr(jac["z"]), np.asarray(last.summary["jaccard"]["attn_in"]), atol=1e-6)
        assert "residual dim" in kept["hovertemplate"]
    finally:
        spy.remove()
    assert forwards == []
    assert count_parameters(D.disp_copy(tiny_lm.model, last.index_sets())) == last.summary["params_after"]


def test_bad_settings_are_clear_messages_not_tracebacks(cache_dir, tiny_lm):
    state = page_state(tiny_lm)
    dstats = disp_stats(tiny_lm)
    at = open_page(tiny_lm, **state)
    at.radio(key="p_disp_merge").set_value("threshold").run()
    at.number_input(key="p_disp_threshold").set_value(len(NAMES) + 1).run()
    assert not at.exception
    assert [e.value for e in at.error] == [f"threshold {len(NAMES) + 1} is above the number of tasks "
                                           f"({len(NAMES)}): use 1..{len(NAMES)}"]
    assert not at.get("plotly_chart") and not at.metric  # nothing stale shown under the error

    at.number_input(key="p_disp_threshold").set_value(len(NAMES)).run()
    ok(at)
    want = D.build_disp_masks(dstats, D.DispSettings(merge="threshold", threshold=len(NAMES)))
    same_sets(at.session_state["disp_result"], want)

    at.multiselect(key="p_disp_positions").set_value([]).run()
    assert not at.exception and any("positions must be a non-empty subset" in e.value for e in at.error)
    at.radio(key="p_disp_merge").set_value("budget").run()
    at.multiselect(key="p_disp_positions").set_value(["attn_out"]).run()
    at.slider(key="p_disp_sparsity").set_value(0.7).run()
    assert not at.exception and any("cannot be reached" in e.value for e in at.error)


def test_evaluate_job_equals_evaluate_task_on_disp_copy(cache_dir, tiny_lm):
    state = page_state(tiny_lm)
    dstats = disp_stats(tiny_lm)
    at = open_page(tiny_lm, **state)
    at.slider(key="p_disp_sparsity").set_value(0.4).run()
    at.number_input(key="p_disp_limit").set_value(3).run()
    at.button(key="btn_disp_evaluate").click().run()
    finish_jobs(at)
    ok(at)
    comp = at.session_state["disp_box"]["comparison"]
    sets = D.build_disp_masks(dstats, D.DispSettings(sparsity=0.4)).index_sets()
    model = D.disp_copy(tiny_lm.model, sets)
    settings = EvalSettings(limit=3)
    direct = [evaluate_task(model, tiny_lm.tokenizer, t, settings) for t in tasks()]
    dense = [evaluate_task(tiny_lm.model, tiny_lm.tokenizer, t, settings) for t in tasks()]
    assert [r.value for r in comp["pruned"]] == [r.value for r in direct]
    assert [r.value for r in comp["dense"]] == [r.value for r in dense]
    for got, want, d in zip(comp["pruned"], direct, dense, strict=True):  # per choice: the very model, not dense
        np.testing.assert_allclose(np.concatenate(got.logliks), np.concatenate(want.logliks), rtol=1e-5)
        assert np.abs(np.concatenate(want.logliks) - np.concatenate(d.logliks)).max() > 1e-4
    bars = fig(at, "Dense vs DISP")["data"]
    assert bars[1]["name"] == "DISP"
    np.testing.assert_allclose(arr(bars[1]["y"]), [r.value for r in direct] + [np.mean([r.value for r in direct])],
                               rtol=1e-6)
    assert comp["size"]["pruned"]["params"] == count_parameters(model) < comp["size"]["dense"]["params"]
    assert any("Preview" in i.value for i in at.info)

    at.slider(key="p_disp_sparsity").set_value(0.2).run()  # other index sets: the old numbers are flagged
    assert any("earlier index sets" in w.value for w in at.warning)


def test_export_writes_the_disp_folder_and_refuses_a_non_empty_one(cache_dir, tiny_lm, tmp_path):
    from diet.disp import load_disp

    state = page_state(tiny_lm)
    disp_stats(tiny_lm)
    at = open_page(tiny_lm, **state)
    at.slider(key="p_disp_sparsity").set_value(0.4).run()
    out = tmp_path / "disp-out"
    at.text_input(key="disp_out_dir").set_value(str(out)).run()
    at.button(key="btn_disp_export").click().run()
    finish_jobs(at)
    ok(at)
    shown = at.session_state["disp_result"].index_sets()
    saved = json.loads((out / "disp.json").read_text())["index_sets"]
    assert all(saved[p][i] == shown[p][i].tolist() for p in D.POSITIONS for i in range(len(shown[p])))
    assert json.loads((out / "diet_settings.json").read_text())["mode"] == "disp"
    assert D.index_sets_of(load_disp(out))["mlp_mid"][0].tolist() == shown["mlp_mid"][0].tolist()
    assert "trust_remote_code=True" in at.code[0].value and str(out) in at.code[0].value

    jobs = len(at.session_state["runner"].jobs)
    at.button(key="btn_disp_export").click().run()  # not empty now: the engine's message, no job, no traceback
    assert not at.exception
    assert any("not empty" in e.value for e in at.error)
    assert len(at.session_state["runner"].jobs) == jobs


def test_a_model_disp_cannot_cut_is_a_message_when_the_page_opens(cache_dir, tmp_path):
    lm = LoadedModel(tiny_model("phi3"), tiny_tokenizer(), ModelSpec(name="tiny-phi3"), str(tmp_path), "tiny:phi3:0")
    at = open_page(lm, **page_state(lm))
    assert not at.exception
    assert [e.value for e in at.error] == [f"DISP supports {', '.join(D.DISP_FAMILIES)} models; phi3 is not "
                                           "supported yet"]
    assert "btn_disp_profile" not in [b.key for b in at.button]
