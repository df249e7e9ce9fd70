"""Learned DISP index sets: the paper's hypernetwork (arXiv 2410.11988, §3.3), trained against the frozen model.

What is learned: one logit per prunable dim of every layer's five index sets. A small bidirectional GRU reads a
fixed sequence of random vectors (one per index set, layer-major: attn_in, attn_out, mlp_in, mlp_mid, mlp_out of
layer 0, then layer 1, …) and a linear head per index set turns each GRU output into that set's logits — so the
sets of neighbouring layers are decided together, with few trainable parameters.

How: each step samples a Gumbel-sigmoid (binary concrete) relaxation of every mask, rounds it to a hard 0/1 mask
with a straight-through gradient, runs the frozen model with the masks multiplied in at the five positions (the same
function as `diet.disp.structure.zero_disp`, hence as the sliced model), and minimises

    LM loss + λ · |log(kept block parameters / total block parameters) − log p|

(the paper's log-ratio penalty: log(r/p) above the target, log(p/r) below). Only the hypernetwork trains.

Final index sets: the noise-free masks (logit + offset > 0), at least one dim per set; by default (our choice) with
one common shift of all logits that brings the kept fraction closest to p, since after a short run many logits sit
near the threshold and the noise-free masks can miss p by a few points. Settings are the paper's for
LLaMA-2-7B by default (λ=16, AdamW lr 1e-3, 10,000 steps of 2048 tokens); a CPU run on SmolLM2-135M uses fewer,
shorter steps and a higher lr (see docs/disp.md). Task-aware: train on the chosen tasks' calibration texts.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diet.adapters import block_parts
from diet.disp.structure import POSITIONS, DispShape, block_params, disp_layers, disp_shape, param_summary
from diet.errors import DietError
from diet.tasks import resolve_task


@dataclass(frozen=True)
class LearnSettings:
    """Hypernetwork training. Defaults are the paper's LLaMA-2-7B settings (a GPU run); shrink steps/tokens on CPU."""

    p: float = 0.7  # target kept fraction of *block* parameters (the paper's p; 0.48 ≈ "50%" of LLaMA-2-7B)
    lam: float = 16.0  # λ, weight of the log-ratio budget penalty (paper: 16)
    lr: float = 1e-3  # AdamW learning rate of the hypernetwork (paper: 1e-3)
    weight_decay: float = 0.05  # AdamW weight decay (the reference code's 0.05)
    steps: int = 10_000  # optimisation steps (paper: 10,000)
    tokens_per_step: int = 2048  # tokens per step (paper: one 2048-token block per step and GPU)
    seq_len: int = 2048  # tokens per sequence; a step holds tokens_per_step // seq_len sequences
    temperature: float = 0.4  # Gumbel-sigmoid temperature (reference code: 0.4)
    offset: float = 3.0  # added to every logit, so training starts with (almost) every dim kept (reference: 3.0)
    hidden: int = 32  # GRU input size; the GRU has 2x this per direction (reference: 32)
    seed: int = 0  # fixed random inputs, head init, Gumbel noise and the order of training chunks
    bf16_autocast: bool = True  # on CUDA only: run the frozen model's forward in bf16 (the paper trains in bf16)
    final: str = "budget"  # final index sets: "mode" = noise-free masks (logit + offset > 0); "budget" (our
    #                        default) = the same ranking with one common threshold shift that brings the kept
    #                        fraction closest to p (a short run leaves logits near 0, where the two differ by points)

    def __post_init__(self) -> None:
        if not 0.0 < self.p <= 1.0:
            raise DietError(f"p (kept fraction of block parameters) must be in (0, 1], got {self.p}")
        if self.lam < 0:
            raise DietError(f"lambda must be 0 or more, got {self.lam}")
        if self.lr <= 0:
            raise DietError(f"learning rate must be positive, got {self.lr}")
        if self.steps < 1:
            raise DietError(f"steps must be at least 1, got {self.steps}")
        if self.seq_len < 2 or self.tokens_per_step < self.seq_len:
            raise DietError(f"need 2 <= seq_len <= tokens_per_step, got seq_len={self.seq_len}, "
                            f"tokens_per_step={self.tokens_per_step}")
        if self.temperature <= 0:
            raise DietError(f"temperature must be positive, got {self.temperature}")
        if self.hidden < 1:
            raise DietError(f"hidden must be at least 1, got {self.hidden}")
        if self.final not in ("mode", "budget"):
            raise DietError(f"final must be 'mode' or 'budget', got {self.final!r}")


# ---------------------------------------------------------------- the hypernetwork


class HyperNetwork(nn.Module):
    """Bidirectional GRU over fixed random inputs → one logit per prunable dim of every index set."""

    def __init__(self, widths: Sequence[int], hidden: int = 32, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG untouched
            torch.manual_seed(seed)
            self.register_buffer("inputs", torch.randn(len(widths), 1, hidden))  # fixed random inputs, not trained
            self.gru = nn.GRU(hidden, 2 * hidden, bidirectional=True)
            self.norm = nn.LayerNorm(4 * hidden)
            self.heads = nn.ModuleList(nn.Linear(4 * hidden, int(w), bias=False) for w in widths)

    def forward(self) -> list[torch.Tensor]:
        out, _ = self.gru(self.inputs)  # (sets, 1, 4·hidden)
        h = F.gelu(self.norm(out[:, 0]))
        return [head(h[i]) for i, head in enumerate(self.heads)]


def gumbel_sigmoid_st(logits: torch.Tensor, temperature: float, offset: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard 0/1 sample whose gradient is that of the relaxed sample (straight-through Gumbel-sigmoid)."""
    u = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + offset + torch.log(u) - torch.log1p(-u)) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


def final_masks(logits: list[torch.Tensor], offset: float, shift: float = 0.0) -> list[torch.Tensor]:
    """The noise-free hard masks (logit + offset + shift > 0), never empty: the best dim is kept if none passes."""
    out = []
    for lg in logits:
        m = (lg.detach() + offset + shift) > 0
        if not m.any():
            m[lg.argmax()] = True
        out.append(m)
    return out


# ---------------------------------------------------------------- masks inside the frozen model


class MaskHooks:
    """Multiply masks into the dense model at the five positions: the function of `zero_disp`, but differentiable.

    attn_in: input-norm output · m; attn_out: o_proj output · m (before Gemma's post-norm, as zeroed o_proj rows
    would be); mlp_in: pre-MLP norm output · m; mlp_mid: down_proj input · m; mlp_out: down_proj output · m.
    """

    def __init__(self, model: nn.Module):
        self.masks: dict[str, list[torch.Tensor]] | None = None
        self.handles = []
        for i, layer in enumerate(disp_layers(model)):
            p = block_parts(layer)
            for pos, mod in (("attn_in", p.norm_attn), ("attn_out", p.o), ("mlp_in", p.norm_mlp),
                             ("mlp_out", p.down)):
                self.handles.append(mod.register_forward_hook(self._out(pos, i)))
            self.handles.append(p.down.register_forward_pre_hook(self._in("mlp_mid", i)))

    def _mask(self, pos: str, i: int, x: torch.Tensor) -> torch.Tensor:
        return x if self.masks is None else x * self.masks[pos][i].to(x.dtype)

    def _out(self, pos: str, i: int):
        return lambda module, args, output: self._mask(pos, i, output)

    def _in(self, pos: str, i: int):
        return lambda module, args: (self._mask(pos, i, args[0]), *args[1:])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def split_by_position(flat: list[torch.Tensor], n_layers: int) -> dict[str, list[torch.Tensor]]:
    """Layer-major list of 5·L masks → {position: [mask of layer 0, …]}."""
    return {pos: [flat[5 * i + j] for i in range(n_layers)] for j, pos in enumerate(POSITIONS)}


def kept_fraction(masks: dict[str, list[torch.Tensor]], shape: DispShape) -> torch.Tensor:
    """Kept block-parameter fraction of (possibly soft) masks, counted as the paper counts (differentiable)."""
    dev = masks["attn_in"][0].device
    counts = {pos: torch.stack([m.sum() for m in masks[pos]]) for pos in POSITIONS}
    full = {pos: torch.tensor(shape.widths[pos], dtype=torch.float32, device=dev) for pos in POSITIONS}
    qkv = torch.tensor(shape.qkv_out, dtype=torch.float32, device=dev)
    o_in = torch.tensor(shape.o_in, dtype=torch.float32, device=dev)
    return block_params(counts, qkv, o_in) / block_params(full, qkv, o_in)


def budget_shift(logits: list[torch.Tensor], offset: float, shape: DispShape, p: float) -> float:
    """The common shift of every logit whose noise-free masks keep the block fraction closest to p (bisection:
    the kept fraction only grows with the shift). Order within the learned ranking is unchanged."""
    n_layers = shape.layers
    ratio = lambda t: float(kept_fraction(split_by_position(  # noqa: E731
        [m.float() for m in final_masks(logits, offset, t)], n_layers), shape))
    span = max(float(lg.detach().abs().max()) for lg in logits) + abs(offset) + 1.0
    lo, hi = -span, span
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) < p else (lo, mid)
    return lo if abs(ratio(lo) - p) <= abs(ratio(hi) - p) else hi


def budget_loss(ratio: torch.Tensor, p: float, lam: float) -> torch.Tensor:
    """λ·log(r/p) above the target, λ·log(p/r) below: λ·|log r − log p|."""
    return lam * (torch.log(ratio) - math.log(p)).abs()


# ---------------------------------------------------------------- data


def token_chunks(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """All texts as one EOS-separated token stream cut into (n, seq_len) chunks (no padding anywhere)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DietError("no training texts: give tasks with calibration texts")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        stream.append(sep)
    n = len(stream) // seq_len
    if n < 1:
        raise DietError(f"the training texts hold {len(stream)} tokens, fewer than one sequence of {seq_len}: "
                        "lower --seq-len or add texts")
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def task_texts(tasks: Sequence) -> list[str]:
    """Task-aware training data: every calibration text of the chosen tasks, interleaved task by task."""
    pools = [list(resolve_task(t).calibration) for t in tasks]
    return [pool[i] for i in range(max(map(len, pools), default=0)) for pool in pools if i < len(pool)]


# ---------------------------------------------------------------- training


@dataclass
class LearnResult:
    """Learned index sets and how the run went."""

    index_sets: dict[str, list[np.ndarray]]  # position -> per-layer sorted kept indices (noise-free masks)
    settings: LearnSettings
    summary: dict  # param_summary of the final index sets (block_kept_fraction = the p reached)
    history: list[dict] = field(default_factory=list)  # per step: lm_loss, budget, ratio (of the sampled masks)
    seconds: float = 0.0
    hypernetwork: dict | None = None  # state dict, to continue or inspect

    def to_dict(self) -> dict:
        return {"settings": asdict(self.settings), "summary": self.summary, "seconds": self.seconds,
                "history": self.history}


Progress = Callable[[int, int, dict], None]  # (step done, steps, {"lm_loss", "budget", "ratio"})


@contextmanager
def frozen_eval(model: nn.Module):
    """The model in eval mode with no parameter requiring grad, restored afterwards (only the hypernetwork trains)."""
    was_training = model.training
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
        model.train(was_training)


def train_step(model: nn.Module, hn: HyperNetwork, hooks: MaskHooks, opt, ids: torch.Tensor, shape: DispShape,
               settings: LearnSettings, noise: torch.Generator) -> dict:
    """One optimisation step: sample hard masks (straight-through), LM loss of the masked frozen model + budget."""
    flat_logits = hn()
    flat = [gumbel_sigmoid_st(lg, settings.temperature, settings.offset, noise) for lg in flat_logits]
    hooks.masks = split_by_position(flat, shape.layers)
    ratio = kept_fraction(hooks.masks, shape)
    autocast = settings.bf16_autocast and ids.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        lm_loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    budget = budget_loss(ratio, settings.p, settings.lam)
    opt.zero_grad(set_to_none=True)
    (lm_loss.float() + budget).backward()
    opt.step()
    hooks.masks = None
    with torch.no_grad():
        mode = split_by_position([m.float() for m in final_masks(
            [f.detach() for f in flat_logits], settings.offset)], shape.layers)
    return {"lm_loss": float(lm_loss.detach()), "budget": float(budget.detach()), "ratio": float(ratio.detach()),
            "mode_ratio": float(kept_fraction(mode, shape))}


def final_index_sets(hn: HyperNetwork, shape: DispShape, settings: LearnSettings) -> tuple[dict, dict]:
    """(index sets, summary) from the trained hypernetwork's noise-free masks (shifted to the budget if asked)."""
    with torch.no_grad():
        logits = hn()
        mode = split_by_position([m.float() for m in final_masks(logits, settings.offset)], shape.layers)
        shift = budget_shift(logits, settings.offset, shape, settings.p) if settings.final == "budget" else 0.0
        masks = split_by_position(final_masks(logits, settings.offset, shift), shape.layers)
    sets = {pos: [torch.nonzero(m).flatten().cpu().numpy() for m in masks[pos]] for pos in POSITIONS}
    summary = param_summary(shape, {pos: np.array([len(k) for k in sets[pos]]) for pos in POSITIONS})
    summary["target_p"] = settings.p
    summary["mode_kept_fraction"] = float(kept_fraction(mode, shape))  # what training alone reached
    summary["final_shift"] = shift
    return sets, summary


def learn_index_sets(model: nn.Module, tokenizer, texts: Sequence[str], settings: LearnSettings = LearnSettings(),
                     progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> LearnResult:
    """Train the hypernetwork against the frozen `model` on `texts`; return the learned index sets.

    The model's weights are never changed (nor left with requires_grad); `should_stop` is polled between steps and
    ends training early with the masks learned so far.
    """
    shape = disp_shape(model)
    widths = [shape.widths[pos][i] for i in range(shape.layers) for pos in POSITIONS]
    device = next(model.parameters()).device
    data = token_chunks(tokenizer, texts, settings.seq_len)
    per_step = settings.tokens_per_step // settings.seq_len
    order = list(range(len(data)))
    random.Random(settings.seed).shuffle(order)
    hn = HyperNetwork(widths, settings.hidden, settings.seed).to(device)
    opt = torch.optim.AdamW(hn.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    noise = torch.Generator().manual_seed(settings.seed)
    history: list[dict] = []
    t0 = time.perf_counter()
    hooks = MaskHooks(model)
    try:
        with frozen_eval(model):
            for step in range(settings.steps):
                if should_stop is not None and should_stop():
                    break
                ids = data[[order[(step * per_step + j) % len(order)] for j in range(per_step)]].to(device)
                rec = {"step": step + 1, **train_step(model, hn, hooks, opt, ids, shape, settings, noise)}
                history.append(rec)
                if progress is not None:
                    progress(step + 1, settings.steps, rec)
    finally:
        hooks.close()
    sets, summary = final_index_sets(hn, shape, settings)
    summary["steps_done"] = len(history)
    return LearnResult(sets, settings, summary, history, time.perf_counter() - t0,
                       {k: v.detach().cpu() for k, v in hn.state_dict().items()})
