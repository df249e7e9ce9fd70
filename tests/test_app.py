"""The app, page by page, with Streamlit's AppTest — on a tiny random model and synthetic statistics, so the whole
file runs in well under a minute. Figures are checked on the data the browser would receive, against the engine
computing the same thing directly. The job runner, gate and shared models the pages rely on: tests/test_jobs.py."""

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
from diet.compare import speed_key
from diet.evaluate import EvalSettings, evaluate_task
from diet.jobs import CANCELLED
from diet.models import LoadedModel, count_parameters
from diet.profile import Stats
from diet.report import report
from diet.settings import MaskSettings, MethodSettings, ModelSpec, ProfileSettings
from diet.tasks import get_task
from tests.test_viz import arr

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
MODEL, MASKS = "pages/1_model_and_tasks.py", "pages/2_masks.py"
PRUNE, EXPORT, SWEEP = "pages/3_prune_and_evaluate.py", "pages/4_export.py", "pages/5_sweep.py"


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


def evaluate_on_prune_page(at: AppTest, limit: int) -> None:
    """On page 3: evaluate dense vs pruned on the first `limit` items of each task, and wait for the result."""
    at.number_input(key="p_limit").set_value(limit).run()
    at.button(key="btn_evaluate").click().run()
    finish_jobs(at)


def wait_reported(at: AppTest, lines: int, timeout: float = 10) -> None:
    """Until the running job has reported `lines` progress lines (it does once it has its turn on the server's
    gate, after sizing torch's threads), then rerun the page so it draws them (as the poller would)."""
    deadline = time.time() + timeout
    while len(at.session_state["runner"].jobs[-1].snapshot().lines) < lines and time.time() < deadline:
        time.sleep(0.05)
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


PS = ProfileSettings(samples=8)  # what the tiny model's statistics are profiled with in these tests


def tiny_stats(lm: LoadedModel, names=("arithmetic", "capitals")) -> dict[str, Stats]:
    return profile_tasks(lm, [get_task(n) for n in names], PS)


def profile_general(lm: LoadedModel) -> Stats:
    """The shipped general corpus profiled on the tiny model (cached on disk, as the app's job leaves it)."""
    from diet.general import general_task

    return profile_tasks(lm, [general_task("generated")], PS)["general"]


def engine_mask(lm, stats, name: str, mask=MaskSettings(), **knobs):
    """What diet.api.method_mask builds for the same inputs: the reference every app mask is checked against."""
    from diet.api import method_mask

    return method_mask(lm, stats, mask, MethodSettings(method=name, **knobs), PS, general="generated")


def same_mask(got, want) -> None:
    assert got.method == want.method and got.tasks == want.tasks
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(got.task_masks, want.task_masks)
    assert (got.compensation is None) == (want.compensation is None)
    if want.compensation is not None:
        np.testing.assert_array_equal(got.compensation, want.compensation)
    assert got.summary["params_removed"] == want.summary["params_removed"]


def forward_spy() -> tuple[list[str], object]:
    """(names of modules run, handle): any forward pass of any model lands in the list."""
    forwards: list[str] = []
    return forwards, torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: forwards.append(type(m).__name__))


# ------------------------------------------------------------------------------------------------ landing


def test_landing_page_renders_offline_without_loading_a_model(cache_dir, monkeypatch):
    monkeypatch.setattr("diet.models.load_model", lambda *a, **k: pytest.fail("the landing page loads no model"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    ok(at)
    assert at.title[0].value == "DIET Explorer"
    assert [link.proto.label for link in at.get("page_link")][:5] == [
        "1 · Model and tasks", "2 · Masks", "3 · Prune and evaluate", "4 · Export", "5 · Sweep"]


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


@pytest.mark.parametrize("end_wait", [0.0, 5.0])
def test_a_job_ending_during_the_progress_redraw_shows_its_result_at_once(cache_dir, tiny_lm, monkeypatch, end_wait):
    """The redraw waits for the job's end (up to END_WAIT_SECONDS): a short job's result is on the page after the
    click's own run, not one poll later. Without the wait (0 s) the same run still shows the job running."""
    import pages._common as C
    import pages._work as W

    real = W.profile_tasks
    monkeypatch.setattr(W, "profile_tasks", lambda *a, **k: time.sleep(1.0) or real(*a, **k))  # ends 1 s in
    monkeypatch.setattr(C, "END_WAIT_SECONDS", end_wait)
    at = open_page(MODEL, tiny_lm)
    at.multiselect(key="p_offline").set_value(["arithmetic"]).run()
    at.number_input(key="p_samples").set_value(4).run()
    at.button(key="btn_profile").click().run()
    ok(at)
    assert ("stats" in at.session_state) == (end_wait > 0)
    assert any("done" in s.value for s in at.success) == (end_wait > 0)
    finish_jobs(at)


@pytest.mark.parametrize("rerun", [True, False])
def test_a_job_ending_between_collect_and_panel_still_shows_its_result(cache_dir, tiny_lm, monkeypatch, rerun):
    """A short job can end after the page collected finished jobs (top of the page) and before its job panel: the
    panel then finds neither a running job nor an outcome. `rerun_if_ended` reruns the page so it takes the result;
    without it (rerun=False: the check disabled) the page stays without its statistics — the race the four-viewer
    browser test hit once jobs started without a 0.4 s pause."""
    import pages._common as C
    import pages._work as W

    release = threading.Event()
    real, real_collect = W.profile_tasks, C.collect_jobs
    monkeypatch.setattr(W, "profile_tasks", lambda *a, **k: release.wait(30) and real(*a, **k))

    def collect_then_let_the_job_end() -> None:
        real_collect()
        job = C.runner().active()
        if job is not None:  # the job ends right after this run collected: the gap the panel must cover
            release.set()
            assert job.wait(30)

    monkeypatch.setattr(C, "collect_jobs", collect_then_let_the_job_end)
    monkeypatch.setattr(C, "END_WAIT_SECONDS", 0.0)  # the progress redraw must not be what notices the end
    if not rerun:
        monkeypatch.setattr(C, "rerun_if_ended", lambda kinds=None: None)
    at = open_page(MODEL, tiny_lm)
    at.multiselect(key="p_offline").set_value(["arithmetic"]).run()
    at.number_input(key="p_samples").set_value(4).run()
    at.button(key="btn_profile").click().run()
    ok(at)
    assert ("stats" in at.session_state) == rerun
    assert any("done" in s.value for s in at.success) == rerun


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
    wait_reported(at, 2)
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


def test_every_task_shows_its_own_counts(cache_dir, tiny_lm):
    # an uploaded 60-item file next to an offline task: 24 of its items calibrate, the offline task has 100 texts
    at = open_page(MODEL, tiny_lm)
    items = "\n".join(json.dumps({"context": f"Q: {i} plus one?\nA:", "choices": [str(i + 1), str(i + 2)],
                                  "gold": 0}) for i in range(60)).encode()
    at.file_uploader(key="uploads").set_value([("mine.jsonl", items, "application/json")]).run()
    at.multiselect(key="p_offline").set_value(["arithmetic"]).run()
    table = at.dataframe[0].value.set_index("task")
    assert table.loc["mine", "calibration texts"] == 24 and table.loc["arithmetic", "calibration texts"] == 100
    assert table.loc["mine", "note"].startswith("36 of 60 items evaluate; 24 used for calibration")
    at.button(key="btn_profile").click().run()
    finish_jobs(at)
    ok(at)
    line = next(m.value for m in at.markdown if m.value.startswith("Statistics in this session"))
    assert "**arithmetic** (100 texts)" in line and "**mine** (24 texts)" in line, line


def test_results_say_when_items_went_to_calibration(tmp_path, tiny_lm):
    from diet.report import comparison_table, counts_notes

    records = [{"context": f"Q{i}:", "choices": ["yes", "no"], "gold": i % 2} for i in range(40)]
    path = tmp_path / "forty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    r = evaluate_task(tiny_lm.model, tiny_lm.tokenizer, get_task(str(path)), EvalSettings())
    table = comparison_table({"dense": [r], "pruned": [r]})
    assert table[0]["items"] == "24 of 40 scored; 16 used for calibration — set `split` to choose"
    assert counts_notes([r]) == ["Item counts: forty: 24 of 40 scored; 16 used for calibration — set `split` to "
                                 "choose."]


def test_slider_fast_path_equals_build_mask_and_split_half_overlap():
    # what a slider move runs on the Masks page (ranks computed once) against the engine, on random statistics
    from diet.api import ranked_scores, split_half_overlap
    from diet.report import half_ranks, split_halves, who_loses_ranks, who_loses_view

    rng = np.random.default_rng(11)
    for case in range(12):
        names = [f"t{i}" for i in range(int(rng.integers(1, 6)))]
        stats = synthetic_stats(names, layers=int(rng.integers(1, 5)), width=int(rng.integers(8, 120)), seed=case)
        for score in ("mean_abs", "rms"):
            ranked, halves = ranked_scores(stats, score), half_ranks(stats, score)
            for sparsity in (0.0, 0.2, 0.55, 0.9):
                settings = MaskSettings(sparsity=sparsity, score=score, merge=str(rng.choice(["budget", "threshold"])),
                                        allocation=str(rng.choice(["layer", "global"])), min_keep=0.05)
                want, got = build_mask(stats, settings), build_mask(stats, settings, ranked)
                for field in ("task_masks", "mask", "votes", "ranking"):
                    np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
                assert got.summary == want.summary and got.tasks == want.tasks and got.shape == want.shape
                assert split_halves(want, stats, halves) == {n: split_half_overlap(stats[n], settings) for n in names}
                if settings.allocation == "layer":  # who loses: the ranked path against diet.methods' own
                    fast = who_loses_view(want, stats, who_loses_ranks(stats, score, ranked))
                    slow = who_loses_view(want, stats)
                    assert fast[1] == slow[1] and fast[0].to_json() == slow[0].to_json()


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


def test_every_method_is_selectable_and_builds_the_engines_mask(cache_dir, tiny_lm):
    from diet.methods import list_methods

    stats = tiny_stats(tiny_lm)
    profile_general(tiny_lm)  # cached on disk: the page reads it, no job needed
    forwards, spy = forward_spy()
    try:
        at = open_page(MASKS, tiny_lm, stats=stats, profile_settings=PS)
        ok(at)
        box = at.selectbox(key="p_method")
        registry = list_methods()
        assert box.options == [box.format_func(m["name"]) for m in registry] and box.value == "diet"
        assert "task-fusion · task-aware (our adaptation)" in box.options
        for m in registry:
            at.selectbox(key="p_method").set_value(m["name"]).run()
            ok(at)
            knobs = {"single_task": "arithmetic"} if m["name"] == "single-task" else {}
            got = at.session_state["mask_result"]
            same_mask(got, engine_mask(tiny_lm, stats, m["name"], **knobs))
            assert any(m["description"] in md.value for md in at.markdown)  # its one-line description
            assert f"**{'DIET' if m['name'] == 'diet' else m['name']}**" in at.sidebar.markdown[-1].value
        # the method's own settings: shown only for it, and they reach the mask
        at.selectbox(key="p_method").set_value("task-fusion").run()
        at.slider(key="p_tau").set_value(0.5).run()
        at.radio(key="p_fusion_norm").set_value("zscore").run()
        ok(at)
        same_mask(at.session_state["mask_result"],
                  engine_mask(tiny_lm, stats, "task-fusion", tau=0.5, fusion_norm="zscore"))
        assert not at.get("radio") or "p_calibration" not in [r.key for r in at.radio]
        at.selectbox(key="p_method").set_value("wanda-sp").run()
        assert "p_tau" not in [s_.key for s_ in at.slider]
        at.radio(key="p_calibration").set_value("tasks").run()
        at.slider(key="p_sparsity").set_value(0.4).run()
        ok(at)
        same_mask(at.session_state["mask_result"],
                  engine_mask(tiny_lm, stats, "wanda-sp", MaskSettings(sparsity=0.4), calibration="tasks"))
        at.selectbox(key="p_method").set_value("single-task").run()
        at.selectbox(key="p_single_task").set_value("capitals").run()
        same_mask(at.session_state["mask_result"],
                  engine_mask(tiny_lm, stats, "single-task", MaskSettings(sparsity=0.4), single_task="capitals"))
        at.selectbox(key="p_method").set_value("random").run()
        at.number_input(key="p_seed").set_value(7).run()
        at.radio(key="p_allocation").set_value("global").run()
        ok(at)
        want = engine_mask(tiny_lm, stats, "random", MaskSettings(sparsity=0.4, allocation="global"), seed=7)
        same_mask(at.session_state["mask_result"], want)
        # a single mask: the per-task views say why they are empty instead of failing
        assert fig(at, "random mask")  # the overview names the method
        assert any("gives one mask" in i.value for i in at.info)
        np.testing.assert_array_equal(arr(fig(at, "Kept channels per layer")["data"][0]["y"]),
                                      M.kept_per_layer(want.mask))
    finally:
        spy.remove()
    assert forwards == []  # weights read, statistics from the cache: no forward pass for any method


def test_a_method_needing_general_text_profiles_it_in_the_background(cache_dir, tiny_lm):
    stats = tiny_stats(tiny_lm)
    at = open_page(MASKS, tiny_lm, stats=stats, profile_settings=PS)
    at.selectbox(key="p_method").set_value("task-agnostic").run()
    ok(at)
    assert at.session_state["mask_result"].method == "diet"  # nothing to show yet: the DIET mask stays current
    assert any("general text" in i.value and "forward pass" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    at.button(key="btn_general").click().run()
    job = at.session_state["runner"].jobs[-1]
    assert job.kind == "general"
    finish_jobs(at)
    ok(at)
    assert job.snapshot().lines[0].label == "general text"  # progress per batch of texts
    same_mask(at.session_state["mask_result"], engine_mask(tiny_lm, stats, "task-agnostic"))
    assert "general text: generated" in " ".join(md.value for md in at.markdown)
    assert fig(at, "task-agnostic mask")

    forwards, spy = forward_spy()  # a new session: the statistics come from the disk cache, instantly
    try:
        again = open_page(MASKS, tiny_lm, stats=stats, profile_settings=PS)
        again.selectbox(key="p_method").set_value("minitron").run()
        ok(again)
    finally:
        spy.remove()
    assert forwards == []
    assert "btn_general" not in [b.key for b in again.button]
    same_mask(again.session_state["mask_result"], engine_mask(tiny_lm, stats, "minitron"))


def test_flap_compensation_reaches_pruning_and_export_explains_itself(cache_dir, tiny_lm):
    stats = tiny_stats(tiny_lm)
    profile_general(tiny_lm)
    at = open_page(MASKS, tiny_lm, stats=stats, profile_settings=PS)
    at.selectbox(key="p_method").set_value("flap").run()
    ok(at)
    want = engine_mask(tiny_lm, stats, "flap")
    assert want.compensation is not None
    same_mask(at.session_state["mask_result"], want)
    at.toggle(key="p_flap_bias").set_value(False).run()
    same_mask(at.session_state["mask_result"], engine_mask(tiny_lm, stats, "flap", flap_bias=False))
    at.toggle(key="p_flap_bias").set_value(True).run()

    at.switch_page(PRUNE).run()  # the compensated mask is pruned as it is (not replaced by DIET's default)
    ok(at)
    assert "FLAP's bias compensation" in " ".join(md.value for md in at.markdown)
    evaluate_on_prune_page(at, 2)
    ok(at)
    pruned = prune_copy(tiny_lm, want)
    direct = [evaluate_task(pruned, tiny_lm.tokenizer, t, EvalSettings(limit=2)).value
              for t in (get_task("arithmetic"), get_task("capitals"))]
    assert [r.value for r in at.session_state["comparison"]["pruned"]] == direct

    at.switch_page(EXPORT).run()
    assert not at.exception and not at.error
    assert not at.warning and not at.button(key="btn_export").disabled  # a Llama config carries the bias (mlp_bias)
    assert [b.label for b in at.get("download_button")][0] == "Download the mask (JSON)"

    page = report("tiny-llama", at.session_state["mask_result"], stats)  # what the report button builds
    assert "<h2>Kept channels" in page and "<h2>Votes" not in page and "<td>Method</td><td>flap — " in page
    assert page.index("Removed ") < page.index("<h2>Settings") < page.index("<h2>Kept channels")  # headline first
    assert "{'sparsity'" not in page  # settings as a table, not a Python dict


def test_settings_hidden_for_a_method_change_nothing_and_shown_ones_matter():
    """The Masks page shows a knob only where the method's traits say it matters: check that on every method."""
    from dataclasses import replace

    from diet.methods import MethodInputs, list_methods, mask_knobs, method_knobs, needs_general, run_method

    stats = synthetic_stats(["a", "b", "c"])
    general = synthetic_stats(["general"], seed=1)["general"]
    rng = np.random.default_rng(2)
    for st_ in [*stats.values(), general]:  # Minitron's per-sequence sums
        st_.seq_sq_sum, st_.seqs = rng.random((2, 4, 96)).astype(np.float32), np.array([4.0, 4.0])
    a = stats["a"]  # three times the tokens of the others, same means: pooling by tokens and by tasks then differ
    a.abs_sum, a.sq_sum, a.sum, a.count = a.abs_sum * 3, a.sq_sum * 3, a.sum * 3, a.count * 3
    weights = {k: rng.random((4, 96)) + 0.1 for k in ("out_l2", "out_l1mean", "magnitude")}
    inputs = MethodInputs(stats, general, weights)
    mask_changes = {"merge": dict(merge="threshold", threshold=3), "score": dict(score="rms"),
                    "allocation": dict(allocation="global"), "min_keep": dict(min_keep=0.5)}  # 0.5: uniform at 50%
    method_changes = {"calibration": dict(calibration="tasks"), "tau": dict(tau=0.5), "alpha": dict(alpha=0.0),
                      "fusion_norm": dict(fusion_norm="zscore"), "single_task": dict(single_task="c"),
                      "seed": dict(seed=5), "flap_bias": dict(flap_bias=False),
                      "pool_weight": dict(pool_weight="tasks")}

    def outcome(name, mask: MaskSettings, ms: MethodSettings):
        r = run_method(name, inputs, mask, ms)
        return r.mask.tobytes() + (b"" if r.compensation is None else r.compensation.tobytes())

    for m in list_methods():
        name = m["name"]
        ms = MethodSettings(method=name, single_task="a" if name == "single-task" else None)
        mask = MaskSettings(sparsity=0.5)
        base = outcome(name, mask, ms)
        shown = mask_knobs(name, ms) | method_knobs(name, ms)
        for knob, change in mask_changes.items():
            changed = outcome(name, replace(mask, **change), ms) != base
            assert changed == (knob in shown), (name, knob)
        for knob, change in method_changes.items():
            changed = outcome(name, mask, replace(ms, **change)) != base
            assert changed == (knob in shown), (name, knob)
        assert ("general" in shown) == needs_general(name, ms)
        drop = {"a": stats["a"], "b": stats["b"]}  # the task selection matters exactly where "tasks" is shown
        if name != "single-task":
            other = run_method(name, MethodInputs(drop, general, weights), mask, ms)
            assert (other.mask.tobytes() != run_method(name, inputs, mask, ms).mask.tobytes()) == ("tasks" in shown), \
                name


# ------------------------------------------------------------------------------------------------ page 3


def test_prune_page_measures_dense_vs_pruned_like_the_engine(cache_dir, tiny_lm):
    tasks = [get_task("arithmetic"), get_task("sentiment")]
    stats = profile_tasks(tiny_lm, tasks, ProfileSettings(samples=8))
    at = open_page(PRUNE, tiny_lm, stats=stats)
    ok(at)
    evaluate_on_prune_page(at, 3)
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
    assert "speed" not in comp and not [m for m in at.metric if "Forward speed" in m.label]  # not timed unasked
    assert any("Preview" in i.value for i in at.info)  # 3 items of many: said so
    assert len(list((cache_dir / "artifacts" / "eval").glob("*.json"))) == 4  # 2 tasks × (dense, pruned)
    at.button(key="btn_speed").click().run()  # on demand: its own job, kept in the session by the mask's digest
    finish_jobs(at)
    ok(at)
    speed = at.session_state["speed_memo"][speed_key(tiny_lm, result.digest())]
    assert speed["dense"] > 0 and speed["pruned"] > 0 and at.session_state["comparison"]["speed"] == speed
    assert [m for m in at.metric if m.label == "Forward speed (measured)"]
    assert at.button(key="btn_speed").label == "Measure again"
    assert "sweep" in [link.proto.page for link in at.get("page_link")]  # sweeps live on their own page


# ------------------------------------------------------------------------------------------------ page 4


def test_export_page_writes_a_loadable_folder_and_explains_failures(cache_dir, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    stats = profile_tasks(tiny_lm, [get_task("arithmetic"), get_task("capitals")], ProfileSettings(samples=8))
    at = open_page(EXPORT, tiny_lm, stats=stats)
    ok(at)
    assert [b.label for b in at.get("download_button")] == ["Download the mask (JSON)",
                                                             "Download the report (HTML with every figure)",
                                                             "All figures (zip: PNG + SVG)"]
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

    page = report("tiny-llama", result, stats)
    for title in ("Kept channels", "Votes", "Overlap between task masks", "Is the overlap meaningful?",
                  "Intersections", "Parameters"):
        assert f"<h2>{title}" in page


def test_export_page_shows_the_rounding_cost_and_writes_a_q8_gguf(cache_dir, tmp_path):
    """Page 4: --round-to's parameter and accuracy cost next to the exact mask (the accuracy from an evaluation of
    the rounded mask on the exact one's tasks and items), then a Q8_0 GGUF of the rounded mask."""
    from diet.api import build_mask, profile_tasks, prune_copy, rounded
    from diet.evaluate import EvalSettings, evaluate_task
    from diet.models import LoadedModel
    from diet.settings import MaskSettings, ModelSpec, ProfileSettings
    from diet.tasks import get_task
    from tests.test_gguf import EMBEDDED, tiny  # a tiny model with the embedded tokenizer's vocabulary
    from tests.tiny import tiny_tokenizer

    lm = LoadedModel(tiny("llama"), tiny_tokenizer(), ModelSpec(name=EMBEDDED), str(tmp_path), "tiny:gguf:0")
    tasks = [get_task("arithmetic"), get_task("sentiment")]
    stats = profile_tasks(lm, tasks, ProfileSettings(samples=8))
    at = open_page(PRUNE, lm, stats=stats)
    evaluate_on_prune_page(at, 5)
    comp = at.session_state["comparison"]

    at = open_page(EXPORT, lm, stats=stats, comparison=comp)
    ok(at)
    at.selectbox(key="round_to").set_value(32).run()
    ok(at)
    exact = build_mask(stats, MaskSettings())
    r32 = rounded(exact, 32)
    shown = str(at.table[0].value)
    assert f"{exact.summary['params_after']:,}" in shown and f"{r32.summary['params_after']:,}" in shown
    assert "not evaluated" in shown
    at.button(key="btn_eval_rounded").click().run()
    finish_jobs(at)
    ok(at)
    pruned = prune_copy(lm, r32)
    want = np.mean([evaluate_task(pruned, lm.tokenizer, t, EvalSettings(limit=5)).value for t in tasks])
    assert f"{100 * want:.1f}" in str(at.table[0].value) and "not evaluated" not in str(at.table[0].value)

    out = tmp_path / "q8"
    at.selectbox(key="export_mode").set_value("gguf").run()
    at.selectbox(key="gguf_outtype").set_value("q8_0").run()
    at.text_input(key="out_dir").set_value(str(out)).run()
    at.button(key="btn_export").click().run()
    finish_jobs(at)
    ok(at)
    written = json.loads((out / "diet_settings.json").read_text())
    assert written["mode"] == "gguf" and written["outtype"] == "q8_0" and written["round_to"] == 32
    assert written["kept_per_layer"] == [32, 32, 32] and (out / "model.gguf").is_file()
    assert f"llama-cli -m {out}/model.gguf" in at.code[0].value  # how to run it, not a transformers snippet


# ------------------------------------------------------------------------------------------------ page 5


def run_sweep_page(at: AppTest, methods: list[str], sparsities: list[float], limit: int) -> None:
    at.multiselect(key="p_sweep_methods").set_value(methods).run()
    at.multiselect(key="p_sweep_sparsities").set_value(sparsities).run()
    at.number_input(key="p_sweep_limit").set_value(limit).run()
    ok(at)
    at.button(key="btn_sweep").click().run()


def test_sweep_page_equals_run_sweep_and_reuses_its_cells(cache_dir, tiny_lm, monkeypatch):
    import diet.evaluate as E
    from diet import sweep as S

    stats = tiny_stats(tiny_lm)
    at = open_page(SWEEP, tiny_lm, stats=stats, profile_settings=PS)
    ok(at)
    assert at.multiselect(key="p_sweep_methods").value == ["diet", "task-agnostic", "wanda-sp", "random"]
    run_sweep_page(at, ["diet", "random"], [0.2, 0.5], 3)
    finish_jobs(at)
    ok(at)
    sweep = at.session_state["sweep"]
    settings = S.SweepSettings(methods=("diet", "random"), sparsities=(0.2, 0.5), tasks=("arithmetic", "capitals"),
                               limit=3, general="generated")
    total = (1 + len(S.cells(settings))) * 2  # dense + 4 pruned models, two tasks each
    assert (sweep["cached"], sweep["evaluated"], sweep["total"]) == (0, total, total)
    assert any(f"0 of {total} cells cached" in i.value for i in at.info)
    assert any("Preview" in i.value for i in at.info)

    calls: list[str] = []
    real = E.evaluate_task
    monkeypatch.setattr(E, "evaluate_task", lambda *a, **k: calls.append(a[2].name) or real(*a, **k))
    direct = S.run_sweep(tiny_lm, settings, PS, MaskSettings(), MethodSettings())  # the engine, called directly
    assert calls == []  # every cell of the same sweep was already measured by the page
    assert sweep["rows"] == direct
    shown = [d.value for d in at.dataframe]
    tidy = next(d for d in shown if "method" in d.columns)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(tidy.reset_index(drop=True), S.table(direct))
    means = S.mean_table(direct)
    pruned_means = means.drop(index="dense", columns=0.0)  # the dense model is stated above the table
    np.testing.assert_allclose(next(d for d in shown if "method" not in d.columns).to_numpy(), pruned_means.to_numpy())
    assert f"dense model: **{means.loc['dense', 0.0]:.1%}**" in " ".join(md.value for md in at.markdown)
    curves = {t["name"]: t for t in fig(at, "Accuracy vs sparsity")["data"]}
    assert list(curves) == ["diet", "random"]
    np.testing.assert_allclose(arr(curves["diet"]["y"]), pruned_means.loc["diet"].to_numpy(), rtol=1e-6)
    csv = next(b for b in at.get("download_button") if b.proto.label == "Download the table (CSV)")
    assert csv is not None

    page = report("tiny-llama", build_mask(stats, MaskSettings()), stats, sweep=sweep)  # the sweep in the report
    assert "<h2>Sweep: accuracy vs sparsity" in page and "<h2>Sweep results" in page

    at.button(key="btn_sweep").click().run()  # the same sweep again: read from the cache, nothing evaluated
    finish_jobs(at)
    ok(at)
    assert calls == []
    assert at.session_state["sweep"]["rows"] == direct
    assert any(f"{total} of {total} cells cached" in i.value and "0 evaluated" in i.value for i in at.info)

    run_sweep_page(at, ["diet", "random"], [0.2, 0.3, 0.5], 3)  # a wider sweep measures only the new cells
    finish_jobs(at)
    ok(at)
    assert sorted(calls) == ["arithmetic", "arithmetic", "capitals", "capitals"]  # diet and random at 0.3
    assert at.session_state["sweep"]["cached"] == total


def test_sweep_page_explains_bad_input(cache_dir, tiny_lm):
    at = open_page(SWEEP, tiny_lm, stats=tiny_stats(tiny_lm), profile_settings=PS)
    at.multiselect(key="p_sweep_methods").set_value([]).run()
    assert not at.exception
    assert any("Choose at least one method" in w.value for w in at.warning)
    assert at.button(key="btn_sweep").disabled
    at.multiselect(key="p_sweep_methods").set_value(["diet"]).run()
    at.multiselect(key="p_sweep_tasks").set_value([]).run()
    assert any("Choose at least one task" in w.value for w in at.warning)
    assert at.button(key="btn_sweep").disabled
    at.multiselect(key="p_sweep_tasks").set_value(["capitals"]).run()
    assert not at.warning and not at.button(key="btn_sweep").disabled


def test_sweep_cancel_keeps_finished_cells_and_the_rerun_resumes(cache_dir, tiny_lm, monkeypatch):
    import diet.evaluate as E

    gate = threading.Event()
    real = E.evaluate_task

    def gated(*args, **kwargs):  # hold the first evaluation so the test can press Cancel while it runs
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "evaluate_task", gated)
    at = open_page(SWEEP, tiny_lm, stats=tiny_stats(tiny_lm), profile_settings=PS)
    run_sweep_page(at, ["diet"], [0.2, 0.5], 2)
    wait_reported(at, 1)
    assert at.get("progress")
    at.button(key="cancel-main").click().run()
    job = at.session_state["runner"].jobs[-1]
    assert job.snapshot().stop_requested
    gate.set()
    finish_jobs(at)
    assert job.snapshot().status == CANCELLED and "sweep" not in at.session_state
    assert any("finished cells are kept" in w.value for w in at.warning)
    kept = len(list((cache_dir / "artifacts" / "sweep").glob("*.json")))
    assert kept == 2  # the dense model's two tasks, measured before the cancel took effect
    at.button(key="btn_sweep").click().run()
    finish_jobs(at)
    ok(at)
    assert at.session_state["sweep"]["cached"] == kept and at.session_state["sweep"]["evaluated"] == 6 - kept


# ------------------------------------------------------------------------------------------------ across pages


def test_compensation_next_to_the_method_reaches_pruning_and_the_report(cache_dir, tiny_lm):
    from diet.compensate import fit_texts
    from diet.settings import CompensationSettings

    stats = tiny_stats(tiny_lm)
    at = open_page(MASKS, tiny_lm, stats=stats, profile_settings=PS)
    at.selectbox(key="p_method").set_value("pooled").run()
    at.radio(key="p_compensation").set_value("lstsq").run()
    ok(at)
    result = at.session_state["mask_result"]
    assert result.summary["compensation"] == "lstsq" and result.compensation is None
    assert "Who loses in the merge" in " ".join(figs(at))
    at.switch_page(PRUNE).run()
    ok(at)
    evaluate_on_prune_page(at, 2)
    ok(at)
    comp = CompensationSettings(method="lstsq")
    pruned = prune_copy(tiny_lm, result, comp, fit_texts([get_task("arithmetic"), get_task("capitals")], comp))
    direct = [evaluate_task(pruned, tiny_lm.tokenizer, t, EvalSettings(limit=2)).value
              for t in (get_task("arithmetic"), get_task("capitals"))]
    assert [r.value for r in at.session_state["comparison"]["pruned"]] == direct
    assert at.session_state["comparison"]["digest"].endswith("+lstsq")
    at.switch_page(MASKS).run()
    at.radio(key="p_compensation").set_value("bias").run()
    ok(at)
    assert at.session_state["mask_result"].compensation is not None


def test_a_second_session_loading_another_model_says_it_replaces_the_first(cache_dir, tiny_lm, monkeypatch):
    import pages._common as C

    gate, models = C.server()
    models.drop_idle()  # start from an empty server (other tests may have loaded into it)
    loads = []

    def fake_load(spec):  # a tiny model standing in for each named one
        loads.append(spec.name)
        return LoadedModel(tiny_lm.model, tiny_lm.tokenizer, spec, tiny_lm.path, f"tiny:{spec.name}")

    monkeypatch.setattr(C, "_load", fake_load)
    first = open_page(MODEL, spec=ModelSpec(name="model-a"))
    ok(first)
    again = open_page(MODEL, spec=ModelSpec(name="model-a"))  # a second viewer of the same model: no second load
    ok(again)
    assert loads == ["model-a"] and not any("replaced" in w.value for w in again.warning)
    other = open_page(MODEL, spec=ModelSpec(name="model-b"))
    ok(other)
    assert loads == ["model-a", "model-b"]
    assert any("Loaded model-b: it replaced model-a in memory" in w.value for w in other.warning)
    release = models.hold(ModelSpec(name="model-b"))  # a job of that session runs on model-b
    refused = open_page(MODEL, spec=ModelSpec(name="model-a"))
    assert any("cannot load model-a now" in e.value and "model-b is in use by a running job" in e.value
               for e in refused.error)
    release()
    assert models.drop_idle() == [ModelSpec(name="model-b")]
