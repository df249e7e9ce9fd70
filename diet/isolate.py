"""Run a third-party engine's work in a child process, so that its crash costs one measurement, never the run.

Why a child process: llama.cpp (and vLLM) are native code. A segfault there (llama.cpp's AMX kernels on some Xeons,
docs/export.md) kills the whole Python process, with the user's profiling, pruning and written folder behind it.
In a child, the same crash is an exit status the parent reads and turns into one line.

Why `spawn`, not `fork`: the parent has usually run torch, and a forked child that runs OpenMP code after its
parent did can hang (libgomp is not fork-safe). A spawned child starts clean; the function it runs must be a
module-level function whose module imports cheaply (no torch), such as `diet.measure.gguf_speed`.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable

# The signals a crash in native code raises: named "crashed"; SIGKILL is what the kernel's OOM killer sends.
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


class EngineFailure(Exception):
    """The child did not return a result; `reason` is one line for the user ("crashed (SIGSEGV)", "timed out after
    600 s", "failed: ValueError: …"): it completes a sentence that starts with the engine's name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def describe_exit(exitcode: int | None) -> str:
    """One line for how a child ended without a result (its `exitcode`: negative = killed by that signal)."""
    if exitcode is None:
        return "did not finish"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"was killed by signal {-exitcode}"
        if sig in CRASH_SIGNALS:
            return f"crashed ({sig.name})"
        if sig == signal.SIGKILL:
            return "was killed (SIGKILL: out of memory?)"
        return f"was killed ({sig.name})"
    return f"exited with code {exitcode} before giving a result"


def _child(conn, fn: Callable, args: tuple, kwargs: dict) -> None:
    """In the child: run `fn` and send ("ok", result) or ("error", one line); a crash sends nothing (EOF)."""
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - every failure goes back as one line; the parent decides
        conn.send(("error", f"{type(e).__name__}: {e}".splitlines()[0]))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


def run_isolated(fn: Callable, *args, timeout_s: float = 600.0, **kwargs):
    """fn(*args, **kwargs) in a spawned child process; its result (picklable), or EngineFailure with the reason.

    The child is killed when the timeout passes or the caller is interrupted, so no engine outlives its caller."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()  # the child holds the only sending end: its death reads as EOF here
    try:
        if not receive.poll(timeout_s):
            raise EngineFailure(f"timed out after {timeout_s:.0f} s")
        try:
            status, value = receive.recv()
        except EOFError:
            proc.join(10)
            raise EngineFailure(describe_exit(proc.exitcode)) from None
        if status == "error":
            raise EngineFailure(f"failed: {value}")
        return value
    finally:
        receive.close()
        if proc.is_alive():
            proc.join(5)  # a child that sent its result exits at once
        if proc.is_alive():
            proc.kill()
            proc.join()
