"""The server's CPU gate: one heavy torch job at a time across every session, on as many threads as there are free
cores.

Why a module of its own: the job runner (`diet.jobs`) runs any function; whether jobs take turns, and on how many
threads, is a policy of the server that hands every session's runner the same `TorchGate`. It knows a job only
through what it calls on it (`title`; the context's `should_stop`, `wait_for`, `note`), so it imports nothing of
the runner.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from diet.errors import Cancelled

WAIT_POLL_SECONDS = 0.25  # how often a waiting job checks for its turn and for a cancel
SHORT_WAIT_SECONDS = 10.0  # how long a script run waits for another one's short torch work (TorchGate.now)


def _cpu_sample() -> tuple[int, int, int]:
    """(idle + iowait ticks, all ticks, this process's ticks) from /proc (Linux); OSError/ValueError elsewhere."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()  # fields after the command name; utime, stime are 12, 13
    return v[3] + v[4], sum(v[:8]), int(own[11]) + int(own[12])


def _free_between(a: tuple[int, int, int], b: tuple[int, int, int], cores: int) -> float:
    total = max(b[1] - a[1], 1)
    others = max(0, (total - (b[0] - a[0])) - (b[2] - a[2]))
    return max(0.0, cores * (1 - others / total))


def free_cores(sample_seconds: float = 0.4) -> float:
    """Cores not used by other processes right now, measured over `sample_seconds` from /proc (Linux); the core
    count elsewhere. This process's own use (the app's script runs, its server) does not count: the job is about to
    be the main user of this process.

    Why measure: a browser on the same machine, a second app or a build all take cores, and torch with more
    threads than free cores spins in its barriers: with one of two cores busy, 2 threads run ~4× slower than 1."""
    cores = os.cpu_count() or 1
    try:
        a = _cpu_sample()
        time.sleep(sample_seconds)
        return _free_between(a, _cpu_sample(), cores)
    except (OSError, ValueError, IndexError):
        return float(cores)


class CoreMonitor:
    """`free_cores` measured all the time in the background: a job that starts reads a recent figure instead of
    waiting for a fresh sample, and the figure is the freest `window` of the last `history` seconds.

    Why in the background: sizing torch's threads when a job started cost every job 0.4 s of sleep (measured in the
    app: 0.40 s from a job's start to its first batch, ~4% of a 10 s evaluation). A daemon thread that reads two
    small /proc files every `every` seconds costs nothing measurable. One per process (`core_monitor()`).

    Why the freest window: what should cost a thread is a sustained load (a build, another app), which is in every
    second of the last few; the browser redrawing the page right after the click that started the job is not.
    Measured with bench/app_job_speed.py: the single second before the job read 1.0 free core (the browser, busy
    with the click), the job ran with 1 thread, and profiling took 12.1 s instead of 8.4 s."""

    def __init__(self, every: float = 0.25, window: float = 1.0, history: float = 3.0) -> None:
        self.every = every  # seconds between two reads of /proc
        self.window = window  # the span of one figure (a read vs the newest read at least this much older)
        self.history = history  # how far back figures are taken; the largest (freest) one is the answer
        self._samples: list[tuple[float, tuple[int, int, int]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name="diet-core-monitor", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                sample = (time.monotonic(), _cpu_sample())
            except (OSError, ValueError, IndexError):
                return  # no /proc: `free` falls back to free_cores, which returns the core count
            with self._lock:
                self._samples.append(sample)
                keep = self.history + self.window
                while len(self._samples) > 2 and sample[0] - self._samples[1][0] >= keep:
                    self._samples.pop(0)
            time.sleep(self.every)

    def free(self) -> float:
        """Free cores in the freest `window` of the last `history` seconds; a fresh blocking sample when the
        monitor has not yet read one full window (or has stopped)."""
        with self._lock:
            samples = list(self._samples)
        now, cores = time.monotonic(), os.cpu_count() or 1
        if not samples or samples[-1][0] - samples[0][0] < self.window or now - samples[-1][0] > 4 * self.every + 1:
            return free_cores()
        best, j = None, 0
        for t, b in samples:  # each read against the newest read at least `window` older (j only moves forward)
            if now - t > self.history:
                continue
            while j + 1 < len(samples) and t - samples[j + 1][0] >= self.window:
                j += 1
            if t - samples[j][0] >= self.window:
                f = _free_between(samples[j][1], b, cores)
                best = f if best is None else max(best, f)
        return best if best is not None else free_cores()


_monitor_lock = threading.Lock()
_monitor: CoreMonitor | None = None


def core_monitor() -> CoreMonitor:
    """This process's CoreMonitor (started on first call)."""
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = CoreMonitor()
        return _monitor


def thread_count(free: float, cores: int | None = None) -> int:
    """Torch threads for `free` cores: one core fewer for each core other processes keep (nearly) fully busy.

    Why not round the free cores: measured with bench/app_job_speed.py on 2 cores, a background process using
    about half a core made the rounded rule pick 1 thread, and profiling then took ~1.7× the CLI's 2-thread time;
    2 threads lose badly only when another process holds a whole core (the CLI: 9 s -> ~41 s)."""
    cores = cores or os.cpu_count() or 1
    busy = max(0.0, cores - free)
    return max(1, min(cores, cores - int(busy + 0.1)))


class TorchGate:
    """One heavy job at a time across the whole server; a job waiting for its turn says for what.

    Why a gate and not parallel jobs: on a small CPU machine two torch jobs at once are each several times slower
    than one after the other, and the second viewer's job often needs exactly what the first one is computing
    (the same statistics): after its turn it finds them in the cache. When a job gets its turn, torch's thread
    count is sized to the cores free at that moment (`threads`: a fixed count instead, e.g. from DIET_THREADS)."""

    def __init__(self, threads: int | None = None) -> None:
        self._lock = threading.Lock()
        self._holder: Any = None  # the diet.jobs.Job holding the gate
        self.threads = threads
        self.last_threads = 0  # torch threads the last job ran with (shown on the page, checked by tests)
        if threads is None:
            core_monitor()  # measuring from now on: the first job reads a figure instead of sampling for 0.4 s

    def holder(self) -> Any:
        return self._holder

    @contextmanager
    def turn(self, job: Any, ctx: Any) -> Iterator[None]:
        """Wait for the gate (saying why through `ctx.wait_for`, stopping on a cancel), then hold it while the
        block runs; `job` is a `diet.jobs.Job`, `ctx` its `JobContext`."""
        while not self._lock.acquire(timeout=WAIT_POLL_SECONDS):
            if ctx.should_stop():
                raise Cancelled("cancelled while waiting; nothing was written")
            other = self._holder
            ctx.wait_for(f"another job is running: {other.title}" if other is not None else "another job is running")
        self._holder = job
        ctx.wait_for("")
        try:
            self._size_threads(ctx)
            yield
        finally:
            self._holder = None
            self._lock.release()

    @contextmanager
    def now(self, wait: float = SHORT_WAIT_SECONDS) -> Iterator[bool]:
        """The gate for a short piece of torch work in a script run (one batch for an estimate): yields True when
        it is held, False while a job runs — then skip the work. Why: forward hooks on one shared model must never
        run two passes at once (their sums would mix).

        Another short piece holding it is waited for (up to `wait` seconds), not skipped: Streamlit starts a new
        script run of the same session while the previous one is still inside its forward pass (a widget changed
        meanwhile), and that new run used to find the gate taken and fall back to a guess — the page then showed
        the guess ("about 1 s" before a 12 s profile) instead of the measurement the old run was just taking."""
        deadline = time.monotonic() + wait
        got = self._lock.acquire(blocking=False)
        while not got and self._holder is None and time.monotonic() < deadline:
            got = self._lock.acquire(timeout=0.05)
        try:
            yield got
        finally:
            if got:
                self._lock.release()

    def _size_threads(self, ctx: Any) -> None:
        import torch

        if self.threads:
            n, why = self.threads, "DIET_THREADS"
        else:
            free = core_monitor().free()
            n, why = thread_count(free), f"{free:.1f} of {os.cpu_count()} cores free"
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self.last_threads = n
        ctx.note(f"torch threads: {n} ({why})")
