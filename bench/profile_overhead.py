"""Profiling overhead (default: the embedded SmolLM2-135M): profile time ÷ plain forward time over the same batches.

Measured side by side in one run, interleaved (these machines are noisy): each repeat runs the three variants in a
rotating order over identical batches, and the medians are compared.
  plain-full : model(**batch)               — what "a plain forward" usually means (includes the lm_head)
  plain-body : model.base_model(**batch)    — the decoder only, as profiling runs it
  profile    : diet.profile.profile_texts   — decoder + fp32 running-sum hooks on every down_proj
Peak memory: the RSS (or CUDA) high-water mark above the level before each variant, sampled every millisecond.

    python bench/profile_overhead.py [--samples 64] [--batch-size 8] [--max-length 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psutil
import torch

from diet.models import load_model
from diet.profile import choose_texts, profile_texts
from diet.settings import ModelSpec, ProfileSettings
from diet.tasks import get_task


class PeakMemory:
    """High-water mark of process RSS (CPU) or CUDA allocated memory above the starting level, in MiB."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak, self._stop = cuda, 0, threading.Event()

    def _now(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else psutil.Process().memory_info().rss

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.start = self._now()
        self.peak = self.start
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        if self.cuda:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        self.mib = (self.peak - self.start) / 2**20


def plain(model, tok, texts, settings: ProfileSettings, full: bool) -> None:
    """The same loop as profile_texts (same sort, batches, tokenisation) without any hook."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    run = model if full else model.base_model
    dev = next(model.parameters()).device
    with torch.inference_mode():
        for s in range(0, len(order), settings.batch_size):
            enc = tok([texts[i] for i in order[s : s + settings.batch_size]], return_tensors="pt", padding=True,
                      truncation=True, max_length=settings.max_length)
            run(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev), use_cache=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", default="boolq_like,physical", help="tasks whose calibration texts are used")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="smollm2-135m", help="embedded name, hub id or folder")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    lm = load_model(ModelSpec(name=a.model, device=a.device, dtype=a.dtype))
    settings = ProfileSettings(samples=a.samples, batch_size=a.batch_size, max_length=a.max_length)
    texts = [t for name in a.tasks.split(",") for t in choose_texts(get_task(name).calibration, settings)]
    ntok = sum(len(x) for x in lm.tokenizer(texts, truncation=True, max_length=a.max_length)["input_ids"])
    cuda = next(lm.model.parameters()).is_cuda
    variants = {
        "plain-full": lambda: plain(lm.model, lm.tokenizer, texts, settings, full=True),
        "plain-body": lambda: plain(lm.model, lm.tokenizer, texts, settings, full=False),
        "profile": lambda: profile_texts(lm.model, lm.tokenizer, texts, settings),
    }
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    mem: dict[str, float] = {n: 0.0 for n in names}
    variants["profile"]()  # warm-up (allocator, kernels)
    for r in range(a.repeats):
        for n in names[r % 3:] + names[: r % 3]:  # rotate the order every repeat
            with PeakMemory(cuda) as pm:
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                variants[n]()
                if cuda:
                    torch.cuda.synchronize()
                times[n].append(time.perf_counter() - t0)
            mem[n] = max(mem[n], pm.mib)
    med = {n: statistics.median(v) for n, v in times.items()}
    dev = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{a.model} ({a.dtype}) on {dev}: {len(texts)} texts, {ntok} tokens, batch {a.batch_size}, "
          f"max length {a.max_length}, {a.repeats} interleaved repeats")
    for n in names:
        print(f"  {n:11s} median {med[n]:7.3f} s  ({ntok / med[n]:8.0f} tok/s)  peak +{mem[n]:7.1f} MiB")
    print(f"profile / plain-full = {med['profile'] / med['plain-full']:.3f}   (target <= 1.05)")
    print(f"profile / plain-body = {med['profile'] / med['plain-body']:.3f}   (hook cost alone)")


if __name__ == "__main__":
    main()
