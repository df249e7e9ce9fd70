"""--ray: the same numbers as in-process, nothing lost when a worker dies, and one-line refusals.

One real local Ray instance (2 CPUs) serves the whole module, with one pool of two single-thread workers holding a
tiny random Llama saved as a folder; the in-process reference loads the same folder here (torch's default thread
count on this machine, 2), so the identity checks also cover 1 vs 2 threads.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from diet import api
from diet.cache import COUNT_ENV, ArtifactCache
from diet.errors import Cancelled, DietError
from diet.evaluate import EvalSettings, evaluate_task
from diet.models import load_model
from diet.settings import ClusterSettings, MaskSettings, MethodSettings, ModelSpec, ProfileSettings
from diet.sweep import SweepSettings, run_sweep, sweep_on_cluster, table
from diet.tasks import get_task
from tests.tiny import tiny_model, tiny_tokenizer

ray = pytest.importorskip("ray")

PROFILE = ProfileSettings(samples=8, max_length=64, batch_size=4)
# every item of arithmetic (194): accuracies fine enough that a mask off by a few channels shows in some cell
SWEEP = SweepSettings(methods=("diet", "wanda-sp", "random"), sparsities=(0.25, 0.5), tasks=("arithmetic", "capitals"),
                      eval_tasks=("arithmetic",), general="generated", compensations=("none", "lstsq"))
LOCAL = ClusterSettings(address="local", local_cpus=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster") / "tiny-llama"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs) for the module, stopped at its end: no Ray process outlives the tests."""
    from diet.cluster import disconnect
    from diet.cluster.backend import connect

    try:
        yield connect(LOCAL)
    finally:
        disconnect()


@pytest.fixture(scope="module")
def pool(ray_local, folder):
    """Two single-thread workers holding the tiny model, shared by the tests that use it."""
    said: list[str] = []
    with api.cluster_pool(LOCAL, ModelSpec(name=str(folder), device="cpu"), say=said.append) as p:
        p.said = said
        yield p


@pytest.fixture(scope="module")
def local_lm(folder):
    return load_model(ModelSpec(name=str(folder), device="cpu"), say=lambda m: None)


def _frame(rows):
    return table(rows).drop(columns=["seconds"])  # wall time of a cell is not one of its numbers


def test_pool_layout_and_driver_holds_no_model(pool, local_lm):
    assert "2 workers x 1 CPU" in pool.said[0]
    assert pool.model.model is None and pool.model.identity == local_lm.identity
    assert pool.model.spec.dtype == "float32"
    assert {i["threads"] for i in pool.worker_info()} == {1}


def test_profile_sweep_eval_identical_to_in_process(pool, local_lm, tmp_path):
    remote, here = ArtifactCache(tmp_path / "remote"), ArtifactCache(tmp_path / "here")
    got = api.profile_on_cluster(pool, ["arithmetic", "capitals"], PROFILE, cache=remote)
    want = api.profile_tasks(local_lm, ["arithmetic", "capitals"], PROFILE, cache=here)
    for name in want:
        a, b = got[name].tensors(), want[name].tensors()
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (name, k)  # bit for bit
        assert {k: v for k, v in got[name].meta.items() if k != "seconds"} == \
               {k: v for k, v in want[name].meta.items() if k != "seconds"}
    # the same key: the in-process path reads the cluster's entries
    assert sorted(p.name for p in (tmp_path / "remote" / "stats").glob("*.json")) == \
           sorted(p.name for p in (tmp_path / "here" / "stats").glob("*.json"))

    rows = sweep_on_cluster(pool, SWEEP, PROFILE, cache=remote)
    ref = run_sweep(local_lm, SWEEP, PROFILE, cache=here)
    assert len(rows) == len(ref) == 1 + 12
    assert _frame(rows).equals(_frame(ref))
    assert sorted(p.name for p in (tmp_path / "remote" / "sweep").glob("*.json")) == \
           sorted(p.name for p in (tmp_path / "here" / "sweep").glob("*.json"))

    settings = EvalSettings(limit=10, batch_size=4)
    results = api.evaluate_on_cluster(pool, ["arithmetic", "capitals"], settings, cache=remote)
    for r in results:
        w = evaluate_task(local_lm.model, local_lm.tokenizer, get_task(r.task), settings)
        assert (r.acc, r.acc_norm, r.value, r.n) == (w.acc, w.acc_norm, w.value, w.n)
        assert r.logliks == w.logliks  # every choice's loglikelihood, exactly


def test_worker_killed_mid_sweep_is_retried_and_table_identical(pool, local_lm, tmp_path):
    cache = ArtifactCache(tmp_path / "c")
    sweep = SweepSettings(methods=("diet", "random"), sparsities=(0.25, 0.5), tasks=("arithmetic", "capitals"),
                          limit=30, general="generated")
    api.profile_on_cluster(pool, list(sweep.tasks), PROFILE, cache=cache)
    pids = {i["name"]: i["pid"] for i in pool.worker_info()}
    killed: list[str] = []
    lines: list[str] = []

    def should_stop() -> bool:  # polled by the driver's loop between waits: kill w1 while a unit runs on it
        w1 = next(w for w in pool.workers if w.name == "w1")
        if not killed and w1.status not in ("idle", "restarting", "loading the model"):
            os.kill(pids["w1"], signal.SIGKILL)
            killed.append(w1.status)
        return False

    progress = []
    said: list[str] = []
    pool.say = lambda m: (said.append(m), lines.append(m))
    try:
        rows = sweep_on_cluster(pool, sweep, PROFILE, cache=cache, progress=progress.append,
                                    should_stop=should_stop)
    finally:
        pool.say = pool.said.append
    assert killed, "w1 never ran a unit"
    assert any(f"worker w1 died during {killed[0]}" in m and "retrying it on another worker" in m for m in said)
    assert progress[-1].retries >= 1 and progress[-1].done == progress[-1].total
    assert _frame(rows).equals(_frame(run_sweep(local_lm, sweep, PROFILE, cache=ArtifactCache(tmp_path / "h"))))


def test_interrupted_run_keeps_finished_units(pool, folder, tmp_path, monkeypatch):
    """Last of the tests using `pool`: its cancel kills the pool's workers."""
    cache = ArtifactCache(tmp_path / "c")
    api.profile_on_cluster(pool, list(SWEEP.tasks), PROFILE, cache=cache)
    stored: list = []

    def stop_after_two() -> bool:
        return len(stored) >= 2

    def progress(p) -> None:
        stored[:] = range(p.done)

    with pytest.raises(Cancelled, match="run it again to resume"):
        sweep_on_cluster(pool, SWEEP, PROFILE, cache=cache, progress=progress, should_stop=stop_after_two)
    first = {p.stem for p in (tmp_path / "c" / "sweep").glob("*.json")}
    assert len(first) >= 2  # two pruned models' rows at least, each cached the moment it arrived
    assert not any(w.alive for w in pool.workers)  # cancel stopped the cluster's units: the workers are gone
    log = tmp_path / "computed.txt"
    monkeypatch.setenv(COUNT_ENV, str(log))
    with api.cluster_pool(LOCAL, ModelSpec(name=str(folder), device="cpu")) as again_pool:  # the driver re-run
        rows = sweep_on_cluster(again_pool, SWEEP, PROFILE, cache=cache)
    again = {line.split()[1] for line in log.read_text().splitlines() if line.startswith("sweep ")}
    assert not again & first  # nothing finished before the interruption was computed again
    assert len(again) + len(first) == len(rows) == 13


def test_cli_refusal_is_one_error_line_and_exit_2(folder, capsys):
    from diet.cli import main

    assert main(["eval", "--model", str(folder), "--tasks", "arithmetic", "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach a Ray cluster at 127.0.0.1:1")


def test_refusals_are_one_line_before_any_unit(ray_local, folder, monkeypatch):
    from diet.cluster.backend import check_nodes

    def refused(settings, spec) -> str:
        with pytest.raises(DietError) as e:
            api.cluster_pool(settings, spec)
        assert "\n" not in str(e.value)
        return str(e.value)

    spec = ModelSpec(name=str(folder), device="cpu")
    assert refused(ClusterSettings(address="127.0.0.1:1"), spec).startswith("cannot reach a Ray cluster at "
                                                                             "127.0.0.1:1")
    assert "asks for a GPU per worker, but the Ray cluster has none" in refused(
        LOCAL, ModelSpec(name=str(folder), device="cuda"))
    msg = refused(LOCAL, ModelSpec(name="/nonexistent/tiny-llama", device="cpu"))
    assert msg.startswith("node ") and "lacks the model folder /nonexistent/tiny-llama" in msg
    monkeypatch.setattr(check_nodes, "ray_version", "2.59.0")  # this driver expects another Ray than the nodes run
    msg = refused(LOCAL, spec)
    assert msg.startswith("Ray version mismatch: node ") and f"runs Ray {ray.__version__}" in msg


def test_app_sweep_job_on_the_cluster_shows_units_and_cancel_stops_them(ray_local, local_lm, cache_dir):
    """The Sweep page's job with the cluster address of the Model and tasks page: the job panel's lines are the
    cluster's units and workers; cancel ends the job and kills the workers (their CPUs are free again)."""
    import time

    from diet.jobs import CANCELLED, Job
    from pages._work import cluster_settings, sweep_job

    assert cluster_settings("  ") is None  # the page's default: this process
    sweep = SweepSettings(methods=("diet", "random"), sparsities=(0.25, 0.5), tasks=("arithmetic", "capitals"),
                          limit=60, general="generated")
    job = Job.start("sweep", "Sweep", sweep_job(local_lm, sweep, PROFILE, MaskSettings(), MethodSettings(),
                                                cluster_settings("local")))
    deadline = time.time() + 300
    while time.time() < deadline:
        snap = job.snapshot()
        units = [p for p in snap.lines if p.label == "cluster units"]
        if snap.finished or (units and units[-1].total == 5 and units[-1].done >= 1):
            break
        time.sleep(0.1)
    assert "retries 0" in snap.message and "w1: " in snap.message and "w2: " in snap.message
    job.cancel()
    assert job.wait(60)
    assert job.snapshot().status == CANCELLED
    assert all(api.is_profiled(local_lm, t, PROFILE) for t in ("arithmetic", "capitals"))  # finished units stay
    while time.time() < deadline and ray.available_resources().get("CPU", 0) < 2:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2  # no worker of the job is left holding a core
