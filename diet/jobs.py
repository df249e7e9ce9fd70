"""A small background-job runner: one worker thread per job, progress you can poll, cancel that is safe.

Why this exists: profiling or evaluating takes seconds to minutes, and a UI script run must not block on it (the
user would lose the page when switching to another one). A `Job` runs a plain function in a daemon thread; the
function reports progress through `JobContext.report` and polls `JobContext.should_stop` between batches, which is
exactly what the engine's `progress` / `should_stop` callbacks take. The UI only reads `Job.snapshot()` — an
immutable copy taken under a lock — so a worker thread never touches UI state (no streamlit import here), and
the script thread never sees a half-updated progress dict.

Why cancel is cooperative: the engine raises `Cancelled` before it writes anything (cache writes are atomic), so
stopping between batches can never leave a half-written artifact. Killing a thread would.

Beside it: `diet.gate` (one heavy job at a time across the server, torch threads sized to the free cores) and
`diet.sharing` (the server's loaded models, shared by every session).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diet.errors import Cancelled, DietError

if TYPE_CHECKING:
    from diet.gate import TorchGate

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
