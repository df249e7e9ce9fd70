"""The export modes: the table from a mode's name to its writer, and the choice of a mode for a mask.

Why a table and not branches on the mode's name: what differs between formats is all in their writers
(`diet.export.protocol.Writer`), so the export itself never asks which mode it runs. A new format is one writer
module and one line here; the Export page and `--export-mode` read `MODES`.
"""

from __future__ import annotations

from diet.errors import DietError
from diet.export.gguf.writer import GGUFWriter
from diet.export.hf import HeterogeneousWriter, PaddedWriter, UniformWriter
from diet.export.protocol import Writer
from diet.export.vllm.writer import VLLMWriter

WRITERS: dict[str, Writer] = {
    "uniform": UniformWriter(),
    "padded": PaddedWriter(),
    "heterogeneous": HeterogeneousWriter(),
    "gguf": GGUFWriter(),
    "vllm": VLLMWriter(),
}
MODES = tuple(WRITERS)
SERVING_MODES = ("gguf", "vllm")  # exact per-layer widths in a serving engine's own format


def writer_for(mode: str) -> Writer:
    """The writer of `mode`; a DietError naming the modes for an unknown one."""
    if mode not in WRITERS:
        raise DietError(f"unknown export mode {mode!r}: use one of {', '.join(MODES)}")
    return WRITERS[mode]


def resolve_mode(result, mode: str | None) -> str:
    """The export mode to use: the user's choice, or by default uniform where every layer keeps the same count
    (padded where not). Whether the mask fits the mode is the writer's `check`."""
    uniform = len(set(int(k) for k in result.mask.sum(axis=1))) == 1
    mode = mode or ("uniform" if uniform else "padded")
    writer_for(mode)
    return mode
