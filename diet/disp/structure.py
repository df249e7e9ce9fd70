"""DISP-LLM's dimension-independent structure, and training-free index sets chosen like DIET chooses channels.

The structure (arXiv 2410.11988): the residual stream, embeddings, every norm and the lm_head keep their full
width; each decoder layer gets five *index sets* over its own dimensions —

    attn_in   residual dims that feed q/k/v (chosen *after* the input norm, which still normalises the full width)
    attn_out  residual dims that o_proj writes to
    mlp_in    residual dims that feed gate/up (after the pre-MLP norm, over the full width)
    mlp_mid   MLP intermediate channels
    mlp_out   residual dims that down_proj writes to

and runs as: norm over the full residual → `index_select` the block's input dims → the narrower block →
`index_add` of its output into the selected residual dims. That is *exactly* the masked-dense model (the pruned
columns/rows zeroed), which `zero_disp` builds as the reference. Gemma-2/3's post-block norms normalise over the full
width, so their block output is scattered into zeros first and normalised there: still exact.

Why the norm-then-select order matters: RMSNorm divides by the RMS of *all* residual dims; selecting first would
change that denominator and the model would no longer be the masked one.

Training-free index sets: the same per-task activation statistics DIET uses (mean |x| or RMS, summed in fp32 over
non-padding tokens, cached), taken at the five positions, turned into per-task masks and merged by DIET's vote with
`diet.masks` — so every DIET view and slider applies per position. The learned sets are in `diet/disp_learn.py`.

The layer code itself lives in `diet/modeling_disp.py` (torch + transformers only), which every DISP export folder
carries: a reloaded folder runs the very same forward as the in-memory model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from diet import masks as M
from diet.errors import DietError
from diet.modeling_disp import DispLayerMixin, disp_convert_layer
from diet.settings import ALLOCATIONS, CACHE_FORMAT_VERSION, MERGES, SCORES, MaskSettings, ProfileSettings, sha256_of

POSITIONS = ("attn_in", "attn_out", "mlp_in", "mlp_mid", "mlp_out")
POSITION_LABELS = {
    "attn_in": "attention input (residual dims read by q/k/v)",
    "attn_out": "attention output (residual dims written by o_proj)",
    "mlp_in": "MLP input (residual dims read by gate/up)",
    "mlp_mid": "MLP intermediate channels",
    "mlp_out": "MLP output (residual dims written by down_proj)",
}
DISP_FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "gemma3")

IndexSets = Mapping[str, Sequence]  # position -> per-layer sorted kept indices (np arrays, lists or tensors)

# ================================================================ structure, reference, accounting


def _layers(model: nn.Module) -> nn.ModuleList:
    from diet.adapters import get_family

    if str(getattr(model.config, "model_type", "")).startswith("disp_"):  # a reloaded DISP export
        return model.model.layers
    fam = get_family(model)
    if fam.name not in DISP_FAMILIES:
        raise DietError(f"DISP supports {', '.join(DISP_FAMILIES)} models; {fam.name} is not supported yet")
    return fam.layers(model)


def is_disp_layer(layer: nn.Module) -> bool:
    """True for a DISP layer, whether built here or by a reloaded folder's own copy of the modelling file."""
    return isinstance(layer, DispLayerMixin) or all(hasattr(layer, f"disp_{p}") for p in POSITIONS)


@dataclass(frozen=True)
class LayerParts:
    """The modules DISP reads or cuts in one decoder layer."""

    norm_attn: nn.Module  # input norm: its output feeds q/k/v
    norm_mlp: nn.Module  # pre-MLP norm
    post_attn: nn.Module | None  # Gemma's post-attention norm (None for Llama-style layers)
    post_mlp: nn.Module | None  # Gemma's post-feed-forward norm
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


def layer_parts(layer: nn.Module) -> LayerParts:
    sandwich = hasattr(layer, "pre_feedforward_layernorm")
    a, m = layer.self_attn, layer.mlp
    return LayerParts(
        norm_attn=layer.input_layernorm,
        norm_mlp=layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm,
        post_attn=layer.post_attention_layernorm if sandwich else None,
        post_mlp=layer.post_feedforward_layernorm if sandwich else None,
        q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj, gate=m.gate_proj, up=m.up_proj, down=m.down_proj,
    )


def disp_shape(model: nn.Module) -> dict:
    """Plain numbers the index-set math and the parameter count need (so they never need the model)."""
    from diet.models import count_parameters

    layers = _layers(model)
    if any(is_disp_layer(layer) for layer in layers):
        raise DietError("this model is already DISP-pruned: start from the dense model")
    parts = [layer_parts(layer) for layer in layers]
    hidden = model.config.hidden_size
    return {
        "layers": len(layers),
        "hidden": hidden,
        "widths": {"attn_in": [hidden] * len(parts), "attn_out": [hidden] * len(parts),
                   "mlp_in": [hidden] * len(parts), "mlp_mid": [p.down.in_features for p in parts],
                   "mlp_out": [hidden] * len(parts)},
        "qkv_out": [p.q.out_features + p.k.out_features + p.v.out_features for p in parts],  # q + 2·kv under GQA
        "o_in": [p.o.in_features for p in parts],
        "total_params": count_parameters(model),
    }


def block_params(counts: Mapping, qkv_out, o_in):
    """Block weights kept, counted as the paper counts them (weights of q/k/v/o and gate/up/down; no biases).

    Per layer: attn_in·(q + k + v outputs) + attn_out·(o inputs) + 2·mlp_in·mlp_mid + mlp_mid·mlp_out. Works on
    numpy arrays and on torch tensors (the hypernetwork differentiates through it), summed over layers.
    """
    c = counts
    per_layer = (c["attn_in"] * qkv_out + c["attn_out"] * o_in + 2 * c["mlp_in"] * c["mlp_mid"]
                 + c["mlp_mid"] * c["mlp_out"])
    return per_layer.sum()


def param_summary(shape: dict, counts: Mapping) -> dict:
    """Kept block fraction p (the paper's budget) and the fraction of *all* model parameters removed."""
    full = {pos: np.asarray(shape["widths"][pos], dtype=np.int64) for pos in POSITIONS}
    cnt = {pos: np.asarray(counts[pos], dtype=np.int64) for pos in POSITIONS}
    qkv, o_in = np.asarray(shape["qkv_out"], dtype=np.int64), np.asarray(shape["o_in"], dtype=np.int64)
    total_block = int(block_params(full, qkv, o_in))
    kept_block = int(block_params(cnt, qkv, o_in))
    removed = total_block - kept_block
    return {
        "block_params": total_block,
        "block_params_kept": kept_block,
        "block_kept_fraction": kept_block / total_block,  # the paper's p
        "block_sparsity": removed / total_block,
        "params_total": int(shape["total_params"]),
        "params_removed": removed,
        "params_after": int(shape["total_params"]) - removed,
        "param_sparsity": removed / shape["total_params"],
        "kept_per_layer": {pos: cnt[pos].tolist() for pos in POSITIONS},
    }


def check_sets(shape: dict, sets: IndexSets) -> dict[str, list[torch.Tensor]]:
    """Validated index sets: every position present, per layer distinct, in range, non-empty; sorted tensors."""
    missing = [p for p in POSITIONS if p not in sets]
    if missing:
        raise DietError(f"index sets are missing position(s) {', '.join(missing)}")
    out: dict[str, list[torch.Tensor]] = {}
    for pos in POSITIONS:
        per_layer = sets[pos]
        if isinstance(per_layer, np.ndarray) and per_layer.dtype == bool:
            per_layer = [np.nonzero(row)[0] for row in per_layer]
        if len(per_layer) != shape["layers"]:
            raise DietError(f"{pos}: {len(per_layer)} layers of index sets for a model with {shape['layers']}")
        out[pos] = []
        for i, (idx, width) in enumerate(zip(per_layer, shape["widths"][pos], strict=True)):
            t = torch.as_tensor(np.asarray(idx), dtype=torch.long).flatten()
            if t.numel() == 0:
                raise DietError(f"layer {i} {pos}: keeps no dimension; every index set must keep at least one")
            if t.min() < 0 or t.max() >= width or t.unique().numel() != t.numel():
                raise DietError(f"layer {i} {pos}: indices must be distinct and within 0..{width - 1}")
            out[pos].append(t.sort().values)
    return out


def counts_of(sets: IndexSets) -> dict[str, np.ndarray]:
    return {pos: np.array([len(np.asarray(k).ravel()) for k in sets[pos]]) for pos in POSITIONS}


def zero_disp(model: nn.Module, sets: IndexSets) -> nn.Module:
    """The masked-dense reference, in place: zero every weight (and bias) that an index set leaves out."""
    shape = disp_shape(model)
    s = check_sets(shape, sets)
    def dropped(keep: torch.Tensor, width: int, device) -> torch.Tensor:
        d = torch.ones(width, dtype=torch.bool)
        d[keep] = False
        return d.to(device)

    hidden = shape["hidden"]
    for i, layer in enumerate(_layers(model)):
        p = layer_parts(layer)
        drop = lambda pos, width, i=i, dev=p.o.weight.device: dropped(s[pos][i], width, dev)  # noqa: E731
        with torch.no_grad():
            for lin in (p.q, p.k, p.v):
                lin.weight[:, drop("attn_in", hidden)] = 0
            for lin, d in ((p.o, drop("attn_out", hidden)), (p.down, drop("mlp_out", hidden))):
                lin.weight[d] = 0
                if lin.bias is not None:
                    lin.bias[d] = 0
            for lin in (p.gate, p.up):
                lin.weight[:, drop("mlp_in", hidden)] = 0
            p.down.weight[:, drop("mlp_mid", p.down.in_features)] = 0
    return model


def slice_disp(model: nn.Module, sets: IndexSets) -> nn.Module:
    """Physically slice `model` in place to the index sets: DISP layers that index_select / index_add."""
    from diet.adapters import _check_plain

    shape = disp_shape(model)
    s = check_sets(shape, sets)
    for i, layer in enumerate(_layers(model)):
        p = layer_parts(layer)
        for lin in (p.q, p.k, p.v, p.o, p.gate, p.up, p.down):
            _check_plain(lin)
        disp_convert_layer(layer, {pos: s[pos][i] for pos in POSITIONS})
    return model


def index_sets_of(model: nn.Module) -> dict[str, list[np.ndarray]]:
    """The index sets a DISP-sliced model carries (read back from its buffers)."""
    layers = _layers(model)
    if not all(is_disp_layer(layer) for layer in layers):
        raise DietError("this model is not DISP-sliced")
    return {pos: [getattr(layer, f"disp_{pos}").cpu().numpy() for layer in layers] for pos in POSITIONS}


# ================================================================ activation statistics at the five positions


class _PositionAccumulator:
    """Forward hooks adding fp32 Σ|x|, Σx², Σx per dim and half, at the five positions of every layer.

    Hook points: the input norm's output (attn_in), what the attention block adds to the residual (o_proj output, or
    Gemma's post-attention norm output: attn_out), the pre-MLP norm's output (mlp_in), down_proj's input (mlp_mid,
    DIET's own unit) and what the MLP adds to the residual (mlp_out).
    """

    def __init__(self, model: nn.Module, shape: dict):
        layers = _layers(model)
        dev = next(model.parameters()).device
        self.sums = {pos: {k: torch.zeros((2, shape["layers"], shape["widths"][pos][0]), dtype=torch.float32,
                                          device=dev) for k in ("abs_sum", "sq_sum", "sum")} for pos in POSITIONS}
        if any(len(set(shape["widths"][pos])) != 1 for pos in POSITIONS):
            raise DietError("profiling a model whose layers have different widths is not supported")
        self.count = torch.zeros(2, dtype=torch.float64)
        self.weights: torch.Tensor | None = None
        self.handles = []
        for i, layer in enumerate(layers):
            p = layer_parts(layer)
            points = {"attn_in": p.norm_attn, "attn_out": p.post_attn or p.o, "mlp_in": p.norm_mlp,
                      "mlp_out": p.post_mlp or p.down}
            for pos, mod in points.items():
                self.handles.append(mod.register_forward_hook(self._out_hook(pos, i)))
            self.handles.append(p.down.register_forward_pre_hook(self._in_hook("mlp_mid", i)))

    def _add(self, pos: str, i: int, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        w = self.weights.to(x.device)
        s = self.sums[pos]
        s["abs_sum"][:, i] += w @ x.abs()
        s["sq_sum"][:, i] += w @ (x * x)
        s["sum"][:, i] += w @ x

    def _out_hook(self, pos: str, i: int):
        return lambda module, args, output: self._add(pos, i, output[0] if isinstance(output, tuple) else output)

    def _in_hook(self, pos: str, i: int):
        return lambda module, args: self._add(pos, i, args[0])

    def set_batch(self, attention_mask: torch.Tensor, halves: torch.Tensor) -> None:
        m = attention_mask.float()
        self.weights = torch.stack([m * (halves == 0)[:, None], m * (halves == 1)[:, None]]).reshape(2, -1)
        self.count += self.weights.sum(1).double().cpu()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def profile_positions(model: nn.Module, tokenizer, texts: list[str], settings: ProfileSettings,
                      progress: Callable[[int, int], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> dict:
    """Statistics of `texts` at the five positions: {pos: Stats}. Same batching and halves as diet.profile."""
    from diet.profile import Cancelled, Stats

    shape = disp_shape(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    acc = _PositionAccumulator(model, shape)
    device = next(model.parameters()).device
    done = 0
    try:
        with torch.inference_mode():
            for start in range(0, len(order), settings.batch_size):
                if should_stop is not None and should_stop():
                    raise Cancelled("profiling cancelled; nothing was written")
                idx = order[start : start + settings.batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                max_length=settings.max_length)
                acc.set_batch(enc["attention_mask"], torch.tensor([i % 2 for i in idx]))
                model.base_model(input_ids=enc["input_ids"].to(device),
                                 attention_mask=enc["attention_mask"].to(device), use_cache=False)
                done += len(idx)
                if progress is not None:
                    progress(done, len(texts))
    finally:
        acc.close()
    count = acc.count.numpy().astype(np.float64)
    return {pos: Stats(**{k: v.cpu().numpy() for k, v in acc.sums[pos].items()}, count=count, meta={"shape": shape})
            for pos in POSITIONS}


def _stats_key(lm, texts: list[str], settings: ProfileSettings) -> str:
    from diet.profile import texts_hash

    return sha256_of({"format": CACHE_FORMAT_VERSION, "kind": "disp-positions/1", "model": lm.identity,
                      "dtype": lm.spec.dtype, "quantization": lm.spec.quantization, "texts": texts_hash(texts),
                      "settings": settings.key_fields()})[:24]


def is_disp_profiled(lm, task, settings: ProfileSettings = ProfileSettings(), cache=None) -> bool:
    """True when `task`'s statistics at the five positions are cached, so `profile_disp` would run no forward pass.

    Why: the app loads cached statistics at once and offers a (background) profiling pass only for what is missing.
    """
    from diet.api import _task
    from diet.cache import ArtifactCache
    from diet.profile import choose_texts

    task = _task(task)
    key = _stats_key(lm, choose_texts(task.calibration, settings), settings)
    return (cache or ArtifactCache()).has("disp_stats", key)


def profile_disp(lm, tasks: Sequence, settings: ProfileSettings = ProfileSettings(),
                 progress: Callable[[str, int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, cache=None) -> dict[str, dict]:
    """{task: {position: Stats}}, from the cache when present, else profiled once and cached atomically."""
    from diet.api import _task
    from diet.cache import ArtifactCache
    from diet.profile import Stats, choose_texts

    cache = cache or ArtifactCache()
    out: dict[str, dict] = {}
    for task in map(_task, tasks):
        texts = choose_texts(task.calibration, settings)
        key = _stats_key(lm, texts, settings)
        hit = cache.load_tensors("disp_stats", key)
        if hit is not None:
            tensors, meta = hit
            out[task.name] = {pos: Stats(*(tensors[f"{pos}.{k}"] for k in ("abs_sum", "sq_sum", "sum")),
                                         count=tensors["count"], meta=meta) for pos in POSITIONS}
            if progress:
                progress(task.name, len(texts), len(texts))
            continue
        cb = (lambda d, n, name=task.name: progress(name, d, n)) if progress else None
        t0 = time.perf_counter()
        stats = profile_positions(lm.model, lm.tokenizer, texts, settings, cb, should_stop)
        first = stats[POSITIONS[0]]
        meta = {**first.meta, "model": lm.spec.name, "model_identity": lm.identity, "task": task.name,
                "task_fingerprint": task.fingerprint(), "texts": len(texts), "tokens": float(first.count.sum()),
                "settings": asdict(settings), "seconds": time.perf_counter() - t0}
        tensors = {f"{pos}.{k}": v for pos, s in stats.items() for k, v in s.tensors().items() if k != "count"}
        cache.save_tensors("disp_stats", key, {**tensors, "count": first.count}, meta)
        out[task.name] = {pos: Stats(s.abs_sum, s.sq_sum, s.sum, s.count, meta) for pos, s in stats.items()}
    return out


# ================================================================ training-free index sets (DIET's vote per position)


@dataclass(frozen=True)
class DispSettings:
    """How per-task statistics at the five positions become DISP index sets. Pure numpy; no model needed."""

    sparsity: float = 0.3  # fraction of *block* parameters removed (the paper's 1 − p), e.g. 0.3 keeps p = 0.7
    score: str = "mean_abs"  # per-dim score: "mean_abs" (mean |x|, our default) or "rms"
    merge: str = "budget"  # "budget": rank by votes, ties by mean normalised score, keep exactly the target;
    #                        "threshold": keep a dim if at least `threshold` task masks keep it (budget approximate)
    threshold: int | None = None  # k for merge="threshold"; None = strict majority
    allocation: str = "layer"  # "layer": same kept count per layer and position; "global": rank across layers
    min_keep: float = 0.05  # global allocation only: every layer keeps at least this fraction at each position
    positions: tuple[str, ...] = POSITIONS  # positions that are pruned; the others keep their full width

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise DietError(f"sparsity must be in [0, 1) (a fraction of block parameters removed), got {self.sparsity}")
        if self.score not in SCORES:
            raise DietError(f"unknown score {self.score!r}: use one of {', '.join(SCORES)}")
        if self.merge not in MERGES:
            raise DietError(f"unknown merge {self.merge!r}: use one of {', '.join(MERGES)}")
        if self.allocation not in ALLOCATIONS:
            raise DietError(f"unknown allocation {self.allocation!r}: use one of {', '.join(ALLOCATIONS)}")
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise DietError(f"positions must be a non-empty subset of {', '.join(POSITIONS)}; got {self.positions}")
        if self.threshold is not None and self.threshold < 1:
            raise DietError(f"threshold must be at least 1, got {self.threshold}")
        if not 0.0 < self.min_keep <= 1.0:
            raise DietError(f"min_keep must be in (0, 1], got {self.min_keep}")

    def mask_settings(self, keep_fraction: float) -> MaskSettings:
        return MaskSettings(sparsity=1.0 - keep_fraction, score=self.score, merge=self.merge,
                            threshold=self.threshold, allocation=self.allocation, min_keep=self.min_keep)


def keep_fractions(shape: dict, settings: DispSettings) -> dict[str, float]:
    """One kept fraction k for every pruned position, chosen so the kept block parameters come closest to p.

    Why one k: with no learning, nothing says one position matters more than another; the attention terms scale
    with k and the MLP terms with k², so k is found by bisection on the exact (rounded) count.
    """
    target = 1.0 - settings.sparsity
    qkv, o_in = np.asarray(shape["qkv_out"]), np.asarray(shape["o_in"])
    full = {pos: np.asarray(shape["widths"][pos]) for pos in POSITIONS}
    total = block_params(full, qkv, o_in)

    def kept(k: float) -> float:
        counts = {pos: np.array([M.keep_count(int(w), 1.0 - k) for w in full[pos]]) if pos in settings.positions
                  else full[pos] for pos in POSITIONS}
        return block_params(counts, qkv, o_in) / total

    lo, hi = 0.0, 1.0
    if kept(lo) > target:
        raise DietError(f"keeping one dim per index set already keeps {kept(lo):.1%} of the block parameters: "
                        f"sparsity {settings.sparsity} cannot be reached with positions {settings.positions}")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < target else (lo, mid)
    k = max(lo if abs(kept(lo) - target) <= abs(kept(hi) - target) else hi, 1e-9)
    return {pos: (k if pos in settings.positions else 1.0) for pos in POSITIONS}


@dataclass
class DispMaskResult:
    """Per-position masks, exactly like DIET's MaskResult but five times: every DIET view works per position."""

    tasks: list[str]
    settings: DispSettings
    task_masks: dict[str, np.ndarray]  # position -> (T, L, W) bool
    masks: dict[str, np.ndarray]  # position -> (L, W) bool: the merged masks (what the heatmaps show)
    votes: dict[str, np.ndarray]  # position -> (L, W) uint8
    shape: dict
    summary: dict = field(default_factory=dict)  # parameter accounting (the paper's p and total sparsity)

    def index_sets(self) -> dict[str, list[np.ndarray]]:
        return {pos: M.keep_indices(self.masks[pos]) for pos in POSITIONS}


def build_disp_masks(stats: dict[str, dict], settings: DispSettings = DispSettings()) -> DispMaskResult:
    """Per-task masks and DIET's vote at each position, at the block-parameter budget — from statistics only."""
    if not stats:
        raise DietError("no task statistics: profile at least one task first")
    names = list(stats)
    shape = stats[names[0]][POSITIONS[0]].meta["shape"]
    if any(s[POSITIONS[0]].meta["shape"]["widths"] != shape["widths"] for s in stats.values()):
        raise DietError("the task statistics come from models of different shapes")
    if settings.merge == "threshold":
        settings.mask_settings(1.0).resolved_threshold(len(names))
    ks = keep_fractions(shape, settings)
    task_masks, merged, votes = {}, {}, {}
    for pos in POSITIONS:
        ms = settings.mask_settings(ks[pos])
        scores = np.stack([M.scores_from(stats[n][pos], settings.score) for n in names])
        task_masks[pos], merged[pos] = M.build_masks(scores, ms)
        merged[pos] = merged[pos] | ~merged[pos].any(axis=1, keepdims=True) & M.topk_rows(M.tie_scores(scores), 1)
        votes[pos] = M.votes(task_masks[pos])
    summary = {**param_summary(shape, {pos: M.kept_per_layer(merged[pos]) for pos in POSITIONS}),
               "keep_fraction": ks,
               "jaccard": {pos: M.jaccard_matrix(task_masks[pos]).round(4).tolist() for pos in POSITIONS}}
    return DispMaskResult(names, settings, task_masks, merged, votes, shape, summary)


def disp_copy(model: nn.Module, sets: IndexSets) -> nn.Module:
    """A DISP-sliced deep copy (the dense model stays as it is, for side-by-side comparison)."""
    import copy

    return slice_disp(copy.deepcopy(model), sets)
