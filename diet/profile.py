"""Profile activation statistics: fp32 running sums per prunable unit, streamed, never storing activations.

Why running sums: Σ|x|, Σx², Σx and the token count are enough for every score we offer (mean |x|, RMS, Wanda-sp,
FLAP's variance), so one pass serves every method and every sparsity. One per-sequence sum rides along: Σ over
sequences of (mean |x| over that sequence's tokens)², which is Minitron's "mean over the sequence, L2 over
samples". Peers that store activations run out of memory; sums cost O(layers × width) whatever the number of tokens.

Why two halves: texts alternate between half 0 and half 1, and each half keeps its own sums. Their sum is the full
statistic; their difference gives each task's split-half mask overlap — the noise ceiling any task-overlap figure
must be read against.

Why only the decoder body runs: no score needs the logits, and the lm_head is a large share of a small model's cost.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from diet.adapters import get_unit, model_shape
from diet.errors import Cancelled, DietError
from diet.models import input_device
from diet.prune import check_dense
from diet.settings import ProfileSettings, sha256_of
from diet.shape import ModelShape

Progress = Callable[[int, int], None]  # (texts done, texts total)


@dataclass
class Stats:
    """Per-unit sums for one (model, task). Arrays are (2 halves, layers, width); count is (2,) tokens.

    `width` is the number of *profiled channels*: MLP channels for the MLP unit, o_proj input channels (heads ×
    head_dim) for the head unit, which the methods pool into heads.
    """

    abs_sum: np.ndarray
    sq_sum: np.ndarray
    sum: np.ndarray
    count: np.ndarray
    meta: dict = field(default_factory=dict)  # model identity, task, shape (widths, params), settings
    seq_sq_sum: np.ndarray | None = None  # (2, L, width): Σ over sequences of (mean |x| over the sequence)²
    seqs: np.ndarray | None = None  # (2,) number of sequences per half

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"abs_sum": self.abs_sum, "sq_sum": self.sq_sum, "sum": self.sum, "count": self.count}
        if self.seq_sq_sum is not None:
            out.update(seq_sq_sum=self.seq_sq_sum, seqs=self.seqs)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], meta: dict) -> Stats:
        """Rebuild from `tensors()` output (what the cache stores)."""
        extra = {k: tensors[k] for k in ("seq_sq_sum", "seqs") if k in tensors}
        return cls(**{k: tensors[k] for k in ("abs_sum", "sq_sum", "sum", "count")}, meta=meta, **extra)

    @property
    def shape(self) -> ModelShape | None:
        """The model shape stored with the statistics (a plain dict in `meta`, so the cache stays JSON)."""
        d = self.meta.get("shape")
        return None if d is None else ModelShape.from_dict(d)

    def half(self, h: int | None) -> Stats:
        """Statistics of one half (0 or 1), or of everything (None), keeping the (1, L, I) layout."""
        if h is None:
            pick = lambda a: a.sum(axis=0, keepdims=True)  # noqa: E731
        else:
            pick = lambda a: a[h : h + 1]  # noqa: E731
        seq = None if self.seq_sq_sum is None else pick(self.seq_sq_sum)
        seqs = None if self.seqs is None else pick(self.seqs)
        return Stats(pick(self.abs_sum), pick(self.sq_sum), pick(self.sum), pick(self.count), self.meta, seq, seqs)

    def mean_abs(self) -> np.ndarray:
        """(L, I) mean |x| over all non-padding tokens."""
        return self.abs_sum.sum(0).astype(np.float64) / max(float(self.count.sum()), 1.0)

    def rms(self) -> np.ndarray:
        return np.sqrt(self.sq_sum.sum(0).astype(np.float64) / max(float(self.count.sum()), 1.0))

    def variance(self) -> np.ndarray:
        n = max(float(self.count.sum()), 1.0)
        mean = self.sum.sum(0).astype(np.float64) / n
        return np.maximum(self.sq_sum.sum(0).astype(np.float64) / n - mean**2, 0.0)

    def mean(self) -> np.ndarray:
        """(L, I) mean x (signed): FLAP's bias compensation adds W[:, pruned] · mean(x[pruned])."""
        return self.sum.sum(0).astype(np.float64) / max(float(self.count.sum()), 1.0)

    def seq_l2(self) -> np.ndarray:
        """(L, I) Minitron's score: sqrt(mean over sequences of (mean |x| over the sequence)²)."""
        if self.seq_sq_sum is None:
            raise DietError("these statistics have no per-sequence sums (an older cache format): profile again")
        return np.sqrt(self.seq_sq_sum.sum(0).astype(np.float64) / max(float(self.seqs.sum()), 1.0))


def choose_texts(pool: list[str] | tuple[str, ...], settings: ProfileSettings) -> list[str]:
    """The seeded choice of calibration texts: same pool + seed + N gives the same texts in the same order."""
    pool = [t for t in pool if t.strip()]
    if not pool:
        raise DietError("this task has no calibration texts")
    n = min(settings.samples, len(pool))
    return random.Random(settings.seed).sample(pool, n)


def texts_hash(texts: list[str]) -> str:
    return sha256_of(texts)


class HalfSums:
    """Base of every hook set that sums activations per half: `set_batch` gives each token of the next batch the
    weight 1 in its text's half (0 for padding), so every hook adds `weights @ x` — padding never counts.

    Subclasses register their hooks and own their sums; `run_batches` drives any of them through the same loop.
    """

    weights: torch.Tensor | None = None  # (2, B*T): 1 where a token is real and in that half
    handles: list
    count: torch.Tensor  # (2,) float64 tokens per half

    def set_batch(self, attention_mask: torch.Tensor, halves: torch.Tensor) -> None:
        m = attention_mask.float()  # (B, T)
        self.weights = torch.stack([m * (halves == 0)[:, None], m * (halves == 1)[:, None]]).reshape(2, -1)
        self.count += self.weights.sum(1).double().cpu()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _Accumulator(HalfSums):
    """Forward pre-hooks that add one batch's per-channel sums, per half, into fp32 buffers."""

    def __init__(self, model: torch.nn.Module, unit: str):
        self.unit = get_unit(model, unit)
        layers = self.unit.family.layers(model)
        widths = {self.unit.stat_width(layer) for layer in layers}
        if len(widths) != 1:
            raise DietError("profiling a model whose layers have different widths is not supported")
        self.width = widths.pop()
        # Per layer, on the device that layer runs on (a device map may spread layers over GPUs, CPU and disk):
        # (abs_sum, sq_sum, sum, seq_sq_sum), each (2, width) fp32, created at the layer's first batch and
        # gathered to the CPU once at the end (`gathered`), never moved per batch.
        self.layer_sums: list[tuple[torch.Tensor, ...] | None] = [None] * len(layers)
        self.count = torch.zeros(2, dtype=torch.float64)
        self.seqs = torch.zeros(2, dtype=torch.float64)
        self.seq_weights: torch.Tensor | None = None  # (B, B*T): 1/len(sequence) on that sequence's real tokens
        self.seq_halves: torch.Tensor | None = None  # (2, B): one-hot half of each sequence
        self.handles = [self.unit.hook_module(layer).register_forward_pre_hook(self._hook(i))
                        for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, args):
            x = args[0]
            x = x.reshape(-1, x.shape[-1]).float()  # (B*T, I)
            if self.layer_sums[i] is None:
                self.layer_sums[i] = tuple(torch.zeros(2, x.shape[-1], dtype=torch.float32, device=x.device)
                                           for _ in range(4))
            abs_sum, sq_sum, total, seq_sq_sum = self.layer_sums[i]
            w = self.weights.to(x.device)
            ax = x.abs()
            abs_sum += w @ ax
            sq_sum += w @ (x * x)
            total += w @ x
            seq_mean = self.seq_weights.to(x.device) @ ax  # (B, I) mean |x| of each sequence
            seq_sq_sum += self.seq_halves.to(x.device) @ (seq_mean * seq_mean)

        return hook

    def gathered(self) -> list[np.ndarray]:
        """[abs_sum, sq_sum, sum, seq_sq_sum], each (2, L, width) on the CPU (zeros for a layer never reached)."""
        out = []
        for k in range(4):
            rows = [s[k].cpu() if s is not None else torch.zeros(2, self.width) for s in self.layer_sums]
            out.append(torch.stack(rows, dim=1).numpy())
        return out

    def set_batch(self, attention_mask: torch.Tensor, halves: torch.Tensor) -> None:
        super().set_batch(attention_mask, halves)
        m = attention_mask.float()
        B, T = m.shape
        per_seq = m / m.sum(1, keepdim=True).clamp(min=1.0)  # (B, T)
        self.seq_weights = (torch.eye(B)[:, :, None] * per_seq[None]).reshape(B, B * T)
        self.seq_halves = torch.stack([(halves == 0), (halves == 1)]).float() * (m.sum(1) > 0)[None]
        self.seqs += self.seq_halves.sum(1).double()


def run_batches(model: torch.nn.Module, tokenizer, texts: list[str], settings: ProfileSettings, sums: HalfSums,
                progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> None:
    """The one profiling loop: `texts` through the decoder body in batches, `sums`' hooks collecting; hooks removed.

    Texts are sorted by length so batches carry little padding; padding tokens never reach the sums (they get
    weight 0); texts alternate between the two halves by their index. `should_stop` is polled between batches:
    returning True raises `Cancelled`.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    body = model.base_model  # the decoder without the lm_head
    device = input_device(model)
    done = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(order), settings.batch_size):
                if should_stop is not None and should_stop():
                    raise Cancelled("profiling cancelled; nothing was written")
                idx = order[start : start + settings.batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                max_length=settings.max_length)
                sums.set_batch(enc["attention_mask"], torch.tensor([i % 2 for i in idx]))
                body(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                     use_cache=False)
                done += len(idx)
                if progress is not None:
                    progress(done, len(texts))
    finally:
        sums.close()


def profile_texts(model: torch.nn.Module, tokenizer, texts: list[str], settings: ProfileSettings,
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> Stats:
    """Run `texts` through the model's decoder body and return the summed unit statistics."""
    check_dense(model)
    acc = _Accumulator(model, settings.unit)
    run_batches(model, tokenizer, texts, settings, acc, progress, should_stop)
    abs_sum, sq_sum, total, seq_sq_sum = acc.gathered()
    return Stats(abs_sum=abs_sum, sq_sum=sq_sum, sum=total, count=acc.count.numpy().astype(np.float64),
                 meta={"shape": model_shape(model, settings.unit).to_dict()}, seq_sq_sum=seq_sq_sum,
                 seqs=acc.seqs.numpy().astype(np.float64))
