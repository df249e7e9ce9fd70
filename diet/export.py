"""Write a pruned model folder that loads elsewhere, and re-apply a saved mask to its base model.

Modes (the user chooses):
* `uniform` — the same kept count in every layer: stock config with a smaller `intermediate_size`; loads with plain
  `AutoModelForCausalLM.from_pretrained`, lm-eval, vLLM, with no `diet` and no remote code.
* `padded` — per-layer masks; each layer keeps its channels plus zero rows/columns up to the widest layer: stock
  config, outputs identical to the masked model, compression only down to the widest layer.
* `heterogeneous` — per-layer widths through a config subclass (`diet/modeling_diet.py`, copied into the folder):
  loads with `trust_remote_code=True` where `diet` is absent, and without it after `import diet`.
* `gguf` — one `model.gguf` llama.cpp runs natively: per-layer widths as its `deci` architecture, uniform widths in
  the family's own (`diet/gguf_export.py`).
* `vllm` — a folder vLLM serves as `DeciLMForCausalLM` with exact per-layer widths (`diet/vllm_export.py`).

Why a temporary folder renamed into place: an interrupted export must leave nothing that looks finished. Why refuse
a non-empty folder: overwriting someone's checkpoint by accident is the worst kind of data loss. Only safetensors are
written (no pickles). Every folder also holds the tokenizer, the mask (JSON + safetensors), the settings, plots and a
model card with measured sizes and speed.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from diet.cache import atomic_write_json
from diet.errors import DietError

MODES = ("uniform", "padded", "heterogeneous", "gguf", "vllm")
SERVING_MODES = ("gguf", "vllm")  # exact per-layer widths in a serving engine's own format
MASK_FORMAT = "diet-mask/1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

Say = Callable[[str], None]


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless `overwrite` (checked before any expensive work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DietError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DietError(f"{out} is not empty; choose another folder or pass --overwrite")


def resolve_mode(result, mode: str | None) -> str:
    """The export mode to use: the user's choice, checked against the mask; default uniform when possible."""
    uniform = len(set(int(k) for k in result.mask.sum(axis=1))) == 1
    mode = mode or ("uniform" if uniform else "padded")
    if mode not in MODES:
        raise DietError(f"unknown export mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "uniform" and not uniform:
        raise DietError("this mask keeps different counts per layer: use --export-mode padded (stock config, zero "
                        "padding) or heterogeneous (per-layer widths), or the exact-budget merge, which keeps the "
                        "same count in every layer")
    return mode


# ------------------------------------------------------------------------------------------------ mask files


def mask_json(result, source: dict | None = None) -> dict:
    """The human- and machine-readable mask: kept indices per layer, tasks, settings, summary, model identity."""
    shape = result.shape
    return {
        "format": MASK_FORMAT,
        "unit": shape.get("unit", "mlp"),
        "model": (source or {}).get("model"),
        "model_identity": (source or {}).get("model_identity"),
        "family": shape.get("family"),
        "tasks": list(result.tasks),
        "method": getattr(result, "method", "diet"),
        "settings": asdict(result.settings),
        "widths": [int(w) for w in shape["widths"]],
        "params_per_unit": [int(p) for p in shape["params_per_unit"]],
        "total_params": int(shape["total_params"]),
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


def read_mask(path: str | Path):
    """(MaskResult, source) from a mask.json or mask.safetensors (a sibling of the other kind adds to it).

    source = {"model": ..., "model_identity": ...} of the model the mask was made on (None when unknown).
    """
    from diet.api import MaskResult
    from diet.settings import MaskSettings

    path = Path(path)
    if path.is_dir():
        path = path / "mask.json"
    if not path.is_file():
        raise DietError(f"no mask file at {path} (give a mask.json or mask.safetensors)")
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
    try:
        widths = [int(w) for w in d["widths"]]
        if "keep" in d:
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
        elif "mask" in arrays:
            mask = arrays["mask"].astype(bool)
        else:
            raise DietError(f"{path} holds no kept indices")
        settings = MaskSettings(**d["settings"])
        shape = {"family": d.get("family"), "unit": d.get("unit", "mlp"), "layers": len(widths), "widths": widths,
                 "params_per_unit": [int(p) for p in d["params_per_unit"]], "total_params": int(d["total_params"])}
    except (KeyError, TypeError, ValueError) as e:
        raise DietError(f"{path}: malformed mask description ({type(e).__name__}: {e})") from None
    tm = arrays.get("task_masks")
    task_masks = tm.astype(bool) if tm is not None else np.zeros((0, *mask.shape), dtype=bool)
    votes = arrays.get("votes")
    result = MaskResult(list(d.get("tasks", [])), settings, task_masks, mask, votes, shape, dict(d.get("summary", {})))
    if "method" in d and hasattr(result, "method"):
        result.method = str(d["method"])
    return result, {"model": d.get("model"), "model_identity": d.get("model_identity")}


def _same_model(a: str | None, b: str | None) -> bool:
    """Identities match, also across ways of naming the same files ("smollm2-135m:<hash>" vs "dir:<hash>")."""
    return bool(a and b) and (a == b or a.split(":", 1)[-1] == b.split(":", 1)[-1])


def check_mask(result, source: dict, lm, say: Say = print) -> None:
    """Refuse a mask that cannot fit the model; warn when it fits but was made on other weights."""
    from diet.adapters import model_shape

    shape = model_shape(lm.model, result.shape.get("unit", "mlp"))
    fam = result.shape.get("family")
    if fam and fam != shape["family"]:
        raise DietError(f"the mask was made for a {fam} model, but {lm.spec.name} is {shape['family']}")
    if len(result.shape["widths"]) != shape["layers"]:
        raise DietError(f"the mask has {len(result.shape['widths'])} layers but {lm.spec.name} has "
                        f"{shape['layers']}: it was made for another model")
    if list(result.shape["widths"]) != list(shape["widths"]):
        raise DietError(f"the mask's MLP widths ({_widths_words(result.shape['widths'])}) differ from "
                        f"{lm.spec.name}'s ({_widths_words(shape['widths'])}): it was made for another model")
    if source.get("model_identity") and not _same_model(source["model_identity"], lm.identity):
        say(f"warning: the mask was made on {source.get('model')} ({source['model_identity']}), not on these "
            f"weights ({lm.identity}); the shapes fit, but the channels it keeps were chosen for other weights")


def _widths_words(widths) -> str:
    w = list(widths)
    return f"{len(w)} x {w[0]}" if len(set(w)) == 1 else f"{len(w)} layers, {min(w)}-{max(w)}"


# ------------------------------------------------------------------------------------------------ models


def _zero_channels(layer, family, channels) -> None:
    """Zero the gate/up rows and down columns of `channels` (padding): the channel then contributes exactly 0."""
    import torch

    p = family.mlp(layer)
    idx = torch.as_tensor(channels, dtype=torch.long, device=p.down.weight.device)
    with torch.no_grad():
        p.down.weight[:, idx] = 0
        if p.gate_up is not None:
            rows = torch.cat([idx, idx + p.down.in_features])
            p.gate_up.weight[rows] = 0
            if p.gate_up.bias is not None:
                p.gate_up.bias[rows] = 0
        else:
            for lin in (p.gate, p.up):
                lin.weight[idx] = 0
                if lin.bias is not None:
                    lin.bias[idx] = 0


def build_export_model(model, keep: list[np.ndarray], mode: str, unit: str = "mlp"):
    """A new model (the given one is left dense) in the shape `mode` writes, computing the masked model's function."""
    from diet.adapters import get_unit
    from diet.prune import prune_units

    widths = [len(k) for k in keep]
    if mode in SERVING_MODES:  # exact slicing per layer; the writer turns it into the engine's format
        return prune_units(copy.deepcopy(model), keep, unit=unit)
    if mode == "uniform":
        if len(set(widths)) != 1:
            raise DietError("uniform export needs the same kept count in every layer")
        return prune_units(copy.deepcopy(model), keep, unit=unit)
    if unit != "mlp":
        raise DietError(f"{mode} export supports MLP channels only; a {unit!r} mask exports in uniform mode")
    if mode == "heterogeneous":
        from diet.hetero import to_heterogeneous

        return to_heterogeneous(prune_units(copy.deepcopy(model), keep), widths)
    if mode != "padded":
        raise DietError(f"unknown export mode {mode!r}: use one of {', '.join(MODES)}")
    unit = get_unit(model)
    full = [unit.width(layer) for layer in unit.family.layers(model)]
    top = max(widths)
    slots, pads = [], []  # per layer: the channels to store (kept + padding), and which of them are padding
    for k, w in zip(keep, full, strict=True):
        k = np.sort(np.asarray(k, dtype=np.int64))
        pad = np.setdiff1d(np.arange(w), k)[: top - len(k)]
        stored = np.union1d(k, pad)
        slots.append(stored)
        pads.append(np.searchsorted(stored, pad))
    padded = prune_units(copy.deepcopy(model), slots)
    for layer, pad in zip(unit.family.layers(padded), pads, strict=True):
        if len(pad):
            _zero_channels(layer, unit.family, pad)
    return padded


# ------------------------------------------------------------------------------------------------ sizes


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir()
            if p.suffix in (".safetensors", ".bin", ".gguf") and p.name != "mask.safetensors"]


def _disk_before(lm) -> tuple[int, bool]:
    """(bytes of the base model's weight files, estimated?) — from the files when the model is a local folder."""
    from diet.models import count_parameters

    folder = Path(lm.path)
    if folder.is_dir():
        files = _weight_files(folder)
        if files:
            return sum(p.stat().st_size for p in files), False
    param = next(lm.model.parameters())
    return count_parameters(lm.model) * param.element_size(), True


# ------------------------------------------------------------------------------------------------ export


def _evaluation_dict(evaluation) -> dict[str, list[dict]] | None:
    """Accept a list of TaskResult (or their dicts) = the pruned model's, or {label: list}."""
    if not evaluation:
        return None
    if not isinstance(evaluation, dict):
        evaluation = {"pruned": evaluation}
    tables = {label: [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in rs]
              for label, rs in evaluation.items() if isinstance(rs, (list, tuple))}  # other keys: not task rows
    return tables or None


def evaluate_pair(lm, pruned, tasks: list[str], eval_settings, say: Say) -> dict[str, list]:
    """Dense and pruned scores on the mask's own tasks, for the card (same scorer, same items)."""
    from diet.evaluate import evaluate_tasks
    from diet.tasks import get_task

    resolved = [get_task(t) for t in tasks]
    out = {}
    for label, model in (("dense", lm.model), ("pruned", pruned)):
        say(f"evaluating the {label} model on {', '.join(tasks)}...")
        out[label] = evaluate_tasks(model, lm.tokenizer, resolved, eval_settings)
    return out


def check_serving(lm, result, mode: str, outtype: str = "f32") -> None:
    """Refuse, before any expensive work, a gguf/vllm export the engine cannot run exactly (one line each)."""
    if mode not in SERVING_MODES:
        return
    from diet.adapters import get_family, model_shape

    kept = [int(k) for k in result.mask.sum(axis=1)]
    heads = result.shape.get("unit", "mlp") == "heads"
    ffn = model_shape(lm.model)["widths"] if heads else kept  # a head mask leaves the MLP widths as they are
    if mode == "gguf":
        from diet.gguf_export import check_request

        check_request(get_family(lm.model).name, ffn, outtype, int(lm.model.config.hidden_size))
    else:
        from diet.vllm_export import check_request

        check_request(get_family(lm.model).name, ffn, kept if heads else None)


def _write_model(mode: str, model, lm, folder: Path, outtype: str, name: str) -> dict:
    """Write the weights (+ config and tokenizer where the format has them); returns {"params_stored", ...}."""
    from diet.models import count_parameters

    if mode == "gguf":
        from diet.gguf_export import GGUF_NAME, GGUFSettings, tokenizer_fields, write_gguf

        return write_gguf(model, tokenizer_fields(lm), folder / GGUF_NAME, GGUFSettings(outtype=outtype), name=name)
    if mode == "vllm":
        from diet.vllm_export import write_vllm_folder

        info = write_vllm_folder(model, folder)
    else:
        model.save_pretrained(folder)
        info = {}
    lm.tokenizer.save_pretrained(folder)
    return {"params_stored": count_parameters(model), **info}


def _compensated_base(lm, result, mode: str, unit: str, compensation, texts, say: Say) -> tuple:
    """(the model to cut, what was done): a compensated masked copy when a bias or an lstsq refit is asked for,
    else the loaded model itself (the cutting code copies it)."""
    from diet.compensate import bias_supported, compensate_masked, fit_texts

    lstsq = compensation if compensation is not None and compensation.method == "lstsq" else None
    means = None if lstsq is not None else getattr(result, "compensation", None)
    if lstsq is None and means is None:
        return lm.model, {}
    if means is not None:
        reason = bias_supported(lm.model, unit)
        if reason:
            raise DietError(f"bias compensation cannot be exported for this model: {reason}; use --compensation "
                            "lstsq (plain weights, every mode) or none (flap: --no-flap-bias)")
        if mode not in ("uniform", "padded"):
            raise DietError(f"bias compensation exports in uniform or padded mode only, not {mode}")
    if lstsq is not None and not texts:
        from diet.tasks import get_task

        texts = fit_texts([get_task(t) for t in result.tasks], lstsq)
    base = copy.deepcopy(lm.model)
    if lstsq is not None:
        say(f"lstsq: refitting every layer's output projection on {len(texts)} calibration texts...")
    report = compensate_masked(base, result.keep(), unit, means, lstsq, lm.tokenizer, texts)
    info = lstsq.key_fields() if lstsq is not None else {"method": "bias"}
    if report is not None:
        info.update(tokens=report.tokens, seconds=round(report.seconds, 1))
    return base, info


def export_model(lm, result, out: str | Path, mode: str | None = None, overwrite: bool = False,
                 extra: dict | None = None, evaluation=None, speed=None, eval_settings=None,
                 say: Say | None = None, outtype: str = "f32", round_to: int = 1, compensation=None,
                 texts: list[str] | None = None) -> Path:
    """Prune a copy of `lm.model` per `result` and write the export folder atomically; returns its path.

    mode=None picks `uniform` when every layer keeps the same count, else `padded`. `evaluation`: an optional list
    of TaskResult (dicts) of the pruned model, or {"dense": [...], "pruned": [...]}, shown in the card; or
    `eval_settings` (a `diet.evaluate.EvalSettings`) to evaluate dense and pruned on the mask's tasks here.
    `speed`: a `diet.timing.SpeedSettings` to measure dense vs pruned forward speed for the card (None: skipped).
    `outtype`: the GGUF tensor type (f32, f16, bf16, q8_0); `round_to`: round each layer's kept count to a multiple
    of this by the mask's own ranking first (1 = exact widths). `compensation`: a
    `diet.settings.CompensationSettings`; "lstsq" refits the output projections on `texts` (default: calibration
    texts of the mask's tasks) before cutting; a bias (`result.compensation`, FLAP's or "bias") is written where the
    family's stock config can carry it (`diet.compensate.bias_supported`) and refused clearly elsewhere.
    """
    from diet import __version__
    from diet.modelcard import CardFacts, render_card, write_plots
    from diet.models import count_parameters

    say = say or (lambda m: None)
    out = Path(out)
    check_out_dir(out, overwrite)
    if Path(lm.path).exists() and out.resolve() == Path(lm.path).resolve():
        raise DietError(f"{out} is the base model's own folder: export somewhere else")
    from diet.api import rounded

    result = rounded(result, round_to)
    mode = resolve_mode(result, mode)
    check_serving(lm, result, mode, outtype)
    keep = result.keep()
    unit = result.shape.get("unit", "mlp")
    base, comp_info = _compensated_base(lm, result, mode, unit, compensation, texts, say)
    model = build_export_model(base, keep, mode, unit)
    del base
    if comp_info.get("method") == "bias":
        from diet.compensate import enable_output_bias

        enable_output_bias(model, unit)
    if eval_settings is not None and evaluation is None:
        evaluation = evaluate_pair(lm, model, list(result.tasks), eval_settings, say)
    measured = None
    if speed is not None and speed.repeats > 0:
        from diet.timing import measure_speed

        say(f"measuring forward speed, dense vs pruned (batch {', '.join(map(str, speed.batch_sizes))})...")
        measured = measure_speed({"dense": lm.model, "pruned": model}, speed)
    s = result.summary
    source = {"model": lm.spec.name, "model_identity": lm.identity}
    settings = {"format": "diet-export/1", "diet_version": __version__, "mode": mode, **source,
                "tasks": list(result.tasks), "method": getattr(result, "method", "diet"),
                "mask": asdict(result.settings),
                "kept_per_layer": [len(k) for k in keep], "params_logical": int(s["params_after"]),
                **({"outtype": outtype} if mode == "gguf" else {}), **({"round_to": round_to} if round_to > 1 else {}),
                **({"compensation": comp_info} if comp_info else {}), **(extra or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        written = _write_model(mode, model, lm, tmp, outtype, f"{lm.spec.name} pruned with DIET")
        settings["params_stored"] = int(written["params_stored"])
        settings.update({k: v for k, v in written.items() if k in ("arch", "bytes")})
        write_mask_files(tmp, result, source)
        atomic_write_json(tmp / "diet_settings.json", settings)
        unit = result.shape.get("unit", "mlp")
        plots = write_plots(tmp, list(result.shape["widths"]), [len(k) for k in keep], s.get("votes_histogram"), unit)
        disk_before, estimated = _disk_before(lm)
        facts = CardFacts(
            base_model=lm.spec.name, base_identity=lm.identity, mode=mode, tasks=list(result.tasks),
            mask_settings=asdict(result.settings), unit_sparsity=float(s["unit_sparsity"]),
            param_sparsity=float(s["param_sparsity"]), params_before=count_parameters(lm.model),
            params_stored=int(written["params_stored"]), params_effective=int(s["params_after"]),
            widths=list(result.shape["widths"]), kept_per_layer=[len(k) for k in keep],
            votes_histogram=s.get("votes_histogram"), disk_before=disk_before, disk_before_estimated=estimated,
            disk_after=sum(p.stat().st_size for p in _weight_files(tmp)), evaluation=_evaluation_dict(evaluation),
            speed=measured, plots=plots, unit=unit, extra={k: v for k, v in (extra or {}).items() if k != "evaluation"})
        (tmp / "README.md").write_text(render_card(facts, folder_hint=str(out)))
        pickles = [p.name for p in tmp.rglob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise DietError(f"refusing to write pickled files {pickles}: only safetensors are exported")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an old `out` (overwrite) is moved aside first, deleted last.

    Temporary files and folders are created private (0600/0700); the export gets ordinary ones (0755/0644) first.
    """
    for p in [tmp, *tmp.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "previous")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def apply_mask(lm, mask_path: str | Path, out: str | Path, mode: str | None = None, overwrite: bool = False,
               speed=None, eval_settings=None, say: Say = print, outtype: str = "f32", round_to: int = 1) -> Path:
    """Re-apply a saved mask (a few KB) to its base model and export: the alternative to sharing a checkpoint."""
    from diet import masks as M
    from diet.adapters import model_shape

    check_out_dir(Path(out), overwrite)
    result, source = read_mask(mask_path)
    check_mask(result, source, lm, say)
    shape = model_shape(lm.model, result.shape.get("unit", "mlp"))
    result.shape = shape
    result.summary = {**result.summary, **M.param_summary(result.mask, shape),
                      "kept_per_layer": M.kept_per_layer(result.mask).tolist()}
    return export_model(lm, result, out, mode=mode, overwrite=overwrite, speed=speed, eval_settings=eval_settings,
                        say=say, outtype=outtype, round_to=round_to,
                        extra={"mask_source": {"path": str(Path(mask_path).resolve()), **source}})
