"""ShortGPT (arXiv 2403.03853), the depth baseline: remove whole decoder layers that change their input least.

Block Influence of layer i: BI_i = 1 − mean over real tokens of cos(h_in, h_out), where h_in is the hidden state
entering the layer and h_out the one leaving it. The layers with the lowest BI are removed. Why here: width pruning
(DIET and the baselines in diet.methods) is compared against removing depth at the same fraction of parameters.

Unlike the registry methods this needs its own forward pass (hidden states, not unit activations); the BI vector is
cached like the statistics (`ArtifactCache` kind "shortgpt"), so re-pruning at another depth costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diet.adapters import get_family
from diet.errors import DietError
from diet.settings import ProfileSettings


def block_influence(model: torch.nn.Module, tokenizer, texts: list[str], settings: ProfileSettings,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(L,) BI per decoder layer, averaged over the non-padding tokens of `texts` (fp32 sums)."""
    layers = get_family(model).layers(model)
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    state: dict[str, torch.Tensor] = {}

    def hook(i):
        def fn(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # (B, T)
            cos_sum[i] += float((cos * state["mask"].to(cos.device)).sum())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    tokens = 0.0
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), settings.batch_size):
                enc = tokenizer(texts[start : start + settings.batch_size], return_tensors="pt", padding=True,
                                truncation=True, max_length=settings.max_length)
                state["mask"] = enc["attention_mask"].float()
                tokens += float(enc["attention_mask"].sum())
                model.base_model(input_ids=enc["input_ids"].to(device),
                                 attention_mask=enc["attention_mask"].to(device), use_cache=False)
                if progress:
                    progress(min(start + settings.batch_size, len(texts)), len(texts))
    finally:
        for h in handles:
            h.remove()
    return 1.0 - (cos_sum / max(tokens, 1.0)).numpy()


def layers_to_drop(bi: np.ndarray, sparsity: float) -> list[int]:
    """The round(sparsity × L) layers with the lowest BI (ties: lower index first); at least one layer stays."""
    n = int(round(sparsity * len(bi)))
    if not 0 <= n < len(bi):
        raise DietError(f"cannot remove {n} of {len(bi)} layers: at least one must stay")
    order = np.argsort(bi, kind="stable")
    return sorted(int(i) for i in order[:n])


def remove_layers(model: torch.nn.Module, drop: list[int]) -> torch.nn.Module:
    """Delete decoder layers `drop` in place; renumber the rest and update the config (a stock, loadable one)."""
    fam = get_family(model)
    layers = fam.layers(model)
    if any(not 0 <= i < len(layers) for i in drop) or len(set(drop)) >= len(layers):
        raise DietError(f"cannot remove layers {drop} of a {len(layers)}-layer model")
    keep = [i for i in range(len(layers)) if i not in set(drop)]
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(kept):  # the KV cache and per-layer masks are indexed by position
        for module in layer.modules():  # the layer and its attention carry layer_idx (no module names needed)
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    parent = model
    *path, last = fam.layers_path.split(".")
    for attr in path:
        parent = getattr(parent, attr)
    setattr(parent, last, kept)
    cfg = model.config
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    return model


def layer_params(model: torch.nn.Module) -> list[int]:
    return [sum(p.numel() for p in layer.parameters()) for layer in get_family(model).layers(model)]


def shortgpt_bi(lm, texts: list[str], settings: ProfileSettings, cache=None) -> np.ndarray:
    """Block Influence of the loaded model on `texts`, cached by model identity, texts and settings."""
    from diet.cache import ArtifactCache
    from diet.statistics import stats_key

    cache = cache or ArtifactCache()
    key = stats_key(lm, texts, settings, probe="shortgpt")
    hit = cache.load_json("shortgpt", key)
    if hit is not None:
        return np.asarray(hit["bi"], dtype=np.float64)
    bi = block_influence(lm.model, lm.tokenizer, texts, settings)
    cache.save_json("shortgpt", key, {"bi": bi.tolist(), "texts": len(texts)})
    return bi
