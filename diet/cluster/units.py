"""What one unit computes on a worker: the same functions the in-process path calls, on the worker's model.

Why the very same calls: a cluster run must give the in-process numbers exactly (tests/test_cluster.py compares
statistics bit for bit and tables cell for cell), so each unit calls what the in-process path calls, with the same
settings (batch sizes included), and returns the raw result; the driver stores it under the in-process key.

Each function is `(lm, memo, *args)`: `lm` is the worker's `LoadedModel` (dense, never modified: sweep cells prune
a copy), `memo` a dict the worker keeps between units (the weight norms every sweep cell of a model shares).
"""

from __future__ import annotations

import time
from dataclasses import replace


def profile_unit(lm, memo: dict, texts: list[str], settings) -> tuple[dict, dict, float]:
    """One task's unit statistics: (tensors, meta, seconds) as `diet.profile.profile_texts` makes them."""
    from diet.profile import profile_texts

    t0 = time.perf_counter()
    stats = profile_texts(lm.model, lm.tokenizer, texts, settings)
    return stats.tensors(), stats.meta, time.perf_counter() - t0


def sweep_cell_unit(lm, memo: dict, si, cell: tuple, mask, ms, unit: str, missing: list[str]) -> list[dict]:
    """One sweep cell (one pruned model) evaluated on the evaluation tasks named in `missing`: their rows.

    `si` is the driver's `diet.sweep.SweepInputs` without the model's weight norms and shape (the driver holds no
    model); they are computed here once per worker, from the same dense weights the in-process path reads."""
    from diet.adapters import model_shape
    from diet.methods import weight_stats
    from diet.sweep import evaluate_cell

    if ("weights", unit) not in memo:
        memo[("weights", unit)] = (weight_stats(lm.model, unit), model_shape(lm.model, unit))
    weights, shape = memo[("weights", unit)]
    si = replace(si, inputs=replace(si.inputs, weights=weights, shape=shape))
    hits = {t.name: (None if t.name in missing else {}) for t in si.eval_tasks}
    rows = evaluate_cell(lm, si, cell, mask, ms, unit, hits, {}, None)
    return [r for r, t in zip(rows, si.eval_tasks, strict=True) if t.name in missing]


def eval_unit(lm, memo: dict, task, settings):
    """One (model, task) evaluation: `diet.evaluate.evaluate_task`'s TaskResult (per-item logliks included)."""
    from diet.evaluate import evaluate_task

    return evaluate_task(lm.model, lm.tokenizer, task, settings)
