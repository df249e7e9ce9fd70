"""Compensation after removal: refit what the kept units write, so the layer output survives the cut.

Two training-free, closed-form options (`CompensationSettings.method`):

* `bias` — FLAP's mean-activation bias: the removed units' average contribution W[:, removed] · E[x_removed] is
  added back to the output projection as a constant (`diet.prune.prune_units(..., compensation=means)`; here only
  the means are computed and the export support is checked).
* `lstsq` — least-squares reconstruction of the output projection from the kept columns, the OBS / SparseGPT idea
  in its structured, closed form: with x the projection's input over calibration tokens and y the output to keep,
  W' = argmin Σ‖y − W' x_K‖² + λ‖W' − W_K‖² = (Σ y x_Kᵀ + λ W_K)(Σ x_K x_Kᵀ + λ I)⁻¹. λ is relative (ridge × the
  mean diagonal of Σ x_K x_Kᵀ) and pulls toward the original weights, so no removal gives back W exactly for any λ
  and a large λ gives plain removal. Layers are fitted **in order** on the inputs of the already pruned and refitted
  layers before them (the sequential reconstruction of SparseGPT, ZipLM and FLAP's follow-ups): a one-shot fit on the
  dense model's inputs corrects each layer for a world that no longer exists after the first cut, and measured no
  gain (docs/results.md). With target "dense" each layer's y is the dense model's output of that projection, so
  later layers also absorb error left by earlier ones.

Why the second-moment matrices are never cached: after layer 0 they depend on the mask (the inputs come from the
pruned model), so there is nothing mask-free to reuse. They are built one layer at a time, in fp64 from fp32
products, and freed before the next layer: the peak is one k × k and one d × k matrix (1.05 + 0.38 GB for a
14336-channel, 4096-wide layer at 20%; 12 + 5.7 MB on SmolLM2), plus the hidden states of the calibration tokens.

The fit works on the masked model (removed columns set to zero, shapes unchanged); the caller then slices with
`prune_units` as usual — zeroed columns and sliced ones are the same function, which the exactness tests check.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from diet.adapters import get_family, get_unit
from diet.errors import DietError
from diet.settings import CompensationSettings

Progress = Callable[[int, int], None]  # (layers done, layers total)


@dataclass
class FitReport:
    """What one lstsq fit did and cost."""

    layers: int
    tokens: int  # real (non-padding) calibration tokens
    seconds: float
    peak_matrix_bytes: int  # the largest second-moment + cross matrices held at once (one layer's)
    stream_bytes: int  # hidden states kept for the calibration tokens (dense + pruned streams)
    ridge: list[float] = field(default_factory=list)  # λ actually used per layer (raised when a matrix was singular)
    error_removed: list[float] = field(default_factory=list)  # per layer: Σ‖y − W_K x_K‖² / Σ‖y‖², plain removal
    error_fitted: list[float] = field(default_factory=list)  # the same after the refit (on the fit tokens)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---------------------------------------------------------------- calibration texts


def fit_texts(tasks: Sequence, settings: CompensationSettings) -> list[str]:
    """`settings.samples` calibration texts per task (seeded choice from each task's pool), in task order."""
    from diet.profile import choose_texts
    from diet.settings import ProfileSettings

    ps = ProfileSettings(samples=settings.samples, seed=settings.seed, max_length=max(settings.max_length, 8))
    return [t for task in tasks for t in choose_texts(task.calibration, ps)]


def heldout_texts(task, used: Sequence[str], n: int, seed: int = 1) -> list[str]:
    """Up to n texts of the task's calibration pool that are not in `used` (for tuning the ridge honestly)."""
    rest = sorted({t for t in task.calibration if t.strip()} - set(used))
    return random.Random(seed).sample(rest, min(n, len(rest)))


# ---------------------------------------------------------------- bias


def bias_supported(model: nn.Module, unit: str = "mlp") -> str | None:
    """None when a stock config of this family can carry an output bias for `unit`, else the reason it cannot."""
    fam = get_family(model)
    flag = get_unit(model, unit).bias_flag
    if fam.name == "qwen2" and unit == "heads":
        return "Qwen2's o_proj has no bias in its stock modelling code"
    if not hasattr(model.config, flag):
        where = "down_proj" if unit == "mlp" else "o_proj"
        return (f"a stock {fam.name} config has no {flag} flag, so a {where} bias would be dropped on load, and "
                "it cannot be folded exactly (the constant enters the residual stream, which every later norm "
                "rescales per token)")
    return None


def enable_output_bias(model: nn.Module, unit: str = "mlp") -> None:
    """Make a compensated model savable with a stock config: set mlp_bias / attention_bias and give the sibling
    projections that flag also creates (gate/up, or q/k/v) zero biases, so the reloaded model is the same function.
    """
    reason = bias_supported(model, unit)
    if reason:
        raise DietError(f"bias compensation cannot be exported for this model: {reason}; use --compensation lstsq "
                        "(plain weights) or none")
    u = get_unit(model, unit)
    for layer in u.family.layers(model):
        for lin in u.bias_linears(layer):
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                    device=lin.weight.device))
    setattr(model.config, u.bias_flag, True)


# ---------------------------------------------------------------- lstsq


class _Recorder(nn.Module):
    """Stands in for a decoder layer for one pass: records the keyword arguments the model gives that layer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.calls: list[dict] = []
        self.first: list[torch.Tensor] = []
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise DietError("this model calls its decoder layers with positional arguments: lstsq cannot replay them")
        self.calls.append(kwargs)
        self.first.append(hidden_states)
        return hidden_states


def _batches(tokenizer, texts: list[str], settings: CompensationSettings) -> list[dict]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for start in range(0, len(order), settings.batch_size):
        idx = order[start:start + settings.batch_size]
        out.append(tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                             max_length=settings.max_length))
    return out


def _record_layer_inputs(model: nn.Module, layers: nn.ModuleList, batches: list[dict], device) -> tuple:
    """(hidden states entering layer 0 per batch, per layer the kwargs of each batch): one pass that runs no layer."""
    originals = list(layers)
    recorders = [_Recorder(layer) for layer in originals]
    try:
        for i, r in enumerate(recorders):
            layers[i] = r
        with torch.inference_mode():
            for enc in batches:
                model.base_model(input_ids=enc["input_ids"].to(device),
                                 attention_mask=enc["attention_mask"].to(device), use_cache=False)
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    return recorders[0].first, [r.calls for r in recorders]


def _solve(G: torch.Tensor, S: torch.Tensor, W_K: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
    """(G + λ W_K)(S + λ I)⁻¹ in fp64, λ = ridge × mean diag(S); a singular system is damped more, never fatal."""
    scale = float(torch.diagonal(S).mean())
    scale = scale if scale > 0 else 1.0
    lam = ridge * scale
    eye = torch.eye(S.shape[0], dtype=S.dtype)
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(S + lam * eye)
        if int(info) == 0:
            rhs = (G + lam * W_K).T  # (k, d)
            return torch.cholesky_solve(rhs, chol).T, lam
        lam = max(lam * 10.0, 1e-8 * scale)
    return W_K.clone(), float("inf")  # hopeless numerics: keep the original weights (plain removal)


def _error(yy: float, G: torch.Tensor, S: torch.Tensor, A: torch.Tensor) -> float:
    """Σ‖y − A x‖² / Σ‖y‖² from the sums alone: (Σ‖y‖² − 2 tr(A Gᵀ) + tr(A S Aᵀ)) / Σ‖y‖²."""
    if yy <= 0:
        return 0.0
    return float((yy - 2.0 * (A * G).sum() + ((A @ S) * A).sum()) / yy)


def _run(layer: nn.Module, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(h, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _layer_sums(layer: nn.Module, proj: nn.Linear, cols: torch.Tensor, masks: list, h_p: list, h_d: list | None,
                calls: list) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Σ x_K x_Kᵀ, Σ y x_Kᵀ, Σ‖y‖²) over the real tokens of one layer, fp64: x = the projection's input on the pruned
    model's stream `h_p`; y = its output there (target "layer"), or on the dense stream `h_d` (target "dense", which
    then advances `h_d` through the dense layer)."""
    W = proj.weight
    S = torch.zeros(len(cols), len(cols), dtype=torch.float64)
    G = torch.zeros(W.shape[0], len(cols), dtype=torch.float64)
    yy, seen = 0.0, {}

    def grab(module, args, output):
        seen["x"] = args[0].reshape(-1, args[0].shape[-1])
        y = output if module.bias is None else output - module.bias
        seen["y"] = y.reshape(-1, y.shape[-1])

    handle = proj.register_forward_hook(grab)
    try:
        with torch.inference_mode():
            for b, m in enumerate(masks):
                if h_d is not None:
                    h_d[b] = _run(layer, h_d[b], calls[b])
                    y = seen["y"][m].float()
                _run(layer, h_p[b], calls[b])  # only to see x (and y); the stream moves on after the refit
                if h_d is None:
                    y = seen["y"][m].float()
                x = seen["x"][m][:, cols].float()
                S += (x.T @ x).double().cpu()
                G += (y.T @ x).double().cpu()
                yy += float((y * y).sum())
    finally:
        handle.remove()
    return S, G, yy


def fit_lstsq(model: nn.Module, tokenizer, texts: list[str], keep: Sequence, unit: str = "mlp",
              settings: CompensationSettings = CompensationSettings(method="lstsq"),
              progress: Progress | None = None) -> FitReport:
    """Refit every layer's output projection on the kept columns, in order, in place (removed columns → 0).

    `keep`: per layer the kept unit indices (or a boolean (L, units) mask), as `prune_units` takes them.
    """
    from diet.prune import as_index_list

    t0 = time.perf_counter()
    u, layers, idx = as_index_list(model, keep, unit)
    device = next(model.parameters()).device
    batches = _batches(tokenizer, texts, settings)
    tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    widths = [int(u.kept_channels(layer, k).numel()) for layer, k in zip(layers, idx, strict=True)]
    if tokens < max(widths):
        raise DietError(f"lstsq needs at least {max(widths)} calibration tokens (one per kept input column of the "
                        f"{u.stat_width(layers[0])}-column output projection) but the texts give {tokens}: use "
                        "more calibration texts per task or longer ones")
    h_p, calls = _record_layer_inputs(model, layers, batches, device)
    h_d = list(h_p) if settings.target == "dense" else None
    masks = [b["attention_mask"].reshape(-1).bool().to(device) for b in batches]
    hidden = h_p[0].shape[-1]
    report = FitReport(len(layers), tokens, 0.0, 0, 2 * tokens * hidden * h_p[0].element_size())
    for i, (layer, k) in enumerate(zip(layers, idx, strict=True)):
        proj = u.out_proj(layer)
        cols = u.kept_channels(layer, k)
        S, G, yy = _layer_sums(layer, proj, cols, masks, h_p, h_d, calls[i])
        W = proj.weight.detach()
        W_K = W[:, cols].double().cpu()
        A, lam = _solve(G, S, W_K, settings.ridge)
        report.ridge.append(lam)
        report.error_removed.append(_error(yy, G, S, W_K))
        report.error_fitted.append(_error(yy, G, S, A))
        report.peak_matrix_bytes = max(report.peak_matrix_bytes, (S.numel() + G.numel()) * 8)
        new = torch.zeros_like(W)
        new[:, cols] = A.to(W.dtype).to(W.device)
        with torch.no_grad():
            proj.weight.copy_(new)
        del S, G
        with torch.inference_mode():
            for b in range(len(h_p)):
                h_p[b] = _run(layer, h_p[b], calls[i][b])
        if progress is not None:
            progress(i + 1, len(layers))
    report.seconds = time.perf_counter() - t0
    return report


def compensate_masked(model: nn.Module, keep: Sequence, unit: str = "mlp", means=None,
                      lstsq: CompensationSettings | None = None, tokenizer=None,
                      texts: Sequence[str] | None = None) -> FitReport | None:
    """Apply a compensation in place on the *masked* model (removed columns zero, shapes unchanged).

    Any later slicing or padding of this model is then exact: `bias` (FLAP's means) is added with the true kept set
    before the removed columns are zeroed; `lstsq` refits the kept columns (it needs the tokenizer and texts).
    """
    from diet.prune import add_bias_compensation, as_index_list

    if lstsq is not None and lstsq.method == "lstsq":
        if tokenizer is None or not texts:
            raise DietError("lstsq compensation needs calibration texts and the tokenizer")
        return fit_lstsq(model, tokenizer, list(texts), keep, unit, lstsq)
    if means is None:
        return None
    u, layers, idx = as_index_list(model, keep, unit)
    add_bias_compensation(u, layers, idx, means)
    for layer, k in zip(layers, idx, strict=True):
        u.zero(layer, k)
    return None
