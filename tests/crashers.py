"""Module-level functions a spawned child can import and run, each ending the way an engine can (tests only)."""

from __future__ import annotations

import os
import signal
import time


def segfault(*args, **kwargs):
    """Dies of SIGSEGV, as llama.cpp's AMX matmul does on some CPUs."""
    os.kill(os.getpid(), signal.SIGSEGV)


def oom_killed(*args, **kwargs):
    """Dies of SIGKILL, as a process the kernel's OOM killer picks does."""
    os.kill(os.getpid(), signal.SIGKILL)


def raises(*args, **kwargs):
    raise ValueError("bad tensor\nsecond line")


def sleeps(*args, **kwargs):
    time.sleep(60)


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs, "pid": os.getpid()}
