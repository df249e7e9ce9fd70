"""Measured forward speed of a dense and a pruned model, side by side — what the model card reports.

Why interleaved medians: on a shared machine the load changes from second to second. Timing both models in
alternation (A B, then B A, ...) and taking the median of each exposes them to the same conditions, so the ratio is
meaningful even when the absolute numbers drift. A parameter count alone says nothing about speed (a zero-padded
model has the dense shapes; small matrices may not run faster at batch 1).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpeedSettings:
    """How the forward speed is measured."""

    batch_sizes: tuple[int, ...] = (1, 8)  # sequences per forward pass
    seq_len: int = 64  # tokens per sequence (random ids, no padding)
    repeats: int = 3  # timed forward passes per model and batch size; the median is reported
    warmup: int = 1  # untimed passes per model first (allocations, kernel selection)
    seed: int = 0  # seed of the random token ids
    interleaved: bool = False  # export: keep a dense twin to time both in alternation (costs the pruned weights'
    #                            bytes again); False = time the dense model, prune it in place, time the pruned one


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_seconds(model: torch.nn.Module, ids: torch.Tensor) -> float:
    device = ids.device
    _sync(device)
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    _sync(device)
    return time.perf_counter() - t0


def _batch_ids(model: torch.nn.Module, settings: SpeedSettings, vocab: int) -> list[torch.Tensor]:
    from diet.models import input_device

    gen = torch.Generator().manual_seed(settings.seed)
    device = input_device(model)
    return [torch.randint(0, vocab, (b, settings.seq_len), generator=gen).to(device) for b in settings.batch_sizes]


@torch.inference_mode()
def time_model(model: torch.nn.Module, settings: SpeedSettings = SpeedSettings(), vocab: int | None = None) -> dict:
    """One model's forward times per batch size ({batch: [seconds, ...]}): half of a sequential comparison.

    The ids are the ones `measure_speed` would use (same seed, vocabulary = `vocab` or the model's)."""
    vocab = vocab or int(model.config.vocab_size)
    out = {}
    for batch, ids in zip(settings.batch_sizes, _batch_ids(model, settings, vocab), strict=True):
        for _ in range(settings.warmup):
            _forward_seconds(model, ids)
        out[batch] = [_forward_seconds(model, ids) for _ in range(settings.repeats)]
    return out


def speed_report(times: dict[str, dict], settings: SpeedSettings, device: torch.device, order: str) -> dict:
    """The `measure_speed` dict from per-model times ({name: {batch: [seconds]}}); `order` says how they were
    taken ("interleaved" or "sequential": the dense model first, then the pruned one, minutes apart)."""
    names = list(times)
    rows = []
    for batch in settings.batch_sizes:
        row: dict = {"batch": batch}
        for n in names:
            med = statistics.median(times[n][batch])
            row[f"{n}_ms"] = round(1000 * med, 2)
            row[f"{n}_tokens_per_s"] = round(batch * settings.seq_len / med, 1)
        row["speedup"] = round(row[f"{names[0]}_ms"] / row[f"{names[-1]}_ms"], 3)
        rows.append(row)
    return {"device": _device_name(device), "threads": torch.get_num_threads(), "seq_len": settings.seq_len,
            "repeats": settings.repeats, "names": names, "rows": rows, "order": order}


@torch.inference_mode()
def measure_speed(models: dict[str, torch.nn.Module], settings: SpeedSettings = SpeedSettings()) -> dict:
    """Median forward time of each model per batch size, measured interleaved.

    Returns {"device", "seq_len", "repeats", "rows": [{"batch", "<name>_ms", "<name>_tokens_per_s", ...,
    "speedup"}]} where speedup = first model's time / last model's time (dense / pruned when called that way).
    """
    names = list(models)
    first = next(iter(models.values()))
    vocab = min(int(m.config.vocab_size) for m in models.values())
    all_ids = _batch_ids(first, settings, vocab)
    times: dict[str, dict] = {n: {} for n in names}
    for batch, ids in zip(settings.batch_sizes, all_ids, strict=True):
        for m in models.values():
            for _ in range(settings.warmup):
                _forward_seconds(m, ids)
        for n in names:
            times[n][batch] = []
        for r in range(settings.repeats):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                times[n][batch].append(_forward_seconds(models[n], ids))
    return speed_report(times, settings, all_ids[0].device, "interleaved")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
