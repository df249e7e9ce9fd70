"""llama.cpp, through llama-cpp-python: the one place that opens a GGUF file in it (timing one: `diet/measure.py`).

Why this module exists: some llama.cpp builds segfault on CPUs with AMX (Sapphire Rapids and later Xeons, many cloud
machines) when a quantized weight goes through `ggml_backend_amx_mul_mat`. The AMX kernels are reached through
llama.cpp's "extra buffer types" (weight repacking); loading with `use_extra_bufts = False` (llama.cpp's CLI and
server: `--no-repack`) avoids them. A build flag cannot: with `GGML_NATIVE=ON` the compiler enables AMX whatever
`GGML_AMX_*` says, and a user's own llama.cpp is not ours to build. So every load here turns repacking off where the
library reports AMX (`llama_print_system_info()` shows `AMX_INT8 = 1`), and keeps it everywhere else, where it is
faster and safe. DIET_LLAMA_REPACK=on|off forces either.

Everything here that runs llama.cpp is also run in a child process by its callers (diet/isolate.py), so that a
crash of another kind still costs only the measurement. Importing this module is cheap (no torch, no llama_cpp):
that keeps the child's start short.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

REPACK_ENV = "DIET_LLAMA_REPACK"  # auto (default): off where llama.cpp reports AMX_INT8 = 1; on; off

def module():
    """The llama_cpp module; a DietError when llama-cpp-python is not installed (`make llama-cpp`)."""
    try:
        import llama_cpp
    except ImportError as e:
        from diet.errors import DietError

        raise DietError(f"llama-cpp-python is not installed ({e}): run `make llama-cpp`") from None
    return llama_cpp


def system_info() -> str:
    """llama.cpp's own feature line (e.g. "CPU : SSE3 = 1 | … | AMX_INT8 = 1 | …"): what this build will use."""
    return module().llama_print_system_info().decode("utf-8", "replace")


def amx_active(info: str | None = None) -> bool:
    """True where this llama.cpp build runs AMX kernels on this CPU (the crash's precondition)."""
    return "AMX_INT8 = 1" in (system_info() if info is None else info)


def repack_enabled(info: str | None = None) -> bool:
    """Whether loads here use llama.cpp's extra buffer types (weight repacking): DIET_LLAMA_REPACK, else not on AMX."""
    choice = os.environ.get(REPACK_ENV, "auto").strip().lower()
    if choice in ("on", "1", "true"):
        return True
    if choice in ("off", "0", "false"):
        return False
    if choice != "auto":
        from diet.errors import DietError

        raise DietError(f"{REPACK_ENV}={choice!r}: use auto, on or off")
    return not amx_active(info)


@contextmanager
def _model_params(use_extra_bufts: bool):
    """llama_cpp.Llama builds its model params from `llama_model_default_params()` inside its constructor and loads
    the model there, so the field can only be set by handing it defaults with the field set (for the constructor's
    duration; llama-cpp-python 0.3.36 has no keyword for it)."""
    low = module().llama_cpp
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = use_extra_bufts
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


def open_llama(path: str | Path, **kwargs):
    """llama_cpp.Llama over a GGUF file, with weight repacking off where it would reach the AMX kernels."""
    with _model_params(repack_enabled()):
        return module().Llama(model_path=str(path), **kwargs)
