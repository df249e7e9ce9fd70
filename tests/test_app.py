"""The app, page by page, with Streamlit's AppTest — on a tiny random model and synthetic statistics, so the whole
file runs in well under a minute. Figures are checked on the data the browser would receive, against the engine
computing the same thing directly. Also: the background-job runner the pages rely on."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from diet import masks as M
from diet.api import build_mask, profile_tasks, prune_copy
from diet.errors import DietError
from diet.evaluate import EvalSettings, evaluate_task
from diet.jobs import CANCELLED, DONE, FAILED, Job, JobRunner
from diet.models import LoadedModel, count_parameters
from diet.profile import Cancelled, Stats
from diet.settings import MaskSettings, ModelSpec, ProfileSettings
from diet.tasks import get_task
from tests.test_viz import arr
from tests.tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
MODEL, MASKS = "pages/1_model_and_tasks.py", "pages/2_masks.py"
PRUNE, EXPORT = "pages/3_prune_and_evaluate.py", "pages/4_export.py"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("DIET_CACHE", str(d))
    return d


@pytest.fixture
def tiny_lm(tmp_path) -> LoadedModel:
    return LoadedModel(tiny_model("llama"), tiny_tokenizer(), ModelSpec(name="tiny-llama"), str(tmp_path),
                       "tiny:llama:0")


def open_page(page: str, lm: LoadedModel | None = None, **state) -> AppTest:
    """The app with a tiny model (and any other session state) seeded, switched to `page`."""
    at = AppTest.from_file(APP, default_timeout=60)
    if lm is not None:
        at.session_state["_test_model"] = lm
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(page).run()
    return at


def finish_jobs(at: AppTest, timeout: float = 120) -> None:
    """Wait for the background jobs, then rerun the page so it takes in their results (as the poller would)."""
    for job in at.session_state["runner"].jobs:
        assert job.wait(timeout), f"job {job.title} did not finish"
    at.run()


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def figs(at: AppTest) -> dict[str, dict]:
    """Every plotly chart on the page, by its title."""
    out = {}
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        out[spec["layout"]["title"]["text"]] = spec
    return out


def fig(at: AppTest, prefix: str) -> dict:
    found = [s for t, s in figs(at).items() if t.startswith(prefix)]
    assert len(found) == 1, (prefix, list(figs(at)))
    return found[0]


def synthetic_stats(names: list[str], layers: int = 4, width: int = 96, seed: int = 0) -> dict[str, Stats]:
    """Statistics shaped like the engine's, from random numbers (a shared component + a per-task one)."""
    rng = np.random.default_rng(seed)
    shared = rng.random((layers, width))
    out = {}
    for n in names:
        a = (shared + rng.random((layers, width))).astype(np.float32)
        q = (rng.random((layers, width)) * 3).astype(np.float32)  # RMS ranks differently from mean |x|
        halves = lambda x: np.stack([x * 0.5, x * 0.5]).astype(np.float32)  # noqa: E731
        meta = {"shape": {"family": "llama", "unit": "mlp", "layers": layers, "widths": [width] * layers,
                          "params_per_unit": [96] * layers, "total_params": 200_000},
                "task": n, "task_source": "offline", "texts": 8}
        out[n] = Stats(halves(a * 100), halves(q * 100), halves(a * 10), np.array([50.0, 50.0]), meta)
    return out


# ------------------------------------------------------------------------------------------------ landing


def test_landing_page_renders_offline_without_loading_a_model(cache_dir, monkeypatch):
    monkeypatch.setattr("diet.models.load_model", lambda *a, **k: pytest.fail("the landing page loads no model"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    ok(at)
    assert at.title[0].value == "DIET Explorer"
    assert len(at.get("page_link")) == 4


# ------------------------------------------------------------------------------------------------ page 1


def test_model_page_profiles_the_chosen_tasks_and_shows_them_cached(cache_dir, tiny_lm):
    at = open_page(MODEL, tiny_lm)
    ok(at)
    assert "tiny-llama" in at.success[0].value
    at.multiselect(key="p_offline").set_value(["arithmetic", "capitals"]).run()
    at.number_input(key="p_samples").set_value(8).run()
    table = at.dataframe[0].value
    assert list(table["task"]) == ["arithmetic", "capitals"] and set(table["status"]) == {"to profile"}
    assert at.button(key="btn_profile").label.startswith("Profile 2 task(s) — about")
    at.button(key="btn_profile").click().run()
    finish_jobs(at)
    ok(at)
    stats = at.session_state["stats"]
    assert list(stats) == ["arithmetic", "capitals"]
    direct = profile_tasks(tiny_lm, [get_task("arithmetic")], ProfileSettings(samples=8))  # now a cache hit
    np.testing.assert_array_equal(stats["arithmetic"].abs_sum, direct["arithmetic"].abs_sum)
    assert set(at.dataframe[0].value["status"]) == {"cached ✓"}
    assert at.button(key="btn_profile").label.startswith("Load the cached statistics")
    assert any("done" in s.value for s in at.success)


def test_cancel_stops_profiling_and_writes_nothing(cache_dir, tiny_lm, monkeypatch):
    import pages._work as W

    gate = threading.Event()
    real = W.profile_tasks

    def gated(*args, **kwargs):  # hold the worker so the test can press Cancel while it runs
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(W, "profile_tasks", gated)
    at = open_page(MODEL, tiny_lm)
    at.multiselect(key="p_offline").set_value(["arithmetic", "sentiment"]).run()
    at.number_input(key="p_samples").set_value(8).run()
    at.button(key="btn_profile").click().run()
    assert len(at.get("progress")) == 2  # one live bar per task
    at.button(key="cancel-main").click().run()
    job = at.session_state["runner"].jobs[-1]
    assert job.snapshot().stop_requested
    gate.set()
    finish_jobs(at)
    assert job.snapshot().status == CANCELLED
    assert "stats" not in at.session_state
    assert not list(cache_dir.rglob("*.safetensors"))  # no statistics written, not even a partial file
    assert any("nothing was written" in w.value for w in at.warning)
    assert not at.exception


def test_uploaded_task_files_are_used_and_bad_ones_explained(cache_dir, tiny_lm):
    at = open_page(MODEL, tiny_lm)
    good = "\n".join(json.dumps({"context": f"Q: {i} plus one?\nA:", "choices": [str(i + 1), str(i + 2)],
                                 "gold": 0}) for i in range(20)).encode()
    bad = b'{"context": "x", "choices": ["a", "b"], "gold": 0}\nthis is not json\n'
    at.file_uploader(key="uploads").set_value([("my_task.jsonl", good, "application/json"),
                                               ("broken.jsonl", bad, "application/json")]).run()
    assert not at.exception
    assert any("broken.jsonl" in e.value and "line 2" in e.value for e in at.error)
    table = at.dataframe[0].value
    assert list(table["task"]) == ["my_task"] and list(table["source"]) == ["file"]
    assert list(table["evaluation items"]) == [12]  # 60% of 20 items, the rest calibrates


def test_a_bad_model_name_is_a_message_not_a_traceback(cache_dir):
    at = open_page(MODEL, spec=ModelSpec(name="no/such/model/here"))
    assert not at.exception
    assert "unknown model" in at.error[0].value


# ------------------------------------------------------------------------------------------------ page 2


def test_masks_page_without_statistics_points_to_page_one(cache_dir):
    at = open_page(MASKS)
    assert not at.exception
    assert "No task statistics" in at.info[0].value


def test_masks_page_figures_follow_the_widgets_without_a_forward_pass(cache_dir, tiny_lm, monkeypatch):
    stats = synthetic_stats(["a", "b", "c"])
    forwards: list[str] = []
    spy = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: forwards.append(type(m).__name__))
    monkeypatch.setattr("diet.models.load_model", lambda *a, **k: pytest.fail("the masks page loads no model"))
    try:
        at = open_page(MASKS, tiny_lm, stats=stats)
        ok(at)
        z = lambda: arr(fig(at, "Merged mask")["data"][0]["z"])  # noqa: E731  (96 channels: one column each)
        default = build_mask(stats, MaskSettings())
        mean_norm = np.mean([M.normalise(M.scores_from(stats[n])) for n in "abc"], axis=0)
        order = np.argsort(-mean_norm, axis=1, kind="stable")  # sorted by score is our default view
        np.testing.assert_array_equal(z(), np.take_along_axis(default.mask, order, axis=1))
        at.toggle(key="p_sort").set_value(False).run()
        np.testing.assert_array_equal(z(), default.mask)

        at.slider(key="p_sparsity").set_value(0.5).run()
        ok(at)
        np.testing.assert_array_equal(z(), build_mask(stats, MaskSettings(sparsity=0.5)).mask)
        assert z().mean() == 0.5

        at.radio(key="p_merge").set_value("threshold").run()
        at.slider(key="p_threshold").set_value(3).run()
        ok(at)
        r = build_mask(stats, MaskSettings(sparsity=0.5, merge="threshold", threshold=3))
        np.testing.assert_array_equal(z(), r.votes == 3)  # intersection of the three task masks
        votes = fig(at, "Votes")["data"][0]
        np.testing.assert_array_equal(arr(votes["z"]), r.votes)
        assert (votes["zmin"], votes["zmax"]) == (-0.5, 3.5)  # fixed colours whatever the settings

        at.radio(key="p_score").set_value("rms").run()
        r_rms = build_mask(stats, MaskSettings(sparsity=0.5, merge="threshold", threshold=3, score="rms"))
        np.testing.assert_array_equal(z(), r_rms.mask)
        assert not np.array_equal(r_rms.mask, r.mask)

        at.radio(key="p_merge").set_value("budget").run()
        at.radio(key="p_allocation").set_value("global").run()
        ok(at)
        r_glob = build_mask(stats, MaskSettings(sparsity=0.5, score="rms", allocation="global"))
        bars = fig(at, "Kept channels per layer")["data"][0]
        np.testing.assert_array_equal(arr(bars["y"]), M.kept_per_layer(r_glob.mask))
        assert len(set(arr(bars["y"]).tolist())) > 1  # global allocation: widths differ per layer
        assert [m.value for m in at.metric][3] == "per layer"

        at.selectbox(key="p_view").set_value("b").run()
        np.testing.assert_array_equal(arr(fig(at, "Task mask of b")["data"][0]["z"]), r_glob.task_masks[1])
        at.slider(key="p_layer").set_value(2).run()
        strip = fig(at, "Layer 2")["data"][1]
        assert strip["y"] == ["merged", "a", "b", "c"]
        np.testing.assert_array_equal(arr(strip["z"])[0], r_glob.mask[2])

        jac = fig(at, "Overlap between task masks")["data"][0]
        np.testing.assert_allclose(arr(jac["z"]), M.jaccard_matrix(r_glob.task_masks), atol=1e-4)
        chance = np.mean([M.chance_jaccard(r_glob.task_masks[i], r_glob.task_masks[j])
                          for i in range(3) for j in range(3) if i != j])
        refs = [m.value for m in at.markdown if m.value.startswith("**Read against**")]
        assert len(refs) == 4 and f"**{chance:.3f}**" in refs[0]  # next to each of the four overlap figures
        assert "Which tasks keep the same channels" in " ".join(figs(at))
    finally:
        spy.remove()
    assert forwards == []  # no module of any model ran


# ------------------------------------------------------------------------------------------------ page 3


def test_prune_page_measures_dense_vs_pruned_like_the_engine(cache_dir, tiny_lm):
    tasks = [get_task("arithmetic"), get_task("sentiment")]
    stats = profile_tasks(tiny_lm, tasks, ProfileSettings(samples=8))
    at = open_page(PRUNE, tiny_lm, stats=stats)
    ok(at)
    at.number_input(key="p_limit").set_value(3).run()
    at.button(key="btn_evaluate").click().run()
    finish_jobs(at)
    ok(at)
    settings = EvalSettings(limit=3)
    result = build_mask(stats, MaskSettings())  # the Masks page was not visited: DIET's defaults
    pruned_model = prune_copy(tiny_lm, result)
    dense = [evaluate_task(tiny_lm.model, tiny_lm.tokenizer, t, settings).value for t in tasks]
    pruned = [evaluate_task(pruned_model, tiny_lm.tokenizer, t, settings).value for t in tasks]
    bars = fig(at, "Dense vs pruned")["data"]
    np.testing.assert_allclose(arr(bars[0]["y"]), dense + [np.mean(dense)], rtol=1e-6)
    np.testing.assert_allclose(arr(bars[1]["y"]), pruned + [np.mean(pruned)], rtol=1e-6)
    comp = at.session_state["comparison"]
    assert comp["size"]["pruned"]["params"] == count_parameters(pruned_model) < comp["size"]["dense"]["params"]
    assert comp["speed"]["dense"] > 0 and comp["speed"]["pruned"] > 0
    assert any("Preview" in i.value for i in at.info)  # 3 items of many: said so
    assert len(list((cache_dir / "artifacts" / "eval").glob("*.json"))) == 4  # 2 tasks × (dense, pruned)

    at.multiselect(key="p_sweep").set_value([0.2, 0.5]).run()
    at.button(key="btn_sweep").click().run()
    finish_jobs(at)
    ok(at)
    curves = {t["name"]: t for t in fig(at, "Accuracy vs sparsity")["data"]}
    np.testing.assert_allclose(arr(curves["average"]["x"]), [0.2, 0.5], rtol=1e-6)
    assert arr(curves["average"]["y"])[0] == pytest.approx(np.mean(pruned), abs=1e-6)  # 0.2 = the default mask
    np.testing.assert_allclose(arr(curves["average (dense)"]["y"]), np.mean(dense), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ page 4


def test_export_page_writes_a_loadable_folder_and_explains_failures(cache_dir, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    import pages._work as W

    stats = profile_tasks(tiny_lm, [get_task("arithmetic"), get_task("capitals")], ProfileSettings(samples=8))
    at = open_page(EXPORT, tiny_lm, stats=stats)
    ok(at)
    assert [b.label for b in at.get("download_button")] == ["Download the mask (JSON)",
                                                             "Download the report (HTML with every figure)"]
    out = tmp_path / "exported"
    at.text_input(key="out_dir").set_value(str(out)).run()
    at.button(key="btn_export").click().run()
    finish_jobs(at)
    ok(at)
    result = build_mask(stats, MaskSettings())
    saved = json.loads((out / "mask.json").read_text())
    assert saved["keep"] == [k.tolist() for k in result.keep()]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.intermediate_size == int(result.mask[0].sum())
    assert str(out) in at.code[0].value

    at.button(key="btn_export").click().run()  # the folder is not empty now: refused, with a message
    finish_jobs(at)
    assert not at.exception
    assert any("not empty" in e.value for e in at.error)

    het = tmp_path / "heterogeneous"  # a mode the export module offers: listed and passed through
    at.text_input(key="out_dir").set_value(str(het)).run()
    at.selectbox(key="export_mode").set_value("heterogeneous").run()
    at.button(key="btn_export").click().run()
    finish_jobs(at)
    ok(at)
    assert json.loads((het / "diet_settings.json").read_text())["mode"] == "heterogeneous"
    assert "trust_remote_code=True" in at.code[0].value

    page = W.report("tiny-llama", result, stats)
    for title in ("Kept channels", "Votes", "Overlap between task masks", "Is the overlap meaningful?",
                  "Intersections", "Parameters"):
        assert f"<h2>{title}" in page


# ------------------------------------------------------------------------------------------------ job runner


def test_job_reports_progress_and_returns_its_result():
    def work(ctx):
        for i in range(3):
            ctx.report("step", i + 1, 3)
        ctx.note("almost")
        return 42

    job = Job.start("demo", "Demo", work)
    assert job.wait(10)
    snap = job.snapshot()
    assert (snap.status, job.result, snap.message) == (DONE, 42, "almost")
    assert snap.lines[0].fraction == 1.0


def test_job_errors_become_one_line_and_cancel_is_cooperative():
    def user_error(ctx):
        raise DietError("no such task")

    def bug(ctx):
        raise ZeroDivisionError("boom")

    def loop(ctx):
        while not ctx.should_stop():
            time.sleep(0.01)
        raise Cancelled("stopped")

    a, b, c = Job.start("a", "A", user_error), Job.start("b", "B", bug), Job.start("c", "C", loop)
    c.cancel()
    for j in (a, b, c):
        assert j.wait(10)
    assert (a.snapshot().status, a.error, a.detail) == (FAILED, "no such task", "")
    assert b.snapshot().status == FAILED and b.error == "unexpected error: ZeroDivisionError: boom"
    assert "Traceback" in b.detail  # kept for the log, not for the page
    assert c.snapshot().status == CANCELLED


def test_runner_runs_one_job_at_a_time():
    gate = threading.Event()
    runner = JobRunner()
    first = runner.start("x", "First", lambda ctx: gate.wait(10))
    with pytest.raises(DietError, match="First"):
        runner.start("y", "Second", lambda ctx: None)
    gate.set()
    assert first.wait(10)
    assert runner.finished() == [first]
    first.collected = True
    runner.start("y", "Second", lambda ctx: None).wait(10)
    assert [j.title for j in runner.jobs] == ["Second"]
