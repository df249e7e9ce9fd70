"""Write a pruned model folder that loads elsewhere, and re-apply a saved mask to its base model.

Modes (the user chooses; `diet/export/modes.py` maps each to its writer, `diet/export/protocol.py` says what a
writer does):
* `uniform`, `padded`, `heterogeneous` — Hugging Face folders (`diet/export/hf.py`; the heterogeneous one carries
  `diet/export/modeling_diet.py`).
* `gguf` — one `model.gguf` llama.cpp runs natively: per-layer widths as its `deci` architecture, uniform widths in
  the family's own (`diet/export/gguf/`).
* `vllm` — a folder vLLM serves as `DeciLMForCausalLM` with exact per-layer widths (`diet/export/vllm/`).

The rest of an export is the same for every mode and is here: the dense side of each comparison, the cut
(`diet/export/cut.py`), the writer, then the mask files (`diet/export/maskfile.py`), diet_settings.json, the speed
measurements (`diet/measure.py`; the writers time nothing) and the model card (`diet/export/card.py`).

Why a temporary folder renamed into place: an interrupted export must leave nothing that looks finished. Why refuse
a non-empty folder: overwriting someone's checkpoint by accident is the worst kind of data loss. Only safetensors are
written (no pickles). Every folder also holds the tokenizer, the mask (JSON + safetensors), the settings, plots and a
model card with measured sizes and speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from diet.cache import atomic_write_json
from diet.errors import DietError
from diet.export.card import base_weight_bytes, write_card
from diet.export.cut import dense_twin, prune_for_export
from diet.export.maskfile import check_mask, read_mask, write_mask_files
from diet.export.modes import WRITERS, resolve_mode
from diet.export.protocol import Options, Say
from diet.folders import check_out_dir, staged_folder
from diet.measure import dense_vs_pruned, engine_speed, time_model


def evaluate_one(model, tokenizer, label: str, tasks: list[str], eval_settings, say: Say) -> list:
    """One model's scores on the mask's own tasks (the dense side is scored before an in-place prune)."""
    from diet.evaluate import evaluate_tasks
    from diet.tasks import get_task

    say(f"evaluating the {label} model on {', '.join(tasks)}...")
    return evaluate_tasks(model, tokenizer, [get_task(t) for t in tasks], eval_settings)


def export_model(lm, result, out: str | Path, mode: str | None = None, overwrite: bool = False,
                 extra: dict | None = None, evaluation=None, speed=None, eval_settings=None,
                 say: Say | None = None, outtype: str = "f32", round_to: int = 1, compensation=None,
                 texts: list[str] | None = None, in_place: bool = False, max_shard_size: str = "2GB",
                 finish: Callable[[Path, dict], None] | None = None, sample_prompts: Sequence[str] = ()) -> Path:
    """Prune `lm.model` per `result` (a copy, or itself with `in_place`) and write the export folder atomically.

    mode=None picks `uniform` when every layer keeps the same count, else `padded`. `evaluation`: an optional list
    of TaskResult (dicts) of the pruned model, or {"dense": [...], "pruned": [...]}, shown in the card; or
    `eval_settings` (a `diet.evaluate.EvalSettings`) to evaluate dense and pruned on the mask's tasks here.
    `speed`: a `diet.measure.SpeedSettings` to measure dense vs pruned forward speed for the card (None: skipped).
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
    from diet.models import count_parameters, model_dtype

    say = say or (lambda m: None)
    out = Path(out)
    check_out_dir(out, overwrite)
    if Path(lm.path).exists() and out.resolve() == Path(lm.path).resolve():
        raise DietError(f"{out} is the base model's own folder: export somewhere else")
    from diet.results import rounded

    result = rounded(result, round_to)
    mode = resolve_mode(result, mode)
    writer = WRITERS[mode]
    options = Options(outtype=outtype, max_shard_size=max_shard_size, name=f"{lm.spec.name} pruned with DIET")
    writer.check(lm, result, options, say)
    before = {"params": count_parameters(lm.model), "disk": base_weight_bytes(lm), "dtype": model_dtype(lm.model)}
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
                **{k: getattr(options, k) for k in writer.records}, **({"round_to": round_to} if round_to > 1 else {}),
                **({"compensation": comp_info} if comp_info else {}), "dtype": before["dtype"], **(extra or {})}
    with staged_folder(out, overwrite) as tmp:
        written = writer.write(model, lm, tmp, options)
        settings["params_stored"] = int(written["params_stored"])
        settings.update({k: v for k, v in written.items() if k in ("arch", "bytes", "tensor_types", "tensor_words")})
        engine, engine_error = (engine_speed(tmp / writer.engine_file, speed, say) if writer.engine_file
                                else (None, None))
        if engine:
            settings["engine_speed"] = engine
        if engine_error:
            settings["warnings"] = [engine_error]
        write_mask_files(tmp, result, {"model": lm.spec.name, "model_identity": lm.identity})
        atomic_write_json(tmp / "diet_settings.json", settings)
        write_card(tmp, out, lm, result, mode, before, int(written["params_stored"]), evaluation, measured, extra,
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
            twin = dense_twin(lm, result, compensation)
        else:
            say(f"timing the dense model's forward pass (batch {', '.join(map(str, speed.batch_sizes))})...")
            dense_times = time_model(lm.model, speed)
    dense = twin if in_place else lm.model
    model, comp_info = prune_for_export(lm, result, mode, compensation, texts, say, in_place, release=twin is None)
    if want_eval:
        dense_eval = dense_eval or evaluate_one(dense, lm.tokenizer, "dense", tasks, eval_settings, say)
        evaluation = {"dense": dense_eval, "pruned": evaluate_one(model, lm.tokenizer, "pruned", tasks,
                                                                  eval_settings, say)}
    measured = dense_vs_pruned(dense, model, dense_times, speed, say) if want_speed else None
    return model, comp_info, evaluation, measured


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
