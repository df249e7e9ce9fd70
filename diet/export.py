"""Write a pruned model folder that loads with plain `AutoModelForCausalLM.from_pretrained`.

Why a temporary folder renamed into place: an interrupted export must leave nothing that looks finished. Why refuse a
non-empty folder: overwriting someone's checkpoint by accident is the worst kind of data loss.

Modes: `uniform` (same kept count per layer: stock config, smaller `intermediate_size`) and `padded` (per-layer
masks with pruned units zeroed: stock config, identical outputs, no size gain). Only safetensors are written.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from diet.cache import atomic_write_json
from diet.errors import DietError

MODES = ("uniform", "padded")


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DietError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DietError(f"{out} is not empty; choose another folder or pass --overwrite")


def mask_json(result) -> dict:
    """The human- and machine-readable mask: kept indices per layer, tasks, votes, settings, summary."""
    return {
        "format": "diet-mask/1",
        "unit": result.shape.get("unit", "mlp"),
        "tasks": result.tasks,
        "settings": asdict(result.settings),
        "widths": result.shape["widths"],
        "keep": [k.tolist() for k in result.keep()],
        "summary": result.summary,
    }


def write_mask_files(folder: Path, result) -> None:
    from safetensors.numpy import save_file

    save_file({"mask": result.mask.astype(np.uint8), "votes": result.votes,
               "task_masks": result.task_masks.astype(np.uint8)}, str(folder / "mask.safetensors"))
    (folder / "mask.json").write_text(json.dumps(mask_json(result), indent=1))


def export_model(lm, result, out: str | Path, mode: str | None = None, overwrite: bool = False,
                 extra: dict | None = None) -> Path:
    """Prune a copy of `lm.model` per `result` and write the folder; returns its path.

    mode=None picks `uniform` when every layer keeps the same count, else `padded`.
    """
    from diet.prune import prune_units, zero_units

    out = Path(out)
    check_out_dir(out, overwrite)
    uniform = bool(result.summary.get("uniform"))
    mode = mode or ("uniform" if uniform else "padded")
    if mode not in MODES:
        raise DietError(f"unknown export mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "uniform" and not uniform:
        raise DietError("this mask keeps different counts per layer: use --export-mode padded "
                        "(or the exact-budget merge, which keeps the same count in every layer)")
    model = copy.deepcopy(lm.model)
    (prune_units if mode == "uniform" else zero_units)(model, result.keep())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        write_mask_files(tmp, result)
        atomic_write_json(tmp / "diet_settings.json", {"mode": mode, "model": lm.spec.name,
                                                       "model_identity": lm.identity,
                                                       "mask": asdict(result.settings), **(extra or {})})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
