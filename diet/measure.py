"""Every speed measurement: torch forward passes of a dense and a pruned model side by side, and a GGUF file's
tokens/s in llama.cpp — what the model card reports. The writers in `diet/export/` time nothing; the export calls
this module after writing.

Why one module that imports no torch at its top (torch is imported inside the torch functions): the llama.cpp
measurement, `gguf_speed`, runs in a spawned child process (`diet.isolate.run_isolated`), which imports this
module to find it; that child must start in a moment, and needs neither torch nor the export package. Opening a
file in llama.cpp (the AMX workaround) stays in `diet/llamacpp.py`, the loader `diet generate` uses too; it is as
cheap to import (llama_cpp itself is imported on first use).

Why interleaved medians for torch: on a shared machine the load changes from second to second. Timing both models in
alternation (A B, then B A, ...) and taking the median of each exposes them to the same conditions, so the ratio is
meaningful even when the absolute numbers drift. A parameter count alone says nothing about speed (a zero-padded
model has the dense shapes; small matrices may not run faster at batch 1).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diet.llamacpp import module, open_llama

if TYPE_CHECKING:
    import torch

Say = Callable[[str], None]


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
    import torch

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
    import torch

    from diet.models import input_device

    gen = torch.Generator().manual_seed(settings.seed)
    device = input_device(model)
    return [torch.randint(0, vocab, (b, settings.seq_len), generator=gen).to(device) for b in settings.batch_sizes]


def time_model(model: torch.nn.Module, settings: SpeedSettings = SpeedSettings(), vocab: int | None = None) -> dict:
    """One model's forward times per batch size ({batch: [seconds, ...]}): half of a sequential comparison.

    The ids are the ones `measure_speed` would use (same seed, vocabulary = `vocab` or the model's)."""
    import torch

    vocab = vocab or int(model.config.vocab_size)
    out = {}
    with torch.inference_mode():
        for batch, ids in zip(settings.batch_sizes, _batch_ids(model, settings, vocab), strict=True):
            for _ in range(settings.warmup):
                _forward_seconds(model, ids)
            out[batch] = [_forward_seconds(model, ids) for _ in range(settings.repeats)]
    return out


def speed_report(times: dict[str, dict], settings: SpeedSettings, device: torch.device, order: str) -> dict:
    """The `measure_speed` dict from per-model times ({name: {batch: [seconds]}}); `order` says how they were
    taken ("interleaved" or "sequential": the dense model first, then the pruned one, minutes apart)."""
    import torch

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


def measure_speed(models: dict[str, torch.nn.Module], settings: SpeedSettings = SpeedSettings()) -> dict:
    """Median forward time of each model per batch size, measured interleaved.

    Returns {"device", "seq_len", "repeats", "rows": [{"batch", "<name>_ms", "<name>_tokens_per_s", ...,
    "speedup"}]} where speedup = first model's time / last model's time (dense / pruned when called that way).
    """
    import torch

    names = list(models)
    first = next(iter(models.values()))
    vocab = min(int(m.config.vocab_size) for m in models.values())
    all_ids = _batch_ids(first, settings, vocab)
    times: dict[str, dict] = {n: {} for n in names}
    with torch.inference_mode():
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
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def dense_vs_pruned(dense, model, dense_times: dict | None, speed: SpeedSettings, say: Say) -> dict:
    """Dense vs pruned forward speed: interleaved when both models are here, else the pruned model's times next to
    the dense times taken before the in-place prune."""
    from diet.models import input_device

    if dense_times is None:
        say(f"measuring forward speed, dense vs pruned (batch {', '.join(map(str, speed.batch_sizes))})...")
        return measure_speed({"dense": dense, "pruned": model}, speed)
    say("timing the pruned model's forward pass...")
    pruned_times = time_model(model, speed, vocab=int(model.config.vocab_size))
    return speed_report({"dense": dense_times, "pruned": pruned_times}, speed, input_device(model), "sequential")


# ------------------------------------------------------------------------------------------------ llama.cpp


def gguf_speed(path: str | Path, repeats: int = 3, n_prompt: int = 128, n_gen: int = 32,
               threads: int | None = None) -> dict:
    """llama.cpp tokens/s of a GGUF file (prompt processing in one batch, then greedy generation one token at a
    time), median of `repeats`. Run it through `diet.isolate.run_isolated`: it loads native code."""
    threads = threads or min(8, os.cpu_count() or 1)
    n_ctx = n_prompt + n_gen + 8  # n_batch = n_ctx: the prompt is one batch, and the logits keep a row per position
    llm = open_llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False,
                     seed=0)
    prompt = list(range(1000, 1000 + n_prompt))  # token ids; the content does not change the cost
    llm.reset()
    llm.eval(prompt[:16])  # warm-up: allocations and first kernels
    runs = []
    for _ in range(max(1, repeats)):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        runs.append((n_prompt / (t1 - t0), n_gen / (time.perf_counter() - t1)))
    return {"engine": f"llama.cpp (llama-cpp-python {module().__version__})", "threads": threads,
            "file": Path(path).name, "n_prompt": n_prompt, "n_gen": n_gen, "repeats": max(1, repeats),
            "repack": bool(llm.model_params.use_extra_bufts),
            "prompt_tokens_per_s": statistics.median(r[0] for r in runs),
            "gen_tokens_per_s": statistics.median(r[1] for r in runs)}


def engine_speed(path: Path, speed: SpeedSettings | None, say: Say) -> tuple[dict | None, str | None]:
    """llama.cpp tokens/s of the written GGUF file at `path` for the card, where speed was asked for: (measurement,
    None), or (None, one line saying why not) when llama.cpp failed; (None, None) where it was not asked for or
    llama.cpp is not installed.

    The measurement runs in a child process (diet/isolate.py): a crash of llama.cpp's native code (its AMX kernels on
    some Xeons) costs the measurement, never the export. The file is then read back with the `gguf` reader, so the
    line can say it is valid."""
    import importlib.util

    if speed is None or speed.repeats <= 0 or importlib.util.find_spec("llama_cpp") is None:
        return None, None
    from diet.export.gguf.writer import check_file
    from diet.isolate import EngineFailure, run_isolated

    say("measuring the GGUF file's speed in llama.cpp (in a child process)...")
    try:
        return run_isolated(gguf_speed, str(path), repeats=speed.repeats,
                            timeout_s=300 + 120 * path.stat().st_size / 1e9), None
    except EngineFailure as e:
        check_file(path)  # raises if the file itself is broken: then the export must not be kept
        line = (f"llama.cpp {e.reason} while measuring speed; the file is written and valid ({path.name} read back "
                "with the gguf reader); on CPUs with AMX run llama.cpp with --no-repack (the folder's README.md)")
        say(f"warning: {line}")
        return None, line
