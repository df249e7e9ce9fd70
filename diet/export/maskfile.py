"""The mask files of an export folder: mask.json (kept indices, readable and diff-able) and mask.safetensors (the
mask, votes and task masks as arrays), read back to re-apply a mask to its base model (`diet apply-mask`).

Why two files: the JSON is what a person reads and shares (a few KB); the safetensors keeps the arrays a view or a
re-vote needs. Either alone is enough to re-apply the mask; the JSON wins where both are present.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from diet.errors import DietError
from diet.export.protocol import Say
from diet.shape import ModelShape

MASK_FORMAT = "diet-mask/1"

def mask_json(result, source: dict | None = None) -> dict:
    """The human- and machine-readable mask: kept indices per layer, tasks, settings, summary, model identity."""
    shape = result.shape
    return {
        "format": MASK_FORMAT,
        "unit": shape.unit,
        "model": (source or {}).get("model"),
        "model_identity": (source or {}).get("model_identity"),
        "family": shape.family,
        "tasks": list(result.tasks),
        "method": getattr(result, "method", "diet"),
        "settings": asdict(result.settings),
        "widths": list(shape.widths),
        "params_per_unit": list(shape.params_per_unit),
        "total_params": shape.total_params,
        "summary": result.summary,
        "keep": [k.tolist() for k in result.keep()],
    }


def _dump_mask_json(d: dict) -> str:
    """Indented JSON, except one line per layer for the kept indices (a readable, diff-able file)."""
    body = json.dumps({k: v for k, v in d.items() if k != "keep"}, indent=1, default=float)
    rows = ",\n".join("  " + json.dumps(k) for k in d["keep"])
    return body[:-2] + ',\n "keep": [\n' + rows + "\n ]\n}\n"


def write_mask_files(folder: Path, result, source: dict | None = None) -> None:
    """mask.json (kept indices) and mask.safetensors (mask, votes, task masks; the JSON minus indices as metadata)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    d = mask_json(result, source)
    arrays = {"mask": result.mask.astype(np.uint8)}
    if result.votes is not None:
        arrays["votes"] = np.asarray(result.votes, dtype=np.uint8)
    if result.task_masks is not None and result.task_masks.size:
        arrays["task_masks"] = result.task_masks.astype(np.uint8)
    meta = json.dumps({k: v for k, v in d.items() if k != "keep"}, default=float)
    save_file(arrays, str(folder / "mask.safetensors"), metadata={"diet_mask": meta})
    (folder / "mask.json").write_text(_dump_mask_json(d))


def _read_mask_files(path: Path) -> tuple[dict, dict, Path, Path]:
    """(description, arrays, json path, safetensors path): the JSON wins; the safetensors adds arrays."""
    json_path = path if path.suffix == ".json" else path.with_name("mask.json")
    st_path = path if path.suffix == ".safetensors" else path.with_name("mask.safetensors")
    d, arrays = None, {}
    if st_path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(st_path), framework="numpy") as f:
                arrays = {k: f.get_tensor(k) for k in f.keys()}
                meta = (f.metadata() or {}).get("diet_mask")
        except Exception as e:
            raise DietError(f"{st_path} is not a readable safetensors file: {e}") from None
        d = json.loads(meta) if meta else None
    if json_path.is_file():
        try:
            d = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DietError(f"{json_path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or not str(d.get("format", "")).startswith("diet-mask/"):
        raise DietError(f"{path} is not a DIET mask (no 'format': 'diet-mask/…' description found)")
    return d, arrays, json_path, st_path


def _mask_of(d: dict, arrays: dict, widths: list[int], path: Path, json_path: Path, st_path: Path) -> np.ndarray:
    """The (L, max width) boolean mask from the kept indices (checked against the arrays), else from the arrays."""
    if "keep" not in d:
        if "mask" not in arrays:
            raise DietError(f"{path} holds no kept indices")
        return arrays["mask"].astype(bool)
    mask = np.zeros((len(widths), max(widths)), dtype=bool)
    if len(d["keep"]) != len(widths):
        raise DietError(f"{json_path}: 'keep' has {len(d['keep'])} layers but 'widths' has {len(widths)}")
    for i, (k, w) in enumerate(zip(d["keep"], widths, strict=True)):
        k = np.asarray(k, dtype=np.int64)
        if k.size and (k.min() < 0 or k.max() >= w):
            raise DietError(f"{json_path}: layer {i} keeps an index outside 0..{w - 1}")
        mask[i, k] = True
    if "mask" in arrays and not np.array_equal(arrays["mask"].astype(bool), mask):
        raise DietError(f"{json_path.name} and {st_path.name} describe different masks")
    return mask


def read_mask(path: str | Path):
    """(MaskResult, source) from a mask.json or mask.safetensors (a sibling of the other kind adds to it).

    source = {"model": ..., "model_identity": ...} of the model the mask was made on (None when unknown).
    """
    from diet.results import MaskResult
    from diet.settings import MaskSettings

    path = Path(path)
    if path.is_dir():
        path = path / "mask.json"
    if not path.is_file():
        raise DietError(f"no mask file at {path} (give a mask.json or mask.safetensors)")
    d, arrays, json_path, st_path = _read_mask_files(path)
    try:
        widths = [int(w) for w in d["widths"]]
        mask = _mask_of(d, arrays, widths, path, json_path, st_path)
        settings = MaskSettings(**d["settings"])
        shape = ModelShape.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise DietError(f"{path}: malformed mask description ({type(e).__name__}: {e})") from None
    tm = arrays.get("task_masks")
    task_masks = tm.astype(bool) if tm is not None else np.zeros((0, *mask.shape), dtype=bool)
    result = MaskResult(list(d.get("tasks", [])), settings, task_masks, mask, arrays.get("votes"), shape,
                        dict(d.get("summary", {})), method=str(d.get("method", "diet")))
    return result, {"model": d.get("model"), "model_identity": d.get("model_identity")}


def _same_model(a: str | None, b: str | None) -> bool:
    """Identities match, also across ways of naming the same files ("smollm2-135m:<hash>" vs "dir:<hash>")."""
    return bool(a and b) and (a == b or a.split(":", 1)[-1] == b.split(":", 1)[-1])


def check_mask(result, source: dict, lm, say: Say = print) -> None:
    """Refuse a mask that cannot fit the model; warn when it fits but was made on other weights."""
    from diet.adapters import model_shape

    shape = model_shape(lm.model, result.unit)
    fam = result.shape.family
    if fam and fam != shape.family:
        raise DietError(f"the mask was made for a {fam} model, but {lm.spec.name} is {shape.family}")
    if result.shape.layers != shape.layers:
        raise DietError(f"the mask has {result.shape.layers} layers but {lm.spec.name} has "
                        f"{shape.layers}: it was made for another model")
    if result.unit == "heads" and result.shape.widths != shape.widths:
        from diet.adapters import get_family, kv_group_words

        first = get_family(lm.model).layers(lm.model)[0]
        raise DietError(f"the head mask has {_widths_words(result.shape.widths)} units but {lm.spec.name} has "
                        f"{_widths_words(shape.widths)} KV groups: {kv_group_words(lm.model, first)}")
    if result.shape.widths != shape.widths:
        raise DietError(f"the mask's MLP widths ({_widths_words(result.shape.widths)}) differ from "
                        f"{lm.spec.name}'s ({_widths_words(shape.widths)}): it was made for another model")
    if source.get("model_identity") and not _same_model(source["model_identity"], lm.identity):
        say(f"warning: the mask was made on {source.get('model')} ({source['model_identity']}), not on these "
            f"weights ({lm.identity}); the shapes fit, but the channels it keeps were chosen for other weights")


def _widths_words(widths) -> str:
    w = list(widths)
    return f"{len(w)} x {w[0]}" if len(set(w)) == 1 else f"{len(w)} layers, {min(w)}-{max(w)}"
