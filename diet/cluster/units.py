"""What one unit computes on a worker: the same functions the in-process path calls, on the worker's model.

Why the very same calls: a cluster run must give the in-process numbers exactly (tests/test_cluster.py compares
statistics bit for bit and tables cell for cell), so each unit calls what the in-process path calls, with the same
settings (batch sizes included), and returns the raw result; the driver stores it under the in-process key.

Each function is `(lm, memo, *args)`: `lm` is the worker's `LoadedModel` (dense, never modified), `memo` a dict the
worker keeps between units. A sweep cell's unit is `diet.sweep.sweep_cell_unit`, beside the code it runs.
"""

from __future__ import annotations

import time


def profile_unit(lm, memo: dict, texts: list[str], settings) -> tuple[dict, dict, float]:
    """One task's unit statistics: (tensors, meta, seconds) as `diet.profile.profile_texts` makes them."""
    from diet.profile import profile_texts

    t0 = time.perf_counter()
    stats = profile_texts(lm.model, lm.tokenizer, texts, settings)
    return stats.tensors(), stats.meta, time.perf_counter() - t0


def eval_unit(lm, memo: dict, task, settings):
    """One (model, task) evaluation: `diet.evaluate.evaluate_task`'s TaskResult (per-item logliks included)."""
    from diet.evaluate import evaluate_task

    return evaluate_task(lm.model, lm.tokenizer, task, settings)
