"""The job runner (`diet.jobs`), the server's CPU gate (`diet.gate`) and its shared models (`diet.sharing`):
plain threads and functions, no Streamlit and no model."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from diet.errors import Cancelled, DietError
from diet.gate import CoreMonitor, TorchGate, thread_count
from diet.jobs import CANCELLED, DONE, FAILED, Job, JobRunner
from diet.sharing import SharedModels

# ------------------------------------------------------------------------------------------------ the runner


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


# ------------------------------------------------------------------------------------------------ the gate


def test_gate_runs_one_job_at_a_time_across_sessions_and_the_waiting_one_says_so():
    gate, release = TorchGate(threads=1), threading.Event()
    a, b = JobRunner(gate), JobRunner(gate)  # two sessions, one server
    first = a.start("profile", "Profiling 2 task(s)", lambda ctx: release.wait(10) and torch.get_num_threads())
    time.sleep(0.1)
    second = b.start("profile", "Profiling 2 task(s)", lambda ctx: "b")
    deadline = time.time() + 5
    while not second.snapshot().waiting and time.time() < deadline:
        time.sleep(0.05)
    assert second.snapshot().waiting == "another job is running: Profiling 2 task(s)"
    assert not second.snapshot().finished and gate.holder() is first
    with gate.now() as free:  # a script run's short forward pass (the profile estimate) must not run beside it
        assert not free
    release.set()
    assert first.wait(10) and second.wait(10)
    assert (first.result, second.result, second.snapshot().waiting) == (1, "b", "")  # the job ran on 1 thread
    assert gate.last_threads == 1 and first.snapshot().message == "torch threads: 1 (DIET_THREADS)"
    with gate.now() as free:
        assert free and gate.holder() is None


def test_a_script_run_waits_for_another_runs_short_torch_work_instead_of_skipping_its_measurement():
    """Streamlit starts a session's new script run while the old one is still in its estimate's forward pass: the
    new run must wait for it (and then read the measurement), not skip to a guess."""
    gate, inside, leave, seen = TorchGate(), threading.Event(), threading.Event(), []

    def old_run():
        with gate.now() as free:
            inside.set()
            leave.wait(5)
            seen.append(("old", free))

    t = threading.Thread(target=old_run)
    t.start()
    assert inside.wait(5)
    threading.Timer(0.3, leave.set).start()
    t0 = time.monotonic()
    with gate.now() as free:
        seen.append(("new", free))
    t.join(5)
    assert seen == [("old", True), ("new", True)] and time.monotonic() - t0 >= 0.25
    with gate.now(wait=0.2) as free:  # free again afterwards
        assert free


def test_gate_sizes_threads_to_the_free_cores():
    assert [thread_count(free, cores=2) for free in (0.0, 0.6, 0.9, 1.2, 1.8, 2.0)] == [1, 1, 1, 2, 2, 2]
    assert thread_count(7.9, cores=8) == 8 and thread_count(3.1, cores=8) == 3


def test_core_monitor_counts_a_sustained_load_but_not_a_burst_and_answers_without_sampling():
    """The gate sizes torch's threads from the background monitor: a process busy for the whole history lowers the
    figure; one that was busy only for a moment (the browser redrawing after a click) does not; reading the figure
    does not wait (free_cores sleeps 0.4 s for its sample)."""

    @contextmanager
    def busy_process():  # another process holding about one core until the block ends
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            yield
        finally:
            proc.kill()
            proc.wait()

    cores = os.cpu_count() or 1
    monitor = CoreMonitor(every=0.05, window=0.3, history=0.9)
    with busy_process():
        time.sleep(1.6)  # longer than history + window: every window saw it
        t0 = time.monotonic()
        loaded = monitor.free()
        assert time.monotonic() - t0 < 0.1  # no sampling wait
        assert loaded <= cores - 0.7, loaded  # the busy loop holds about one core
    time.sleep(1.6)
    quiet = monitor.free()
    assert quiet >= loaded + 0.5, (quiet, loaded)
    with busy_process():  # a burst that fills the newest window; the windows before it were quiet
        time.sleep(0.4)
    assert monitor.free() >= loaded + 0.5


# ------------------------------------------------------------------------------------------------ shared models


def test_shared_models_load_once_never_drop_a_busy_one_and_say_what_they_replace():
    loads = []
    models = SharedModels(capacity=1)
    load = lambda name: lambda: loads.append(name) or f"model {name}"  # noqa: E731
    assert models.get("a", load("a")) == models.get("a", load("a")) == "model a" and loads == ["a"]
    release = models.hold("a")  # a job of one session uses it
    assert models.would_replace("b") == []  # nothing idle to drop...
    with pytest.raises(DietError, match="cannot load b now: memory holds 1 model.*a is in use by a running job"):
        models.get("b", load("b"))
    release()
    assert models.would_replace("b") == ["a"]  # ...now a can go, and the page says so before loading
    assert models.get("b", load("b")) == "model b" and models.loaded() == ["b"] and loads == ["a", "b"]
    two = SharedModels(capacity=2)
    two.get("a", load("a")), two.get("b", load("b"))
    assert two.would_replace("c") == ["a"] and two.loaded() == ["a", "b"]
