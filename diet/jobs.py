"""A small background-job runner: one worker thread per job, progress you can poll, cancel that is safe.

Why this exists: profiling or evaluating takes seconds to minutes, and a UI script run must not block on it (the
user would lose the page when switching to another one). A `Job` runs a plain function in a daemon thread; the
function reports progress through `JobContext.report` and polls `JobContext.should_stop` between batches, which is
exactly what the engine's `progress` / `should_stop` callbacks take. The UI only reads `Job.snapshot()` — an
immutable copy taken under a lock — so a worker thread never touches UI state (no streamlit import here), and
the script thread never sees a half-updated progress dict.

Why cancel is cooperative: the engine raises `Cancelled` before it writes anything (cache writes are atomic), so
stopping between batches can never leave a half-written artifact. Killing a thread would.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from diet.errors import DietError

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


@dataclass(frozen=True)
class Progress:
    """One progress line: e.g. one task of a profiling job, counted in texts or requests."""

    label: str  # what is being counted, e.g. "arithmetic"
    done: int  # units finished
    total: int  # units in all (0 = unknown)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of a job at one instant: what the UI renders."""

    kind: str  # the job's kind, e.g. "profile" or "evaluate"
    title: str  # one line for people, e.g. "Profiling 3 tasks"
    status: str  # running, done, failed or cancelled
    lines: tuple[Progress, ...]  # progress per label, in the order they were first reported
    message: str  # latest free-text note from the worker, or the error message when failed
    elapsed: float  # seconds since start (frozen at the end)
    stop_requested: bool  # cancel was asked and the worker has not stopped yet
    waiting: str = ""  # what the job waits for before it can start (another session's job), "" once running
    partial: Any = None  # the latest partial result the worker shared (e.g. text being generated), None if none

    @property
    def finished(self) -> bool:
        return self.status != RUNNING


class JobContext:
    """What the worker function gets: report progress, leave notes, check for a cancel request."""

    def __init__(self, job: Job):
        self._job = job

    def report(self, label: str, done: int, total: int) -> None:
        self._job._set_progress(label, done, total)

    def note(self, message: str) -> None:
        self._job._set_message(message)

    def should_stop(self) -> bool:
        return self._job._stop.is_set()

    def share(self, partial: Any) -> None:
        """Hand the page a partial result to show while the job runs (an immutable value: it is read as it is)."""
        self._job._set_partial(partial)

    def wait_for(self, what: str) -> None:
        """Say what the job is waiting for ('' when it no longer waits): the page shows it instead of progress."""
        self._job._set_waiting(what)


@dataclass
class Job:
    """A function run once in a daemon thread. Create with `Job.start(kind, title, fn)`; fn(ctx) -> result."""

    kind: str
    title: str
    fn: Callable[[JobContext], Any]
    result: Any = None
    error: str = ""  # one line for the page (DietError message, or the exception type and message)
    detail: str = ""  # the full traceback of an unexpected error: for logs and bug reports, not for the page
    _status: str = RUNNING
    _lines: dict[str, Progress] = field(default_factory=dict)
    _message: str = ""
    _started: float = field(default_factory=time.monotonic)
    _ended: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _waiting: str = ""
    _partial: Any = None
    gate: TorchGate | None = None  # the server's one-job-at-a-time gate, shared by every session (None: no gate)
    collected: bool = False  # set by the UI once it has taken the result (so it is applied exactly once)

    @classmethod
    def start(cls, kind: str, title: str, fn: Callable[[JobContext], Any], gate: TorchGate | None = None) -> Job:
        job = cls(kind, title, fn, gate=gate)
        job._thread = threading.Thread(target=job._run, name=f"diet-job-{kind}", daemon=True)
        job._thread.start()
        return job

    def _work(self, ctx: JobContext) -> Any:
        if self.gate is None:
            return self.fn(ctx)
        with self.gate.turn(self, ctx):
            return self.fn(ctx)

    def _run(self) -> None:
        status, result, error, detail = DONE, None, "", ""
        try:
            result = self._work(JobContext(self))
        except DietError as e:
            from diet.profile import Cancelled

            status = CANCELLED if isinstance(e, Cancelled) or self._stop.is_set() else FAILED
            error = str(e)
        except Exception as e:  # a bug: keep the traceback for the log, show one line on the page
            status, error, detail = FAILED, f"unexpected error: {type(e).__name__}: {e}", traceback.format_exc()
        with self._lock:
            self._status, self.result, self.error, self.detail = status, result, error, detail
            self._ended = time.monotonic()
            if error:
                self._message = error

    def _set_progress(self, label: str, done: int, total: int) -> None:
        with self._lock:
            self._lines[label] = Progress(label, int(done), int(total))

    def _set_message(self, message: str) -> None:
        with self._lock:
            self._message = message

    def _set_partial(self, partial: Any) -> None:
        with self._lock:
            self._partial = partial

    def _set_waiting(self, what: str) -> None:
        with self._lock:
            self._waiting = what

    def cancel(self) -> None:
        """Ask the worker to stop at its next check; it raises Cancelled and writes nothing."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (tests and scripts); True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot().finished

    def snapshot(self) -> Snapshot:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            return Snapshot(self.kind, self.title, self._status, tuple(self._lines.values()), self._message,
                            end - self._started, self._stop.is_set() and self._status == RUNNING, self._waiting,
                            self._partial)


class JobRunner:
    """One session's jobs: at most one running at a time, plus the finished ones not yet collected by the UI.

    `gate`: the server's TorchGate, shared by every session's runner, so jobs of different sessions take turns
    (heavy torch work must not run in parallel on a small machine: two jobs at once are each far slower)."""

    def __init__(self, gate: TorchGate | None = None) -> None:
        self.jobs: list[Job] = []
        self.gate = gate

    def active(self) -> Job | None:
        return next((j for j in self.jobs if not j.snapshot().finished), None)

    def start(self, kind: str, title: str, fn: Callable[[JobContext], Any]) -> Job:
        running = self.active()
        if running is not None:
            raise DietError(f"'{running.title}' is still running: wait for it or cancel it first")
        self.jobs = [j for j in self.jobs if not j.collected]
        job = Job.start(kind, title, fn, self.gate)
        self.jobs.append(job)
        return job

    def finished(self) -> list[Job]:
        """Ended jobs whose result the UI has not collected yet, oldest first."""
        return [j for j in self.jobs if j.snapshot().finished and not j.collected]

    def latest(self, kind: str) -> Job | None:
        return next((j for j in reversed(self.jobs) if j.kind == kind), None)


# ----------------------------------------------------------------------------------------------- the server's gate

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
        self._holder: Job | None = None
        self.threads = threads
        self.last_threads = 0  # torch threads the last job ran with (shown on the page, checked by tests)
        if threads is None:
            core_monitor()  # measuring from now on: the first job reads a figure instead of sampling for 0.4 s

    def holder(self) -> Job | None:
        return self._holder

    @contextmanager
    def turn(self, job: Job, ctx: JobContext) -> Iterator[None]:
        from diet.profile import Cancelled

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

    def _size_threads(self, ctx: JobContext) -> None:
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


# ----------------------------------------------------------------------------------------------- shared models


class SharedModels:
    """The server's loaded models, by key, shared by every session (a model is loaded once, not once per viewer).

    A model used by a running job is never dropped under it (`hold`). When a new model does not fit next to the
    loaded ones (`capacity` models at most), the idle ones are dropped first — `would_replace` says which, so the
    page can say so before it loads — and if every loaded model is busy, the load is refused with a message."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = max(1, capacity)
        self._lock = threading.RLock()
        self._models: dict[Any, Any] = {}
        self._busy: dict[Any, int] = {}
        self._loading: dict[Any, threading.Lock] = {}

    def loaded(self) -> list:
        with self._lock:
            return list(self._models)

    def would_replace(self, key) -> list:
        """Keys of the loaded models that loading `key` would drop (idle ones, oldest first)."""
        with self._lock:
            if key in self._models or len(self._models) < self.capacity:
                return []
            idle = [k for k in self._models if not self._busy.get(k)]
            return idle[: len(self._models) - self.capacity + 1]

    def get(self, key, load: Callable[[], Any], describe: Callable[[Any], str] = str):
        """The model of `key`, loaded once (a second session asking meanwhile waits for the same load)."""
        with self._lock:
            if key in self._models:
                return self._models[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._models:
                    return self._models[key]
                drop = self.would_replace(key)
                if len(self._models) - len(drop) >= self.capacity:
                    busy = ", ".join(describe(k) for k in self._models if self._busy.get(k))
                    raise DietError(f"cannot load {describe(key)} now: memory holds {self.capacity} model(s) and "
                                    f"{busy} is in use by a running job; try again when it has finished")
                for k in drop:
                    del self._models[k]
            model = load()
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
            return model

    def hold(self, key) -> Callable[[], None]:
        """Mark `key` in use (by a job) until the returned release function is called."""
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        done = threading.Event()

        def release() -> None:
            if done.is_set():
                return
            done.set()
            with self._lock:
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]

        return release

    def drop_idle(self) -> list:
        """Drop every model no job uses (frees their memory once no session holds them); returns their keys."""
        with self._lock:
            idle = [k for k in self._models if not self._busy.get(k)]
            for k in idle:
                del self._models[k]
            return idle

    def busy(self, key) -> bool:
        with self._lock:
            return bool(self._busy.get(key))
