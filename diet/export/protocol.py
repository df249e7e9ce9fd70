"""What every export mode implements (`Writer`), and what the writers are handed (`Options`).

Why three methods and not one: an export has three moments a format has a say in, and they are far apart in time.
`check` refuses, in one line, what the format cannot hold, before anything expensive runs (sample answers, a dense
evaluation, a compensation fit); `cut` gives the model in the shape the format stores, before it is evaluated and
timed; `write` writes it into the staged folder. The rest of the export (mask files, settings, the model card, the
speed measurement) is the same for every mode and lives in `diet/export/__init__.py`. The writers themselves are
in `diet/export/hf.py`, `diet/export/gguf/writer.py` and `diet/export/vllm/writer.py`; `diet/export/modes.py`
names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Say = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """What the user chose beyond the mode, as every writer sees it (each reads only its own)."""

    outtype: str = "f32"  # GGUF: the tensor type (f32, f16, bf16, q8_0, q8_0-f16down)
    max_shard_size: str = "2GB"  # Hugging Face folders: weight files of at most this size, plus an index
    name: str = "pruned model"  # the model's name inside the file (GGUF: general.name)


class Writer(Protocol):
    """One export mode."""

    takes_bias: bool  # the format's config can carry an output-projection bias (bias compensation exports)
    engine_file: str | None  # the file a serving engine's speed is measured on (the card); None: no engine run
    records: tuple[str, ...]  # the `Options` fields diet_settings.json records for this mode

    def check(self, lm, result, options: Options, say: Say) -> None:
        """Refuse what this format cannot write exactly (a DietError of one line), before any expensive work."""

    def cut(self, model, keep: list, unit: str, release: bool):
        """`model` (ours to cut) in the shape this format stores, computing the masked model's function;
        `release`: see `diet.prune.prune_units`."""

    def write(self, model, lm, folder: Path, options: Options) -> dict:
        """Write the weights (+ config and tokenizer where the format has them) into `folder`; returns
        {"params_stored", ...} (the GGUF writer adds what it wrote: "arch", "bytes", "tensor_types", ...)."""


def mlp_widths(lm, result) -> tuple[list[int], list[int]]:
    """(MLP width per layer after the export, kept units per layer): a head mask leaves the MLP widths as they are.
    What the serving writers check against their engine."""
    from diet.adapters import model_shape

    kept = [int(k) for k in result.mask.sum(axis=1)]
    return (list(model_shape(lm.model).widths) if result.unit == "heads" else kept), kept
