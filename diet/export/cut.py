"""The model an export writes: `lm.model` cut to a mode's shape (by its writer), compensated first when asked.

Why apart from the writers: cutting comes before the pruned model is evaluated and timed, and what surrounds it
(copies that share tensors, the in-place cut that needs no second copy, the compensation fit) is the same for
every mode; only the shape is the writer's (`Writer.cut`).
"""

from __future__ import annotations

import copy

import numpy as np

from diet.errors import DietError
from diet.export.modes import writer_for
from diet.export.protocol import Say


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
    writer = writer_for(mode)
    return writer.cut(model if in_place else shared_copy(model), keep, unit, release)


def dense_twin(lm, result, compensation):
    """The dense model kept for interleaved timing next to an in-place prune. It shares tensors with the loaded
    model unless a compensation will write into weights in place (then a full copy)."""
    if compensation is not None or getattr(result, "compensation", None) is not None:
        return copy.deepcopy(lm.model)
    return shared_copy(lm.model)


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
        if not writer_for(mode).takes_bias:
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
