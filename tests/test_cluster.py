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
from diet.settings import ClusterSettings, ModelSpec, ProfileSettings
from diet.sweep import SweepSettings, run_sweep, table
from diet.tasks import get_task
from tests.tiny import tiny_model, tiny_tokenizer

ray = pytest.importorskip("ray")

PROFILE = ProfileSettings(samples=8, max_length=64, batch_size=4)
SWEEP = SweepSettings(methods=("diet", "wanda-sp", "random"), sparsities=(0.25, 0.5), tasks=("arithmetic", "capitals"),
                      limit=6, general="generated", compensations=("none", "lstsq"))
LOCAL = ClusterSettings(address="local", local_cpus=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster") / "tiny-llama"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pool(folder):
    """Two single-thread workers on a local Ray instance, for the whole module; Ray is stopped at the end."""
    from diet.cluster import disconnect

    said: list[str] = []
    try:
        with api.cluster_pool(LOCAL, ModelSpec(name=str(folder), device="cpu"), say=said.append) as p:
            p.said = said
            yield p
    finally:
        disconnect()


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

    rows = api.sweep_on_cluster(pool, SWEEP, PROFILE, cache=remote)
    ref = run_sweep(local_lm, SWEEP, PROFILE, cache=here)
    assert len(rows) == len(ref) == (1 + 12) * 2
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
                          limit=60, general="generated")
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
        rows = api.sweep_on_cluster(pool, sweep, PROFILE, cache=cache, progress=progress.append,
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
        api.sweep_on_cluster(pool, SWEEP, PROFILE, cache=cache, progress=progress, should_stop=stop_after_two)
    first = {p.stem for p in (tmp_path / "c" / "sweep").glob("*.json")}
    assert len(first) >= 4  # two pruned models × two evaluation tasks at least, each cached when it arrived
    assert not any(w.alive for w in pool.workers)  # cancel stopped the cluster's units: the workers are gone
    log = tmp_path / "computed.txt"
    monkeypatch.setenv(COUNT_ENV, str(log))
    with api.cluster_pool(LOCAL, ModelSpec(name=str(folder), device="cpu")) as again_pool:  # the driver re-run
        rows = api.sweep_on_cluster(again_pool, SWEEP, PROFILE, cache=cache)
    again = {line.split()[1] for line in log.read_text().splitlines() if line.startswith("sweep ")}
    assert not again & first  # nothing finished before the interruption was computed again
    assert len(again) + len(first) == len(rows) == 26


def test_refusals_are_one_line_before_any_unit(folder, monkeypatch):
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
