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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from diet.cache import atomic_write_json
from diet.errors import DietError
from diet.folders import check_out_dir, save_tokenizer, staged_folder
from diet.shape import ModelShape

MODES = ("uniform", "padded", "heterogeneous", "gguf", "vllm")
SERVING_MODES = ("gguf", "vllm")  # exact per-layer widths in a serving engine's own format
MASK_FORMAT = "diet-mask/1"

Say = Callable[[str], None]


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


# ------------------------------------------------------------------------------------------------ models


def shared_copy(model):
    """A copy of `model`'s modules that shares every parameter and buffer tensor with it.

    Why: pruning replaces the sliced layers' weights with new tensors and never writes into the old ones, so a
    pruned copy only needs its own module tree; everything pruning leaves alone (embeddings, norms, the other
    unit) stays one tensor for both models. Do not write into either model's weights in place afterwards."""
    import itertools

    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def build_export_model(model, keep: list[np.ndarray], mode: str, unit: str = "mlp", in_place: bool = False,
                       release: bool = False):
    """The model in the shape `mode` writes, computing the masked model's function.

    `in_place=False`: `model` is left dense and the result shares the tensors pruning does not touch with it
    (`shared_copy`). `in_place=True`: `model` itself is cut layer by layer (nothing is copied; a heterogeneous
    model takes over its tensors); use what this returns, not `model`. `release`: see `diet.prune.prune_units`.
    """
    from diet.adapters import get_unit
    from diet.prune import prune_units

    base = model if in_place else shared_copy(model)
    widths = [len(k) for k in keep]
    if mode in SERVING_MODES:  # exact slicing per layer; the writer turns it into the engine's format
        return prune_units(base, keep, unit=unit, release=release)
    if mode == "uniform":
        if len(set(widths)) != 1:
            raise DietError("uniform export needs the same kept count in every layer")
        return prune_units(base, keep, unit=unit, release=release)
    if unit != "mlp":
        raise DietError(f"{mode} export supports MLP channels only; a {unit!r} mask exports in uniform mode")
    if mode == "heterogeneous":
        return _heterogeneous(prune_units(base, keep, release=release), widths)
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
    padded = prune_units(base, slots, release=release)
    for layer, pad in zip(unit.family.layers(padded), pads, strict=True):
        if len(pad):
            unit.zero_channels(layer, pad)
    return padded


def _heterogeneous(pruned, widths: list[int]):
    """The heterogeneous-class model holding exactly `pruned`'s tensors (no copy: built on the meta device, then
    given the very tensors of `pruned`; buffers that are not saved, such as RoPE's, are taken over too)."""
    import torch

    from diet.hetero import hetero_config
    from diet.modeling_diet import CLASSES

    config = hetero_config(pruned.config, widths)  # refuses an unsupported family in one line
    _, model_cls = CLASSES[pruned.config.model_type]
    dtype = next(pruned.parameters()).dtype
    with torch.device("meta"):
        model = model_cls._from_config(config, dtype=dtype)
    model.load_state_dict(pruned.state_dict(), strict=True, assign=True)
    for name, buf in pruned.named_buffers():
        owner, _, attr = name.rpartition(".")
        target = model.get_submodule(owner) if owner else model
        setattr(target, attr, buf)  # an existing buffer name: stays a buffer, persistence unchanged
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise DietError(f"heterogeneous export could not take over {left[:3]} from the pruned model")
    model.generation_config = pruned.generation_config
    return model.eval()


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


def evaluate_one(model, tokenizer, label: str, tasks: list[str], eval_settings, say: Say) -> list:
    """One model's scores on the mask's own tasks (the dense side is scored before an in-place prune)."""
    from diet.evaluate import evaluate_tasks
    from diet.tasks import get_task

    say(f"evaluating the {label} model on {', '.join(tasks)}...")
    return evaluate_tasks(model, tokenizer, [get_task(t) for t in tasks], eval_settings)


def check_serving(lm, result, mode: str, outtype: str = "f32") -> None:
    """Refuse, before any expensive work, a gguf/vllm export the engine cannot run exactly (one line each)."""
    if mode not in SERVING_MODES:
        return
    from diet.adapters import get_family, model_shape

    kept = [int(k) for k in result.mask.sum(axis=1)]
    heads = result.unit == "heads"
    ffn = list(model_shape(lm.model).widths) if heads else kept  # a head mask leaves the MLP widths as they are
    if mode == "gguf":
        from diet.gguf_export import check_request

        check_request(get_family(lm.model).name, ffn, outtype, int(lm.model.config.hidden_size), lm.model.config)
    else:
        from diet.vllm_export import check_request

        check_request(get_family(lm.model).name, ffn, kept if heads else None)


def _write_model(mode: str, model, lm, folder: Path, outtype: str, name: str, max_shard_size: str = "2GB") -> dict:
    """Write the weights (+ config and tokenizer where the format has them); returns {"params_stored", ...}."""
    from diet.models import count_parameters

    if mode == "gguf":
        from diet.gguf_export import GGUF_NAME, GGUFSettings, tokenizer_fields, write_gguf
        from diet.gguf_quant import file_tensor_types, tensor_type_words

        info = write_gguf(model, tokenizer_fields(lm), folder / GGUF_NAME, GGUFSettings(outtype=outtype), name=name)
        return {**info, "tensor_words": tensor_type_words(file_tensor_types(folder / GGUF_NAME))}  # read back
    if mode == "vllm":
        from diet.vllm_export import write_vllm_folder

        info = write_vllm_folder(model, folder)
    else:
        model.save_pretrained(folder, max_shard_size=max_shard_size)  # shards + index; written from the tensors
        from diet.vllm_export import write_index

        write_index(folder)  # so vLLM, which loads every *.safetensors without one, skips mask.safetensors
        info = {}
    save_tokenizer(lm.tokenizer, folder)
    return {"params_stored": count_parameters(model), **info}


def _compensated_base(lm, result, mode: str, unit: str, compensation, texts, say: Say,
                      in_place: bool = False) -> tuple:
    """(the model to cut, what was done): a compensated masked copy when a bias or an lstsq refit is asked for
    (`in_place`: the loaded model itself, compensated in place), else the loaded model itself."""
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
    base = lm.model if in_place else copy.deepcopy(lm.model)
    if lstsq is not None:
        say(f"lstsq: refitting every layer's output projection on {len(texts)} calibration texts...")
    report = compensate_masked(base, result.keep(), unit, means, lstsq, lm.tokenizer, texts)
    info = lstsq.key_fields() if lstsq is not None else {"method": "bias"}
    if report is not None:
        info.update(tokens=report.tokens, seconds=round(report.seconds, 1))
    return base, info


def prune_for_export(lm, result, mode: str, compensation=None, texts: list[str] | None = None,
                     say: Say | None = None, in_place: bool = True, release: bool = True) -> tuple:
    """(the model an export writes, compensation info): `lm.model` cut to `mode`'s shape, compensated first when
    asked. Every writer (save_pretrained, GGUF, vLLM) writes what this returns.

    `in_place=True` (what the CLI does): the loaded model itself is cut, layer by layer, with no second copy;
    `lm.model` becomes the pruned model and `lm.pruned` says so (profiling it is refused from then on).
    `release`: give back the dense weights' file pages as they are replaced (`diet.prune.prune_units`).
    `in_place=False`: `lm.model` stays dense; the result shares the untouched tensors with it.
    """
    from diet.prune import mark_pruned

    say = say or (lambda m: None)
    unit = result.unit
    base, comp_info = _compensated_base(lm, result, mode, unit, compensation, texts, say, in_place)
    owned = in_place or base is not lm.model  # a compensated copy is ours to cut as well
    model = build_export_model(base, result.keep(), mode, unit, in_place=owned, release=release and in_place)
    del base
    if comp_info.get("method") == "bias":
        from diet.compensate import enable_output_bias

        enable_output_bias(model, unit)
    if in_place:
        lm.model = model
        lm.pruned = f"{mode} export of a {getattr(result, 'method', 'diet')} mask"
        mark_pruned(model, lm.pruned)
    return model, comp_info


def _dense_twin(lm, result, compensation):
    """The dense model kept for interleaved timing next to an in-place prune. It shares tensors with the loaded
    model unless a compensation will write into weights in place (then a full copy)."""
    if compensation is not None or getattr(result, "compensation", None) is not None:
        return copy.deepcopy(lm.model)
    return shared_copy(lm.model)


def model_dtype(model) -> str:
    """The dtype most of the model's weights are in, as a word ("bfloat16")."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        counts[str(p.dtype).removeprefix("torch.")] = counts.get(str(p.dtype).removeprefix("torch."), 0) + p.numel()
    return max(counts, key=counts.get) if counts else "unknown"


def export_model(lm, result, out: str | Path, mode: str | None = None, overwrite: bool = False,
                 extra: dict | None = None, evaluation=None, speed=None, eval_settings=None,
                 say: Say | None = None, outtype: str = "f32", round_to: int = 1, compensation=None,
                 texts: list[str] | None = None, in_place: bool = False, max_shard_size: str = "2GB",
                 finish: Callable[[Path, dict], None] | None = None, sample_prompts: Sequence[str] = ()) -> Path:
    """Prune `lm.model` per `result` (a copy, or itself with `in_place`) and write the export folder atomically.

    mode=None picks `uniform` when every layer keeps the same count, else `padded`. `evaluation`: an optional list
    of TaskResult (dicts) of the pruned model, or {"dense": [...], "pruned": [...]}, shown in the card; or
    `eval_settings` (a `diet.evaluate.EvalSettings`) to evaluate dense and pruned on the mask's tasks here.
    `speed`: a `diet.timing.SpeedSettings` to measure dense vs pruned forward speed for the card (None: skipped).
    `outtype`: the GGUF tensor type (f32, f16, bf16, q8_0, q8_0-f16down); `round_to`: round each
    layer's kept count to a multiple of this by the mask's own ranking first (1 = exact widths). `compensation`: a
    `diet.settings.CompensationSettings`; "lstsq" refits the output projections on `texts` (default: calibration
    texts of the mask's tasks) before cutting; a bias (`result.compensation`, FLAP's or "bias") is written where the
    family's stock config can carry it (`diet.compensate.bias_supported`) and refused clearly elsewhere.
    `in_place`: cut the loaded model itself (see `prune_for_export`): the dense side of any comparison is measured
    first, so only `speed.interleaved` keeps a dense twin. `max_shard_size`: weight files are written in shards of
    at most this size plus an index (the weights are in the dtype the model was loaded in). `finish(folder,
    settings)`: the caller's last files, written into the staged folder before it is renamed into place (the
    pipeline's summary.json), with the settings diet_settings.json holds. `sample_prompts`: the card shows the
    dense and the pruned model's greedy answers to them (dense ones taken before any in-place cut).
    """
    from diet import __version__
    from diet.models import count_parameters

    say = say or (lambda m: None)
    out = Path(out)
    check_out_dir(out, overwrite)
    if Path(lm.path).exists() and out.resolve() == Path(lm.path).resolve():
        raise DietError(f"{out} is the base model's own folder: export somewhere else")
    from diet.results import rounded

    result = rounded(result, round_to)
    mode = resolve_mode(result, mode)
    check_serving(lm, result, mode, outtype)
    if mode == "vllm" and result.summary.get("uniform"):
        say("note: every layer keeps the same width, so the ordinary uniform folder (--export-mode uniform) already "
            "serves in vLLM as the stock architecture, and everywhere else")
    before = {"params": count_parameters(lm.model), "disk": _disk_before(lm), "dtype": model_dtype(lm.model)}
    from diet.generate import sample_answers

    if sample_prompts:
        say(f"generating {len(sample_prompts)} sample answer(s) with the dense model for the card...")
    dense_answers = sample_answers(lm.model, lm.tokenizer, sample_prompts)
    model, comp_info, evaluation, measured = _prune_and_measure(lm, result, mode, compensation, texts, evaluation,
                                                                speed, eval_settings, in_place, say)
    samples = [{"prompt": p, "dense": d, "pruned": a} for p, d, a in
               zip(sample_prompts, dense_answers, sample_answers(model, lm.tokenizer, sample_prompts), strict=True)]
    settings = {"format": "diet-export/1", "diet_version": __version__, "mode": mode, "model": lm.spec.name,
                "model_identity": lm.identity, "tasks": list(result.tasks), "method": getattr(result, "method", "diet"),
                "mask": asdict(result.settings), "kept_per_layer": [len(k) for k in result.keep()],
                "params_logical": int(result.summary["params_after"]),
                **({"outtype": outtype} if mode == "gguf" else {}), **({"round_to": round_to} if round_to > 1 else {}),
                **({"compensation": comp_info} if comp_info else {}), "dtype": before["dtype"], **(extra or {})}
    with staged_folder(out, overwrite) as tmp:
        written = _write_model(mode, model, lm, tmp, outtype, f"{lm.spec.name} pruned with DIET", max_shard_size)
        settings["params_stored"] = int(written["params_stored"])
        settings.update({k: v for k, v in written.items() if k in ("arch", "bytes", "tensor_types", "tensor_words")})
        engine, engine_error = _engine_speed(mode, tmp, speed, say)
        if engine:
            settings["engine_speed"] = engine
        if engine_error:
            settings["warnings"] = [engine_error]
        write_mask_files(tmp, result, {"model": lm.spec.name, "model_identity": lm.identity})
        atomic_write_json(tmp / "diet_settings.json", settings)
        _write_card(tmp, out, lm, result, mode, before, int(written["params_stored"]), evaluation, measured, extra,
                    engine, written.get("tensor_words"), engine_error, samples)
        if finish is not None:
            finish(tmp, settings)
    return out


def _prune_and_measure(lm, result, mode: str, compensation, texts, evaluation, speed, eval_settings,
                       in_place: bool, say: Say) -> tuple:
    """(pruned model, compensation info, evaluation, measured speed): the dense side of each asked-for comparison is
    measured before the in-place cut, so only `speed.interleaved` keeps a dense twin in memory."""
    tasks = list(result.tasks)
    want_eval = eval_settings is not None and evaluation is None
    want_speed = speed is not None and speed.repeats > 0
    dense_eval = dense_times = twin = None
    if in_place and want_eval:
        dense_eval = evaluate_one(lm.model, lm.tokenizer, "dense", tasks, eval_settings, say)
    if in_place and want_speed:
        if speed.interleaved:
            twin = _dense_twin(lm, result, compensation)
        else:
            from diet.timing import time_model

            say(f"timing the dense model's forward pass (batch {', '.join(map(str, speed.batch_sizes))})...")
            dense_times = time_model(lm.model, speed)
    dense = twin if in_place else lm.model
    model, comp_info = prune_for_export(lm, result, mode, compensation, texts, say, in_place, release=twin is None)
    if want_eval:
        dense_eval = dense_eval or evaluate_one(dense, lm.tokenizer, "dense", tasks, eval_settings, say)
        evaluation = {"dense": dense_eval, "pruned": evaluate_one(model, lm.tokenizer, "pruned", tasks,
                                                                  eval_settings, say)}
    measured = _measure_speed(dense, model, dense_times, speed, say) if want_speed else None
    return model, comp_info, evaluation, measured


def _engine_speed(mode: str, folder: Path, speed, say: Say) -> tuple[dict | None, str | None]:
    """llama.cpp tokens/s of the written GGUF for the card, where speed was asked for: (measurement, None), or
    (None, one line saying why not) when llama.cpp failed; (None, None) where it was not asked for or is not installed.

    The measurement runs in a child process (diet/isolate.py): a crash of llama.cpp's native code (its AMX kernels on
    some Xeons) costs the measurement, never the export. The file is then read back with the `gguf` reader, so the
    line can say it is valid."""
    import importlib.util

    if mode != "gguf" or speed is None or speed.repeats <= 0 or importlib.util.find_spec("llama_cpp") is None:
        return None, None
    from diet.gguf_export import GGUF_NAME, check_file
    from diet.isolate import EngineFailure, run_isolated
    from diet.llamacpp import measure_speed

    path = folder / GGUF_NAME
    say("measuring the GGUF file's speed in llama.cpp (in a child process)...")
    try:
        return run_isolated(measure_speed, str(path), repeats=speed.repeats,
                            timeout_s=300 + 120 * path.stat().st_size / 1e9), None
    except EngineFailure as e:
        check_file(path)  # raises if the file itself is broken: then the export must not be kept
        line = (f"llama.cpp {e.reason} while measuring speed; the file is written and valid ({GGUF_NAME} read back "
                "with the gguf reader); on CPUs with AMX run llama.cpp with --no-repack (the folder's README.md)")
        say(f"warning: {line}")
        return None, line


def _write_card(folder: Path, out: Path, lm, result, mode: str, before: dict, params_stored: int, evaluation,
                measured, extra: dict | None, engine_speed: dict | None = None,
                tensor_words: str | None = None, engine_error: str | None = None,
                samples: list[dict] | None = None) -> None:
    """The folder's README.md (model card) with its plots: sizes, widths, measured accuracy and speed, how to run."""
    from diet.modelcard import CardFacts, render_card, write_plots

    s, keep, unit = result.summary, result.keep(), result.unit
    plots = write_plots(folder, list(result.shape.widths), [len(k) for k in keep], s.get("votes_histogram"), unit)
    disk_before, estimated = before["disk"]
    facts = CardFacts(
        base_model=lm.spec.name, base_identity=lm.identity, mode=mode, tasks=list(result.tasks),
        mask_settings=asdict(result.settings), unit_sparsity=float(s["unit_sparsity"]),
        param_sparsity=float(s["param_sparsity"]), params_before=before["params"], params_stored=params_stored,
        params_effective=int(s["params_after"]), widths=list(result.shape.widths),
        kept_per_layer=[len(k) for k in keep], votes_histogram=s.get("votes_histogram"), disk_before=disk_before,
        disk_before_estimated=estimated, disk_after=sum(p.stat().st_size for p in _weight_files(folder)),
        evaluation=_evaluation_dict(evaluation), speed=measured, plots=plots, unit=unit,
        extra={k: v for k, v in (extra or {}).items() if k != "evaluation"}, dtype=before["dtype"],
        engine_speed=engine_speed, tensor_types=tensor_words, engine_speed_error=engine_error,
        samples=samples or [])
    (folder / "README.md").write_text(render_card(facts, folder_hint=str(out)))


def _measure_speed(dense, model, dense_times, speed, say: Say) -> dict:
    """Dense vs pruned forward speed: interleaved when both models are here, else the pruned model's times next to
    the dense times taken before the in-place prune."""
    from diet.models import input_device
    from diet.timing import measure_speed, speed_report, time_model

    if dense_times is None:
        say(f"measuring forward speed, dense vs pruned (batch {', '.join(map(str, speed.batch_sizes))})...")
        return measure_speed({"dense": dense, "pruned": model}, speed)
    say("timing the pruned model's forward pass...")
    pruned_times = time_model(model, speed, vocab=int(model.config.vocab_size))
    return speed_report({"dense": dense_times, "pruned": pruned_times}, speed, input_device(model), "sequential")


def apply_mask(lm, mask_path: str | Path, out: str | Path, mode: str | None = None, overwrite: bool = False,
               speed=None, eval_settings=None, say: Say = print, outtype: str = "f32", round_to: int = 1,
               in_place: bool = False, sample_prompts: Sequence[str] = ()) -> Path:
    """Re-apply a saved mask (a few KB) to its base model and export: the alternative to sharing a checkpoint."""
    from diet import masks as M
    from diet.adapters import model_shape

    check_out_dir(Path(out), overwrite)
    result, source = read_mask(mask_path)
    check_mask(result, source, lm, say)
    shape = model_shape(lm.model, result.unit)
    result.shape = shape
    result.summary = {**result.summary, **M.param_summary(result.mask, shape),
                      "kept_per_layer": M.kept_per_layer(result.mask).tolist()}
    return export_model(lm, result, out, mode=mode, overwrite=overwrite, speed=speed, eval_settings=eval_settings,
                        say=say, outtype=outtype, round_to=round_to, in_place=in_place, sample_prompts=sample_prompts,
                        extra={"mask_source": {"path": str(Path(mask_path).resolve()), **source}})
