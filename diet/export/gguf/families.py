"""What each family looks like in llama.cpp: its GGUF architecture, its family-specific metadata and its tensors.

Why one module: llama.cpp has an architecture per family, each with its own keys and tensor layout, and the converter
(`convert_hf_to_gguf.py`) changes some tensors on the way (Gemma's norms, q/k rows for NORM rope). Keeping those rules
together keeps `writer.py` beside it a plain writer. The module names come from `diet.adapters.gguf_parts` (roles).

- Uniform widths: the family's own architecture (`llama` for Llama/Mistral, `qwen2`, `phi3`, `gemma2`, `gemma3`).
- Per-layer widths: `deci`, which builds every layer at its own width but has plain pre-norm Llama blocks with NORM
  rope. Phi-3 fits once its fused qkv and gate_up are split; Gemma does not (sandwich norms, soft-capping, embedding
  scale), so it is refused before any work (uniform or padded work).
- Rope: llama and deci rotate interleaved pairs (NORM), so q/k rows are permuted as the converter does for Llama;
  qwen2, phi3 and the Gemmas rotate halves (NEOX) like Hugging Face, so their rows keep Hugging Face order.
- Gemma's RMSNorm multiplies by (1 + weight): the converter stores weight + 1 and llama.cpp multiplies by it.
- Llama-3.1/3.2's "llama3" rope divides each rotary frequency by its own factor (1 for short wavelengths, `factor` for
  long ones, a smooth blend between): llama.cpp has no scaling type for it, so, as its converter does, the file keeps
  rope scaling off and holds the factors as an F32 tensor `rope_freqs.weight` that llama and deci apply per frequency.
"""

from __future__ import annotations

import math

import numpy as np

from diet.errors import DietError

UNIFORM_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "phi3": "phi3", "gemma2": "gemma2",
                "gemma3": "gemma3"}  # family -> llama.cpp's own architecture
PER_LAYER_ARCH = "deci"
PER_LAYER_FAMILIES = ("llama", "mistral", "qwen2", "phi3")  # families whose blocks deci runs
NEOX_ROPE = ("qwen2", "phi3", "gemma2", "gemma3")  # architectures that rotate halves: q/k keep Hugging Face order
NORM_PLUS_ONE = ("gemma2", "gemma3")  # families whose norms multiply by (1 + weight)
SWA_EVERY = {"gemma2": 2, "gemma3": 6}  # llama.cpp's fixed pattern: every n-th layer is global, the rest sliding
BIG_LAYERS = {"gemma2": 46, "gemma3": 62}  # layer count of the 27B models, which llama.cpp scales by n_embd/n_head
GEMMA3_LOCAL_THETA = 10000.0  # llama.cpp's fixed rope base of Gemma-3's sliding layers
FREQ_FACTOR_FAMILIES = ("llama", "mistral")  # families whose llama.cpp architectures (llama, deci) read rope_freqs


def _params(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or {})


def rope(config, family: str) -> tuple[float, float | None]:
    """(rope base, linear scaling factor or None) of the global layers; other rope scaling is refused."""
    params = _params(config)
    if family == "gemma3" and "full_attention" in params:
        local = params.get("sliding_attention", {})
        if local.get("rope_type", "default") != "default" or local.get("rope_theta") != GEMMA3_LOCAL_THETA:
            raise DietError(f"llama.cpp runs Gemma-3's sliding layers with plain rope base {GEMMA3_LOCAL_THETA:g}; "
                            f"this model's are {local}: export --export-mode uniform or padded instead")
        params = params["full_attention"]
    kind = params.get("rope_type", "default") or "default"
    if kind not in ("default", "linear") and not (kind == "llama3" and family in FREQ_FACTOR_FAMILIES):
        raise DietError(f"GGUF export does not write {kind!r} rope scaling for {family} yet (plain and linear rope, "
                        "and llama3 for Llama/Mistral): export --export-mode uniform or padded instead")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise DietError("the model config names no rope_theta")
    return float(theta), (float(params["factor"]) if kind == "linear" else None)


def rope_freq_factors(config, family: str, n_dims: int) -> np.ndarray | None:
    """llama3 rope's divisor per rotary frequency, as llama.cpp's converter computes rope_freqs.weight (None: the
    model's rope is not llama3). Wavelengths below original_max_position_embeddings / high_freq_factor keep their
    frequency, those above original / low_freq_factor are divided by `factor`, and the ones between blend the two."""
    theta, _ = rope(config, family)
    params = _params(config)
    if params.get("rope_type") != "llama3":
        return None
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    orig = float(params.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, n_dims, 2):
        wavelen = 2 * math.pi * theta ** (i / n_dims)  # 2 pi / frequency
        if wavelen < orig / high:
            out.append(1.0)
        elif wavelen > orig / low:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def rope_dims(config, plan) -> int:
    """Rotated dimensions per head (Phi-3 can rotate only a fraction of each head)."""
    part = float(_params(config).get("partial_rotary_factor", None) or getattr(config, "partial_rotary_factor", None)
                 or 1.0)
    if part == 1.0:
        return plan.head_dim
    if plan.arch == PER_LAYER_ARCH:
        raise DietError(f"partial rotary embeddings ({part:g}) are not written for llama.cpp's deci architecture: "
                        "keep the same MLP width in every layer (its own architecture) or export uniform/padded")
    return int(part * int(config.hidden_size)) // plan.heads[0]


def check_config(config, plan) -> None:
    """Refuse, in one line, a config whose attention llama.cpp's architecture for it computes differently."""
    family, layers = plan.family, len(plan.ffn)
    if plan.arch == PER_LAYER_ARCH and family not in PER_LAYER_FAMILIES:  # e.g. per-layer attention heads
        raise DietError(f"{family} cannot run per-layer widths or head counts in llama.cpp (its `deci` architecture "
                        "has no sandwich norms, soft-capping or embedding scale): export --export-mode uniform or "
                        "padded instead")
    if family in SWA_EVERY:
        every = SWA_EVERY[family]
        want = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)]
        if getattr(config, "sliding_window", None) and list(getattr(config, "layer_types", want)) != want:
            raise DietError(f"llama.cpp's {family} makes every {every}th layer global and the rest sliding; this "
                            "model's layer_types differ: export --export-mode uniform or padded instead")
        scale = int(config.hidden_size) // plan.heads[0] if layers == BIG_LAYERS[family] else plan.head_dim
        if float(getattr(config, "query_pre_attn_scalar", scale)) != scale:
            raise DietError(f"llama.cpp's {family} scales attention by 1/sqrt({scale}), this model by 1/sqrt("
                            f"{config.query_pre_attn_scalar}): export --export-mode uniform or padded instead")
    if family == "gemma3" and getattr(config, "attn_logit_softcapping", None):
        raise DietError("llama.cpp's gemma3 has no attention soft-capping: export --export-mode uniform or padded")


def hf_window(config, family: str) -> int | None:
    """The sliding window transformers applies to this model (None: every layer attends to every token)."""
    window = getattr(config, "sliding_window", None)
    if family == "qwen2" and not getattr(config, "use_sliding_window", False):
        return None
    return int(window) if window and family in ("mistral", "qwen2", "phi3") else None


def context_length(config, plan) -> int:
    """The context the file declares. Mistral-7B-v0.1 (4,096) and Phi-3-mini (2,047) slide their attention in
    transformers; llama.cpp's llama, qwen2, deci and (checked: log-probs equal transformers' without the window) phi3
    architectures do not. Up to the window both attend to every token, so such a file declares the window as its
    context (llama.cpp warns when asked for more) instead of a length it would not compute exactly."""
    length = int(config.max_position_embeddings)
    window = hf_window(config, plan.family)
    return min(length, window) if window else length


def write_metadata(writer, config, plan) -> None:
    """The architecture-specific keys, as the converter writes them for the family (after the common ones)."""
    from gguf import RopeScalingType

    theta, factor = rope(config, plan.family)
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(rope_dims(config, plan))
    if factor is not None:
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    if plan.arch == "phi3":
        orig = getattr(config, "original_max_position_embeddings", None) or int(config.max_position_embeddings)
        writer.add_rope_scaling_orig_ctx_len(int(orig))
        writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))
    elif plan.arch in ("gemma2", "gemma3"):
        if getattr(config, "attn_logit_softcapping", None):
            writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
        if getattr(config, "sliding_window", None):
            writer.add_sliding_window(int(config.sliding_window))


# ------------------------------------------------------------------------------------------------ tensors


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp converter's permute for NORM rope: each head's rows (or bias entries) go from the Hugging Face
    half-split order to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _split_fused(role: str, a: np.ndarray, plan, i: int) -> list[tuple[str, np.ndarray]]:
    """Phi-3's fused projections as deci reads them apart: attn_qkv -> q, k, v rows; ffn_up -> gate rows, up rows."""
    if role == "attn_qkv":
        q, k = plan.heads[i] * plan.head_dim, plan.kv_heads[i] * plan.head_dim
        return [("attn_q", a[:q]), ("attn_k", a[q:q + k]), ("attn_v", a[q + k:])]
    half = a.shape[0] // 2
    return [("ffn_gate", a[:half]), ("ffn_up", a[half:])]


def tensors(model, plan) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array in Hugging Face [out, in] layout) for every tensor the file holds."""
    from diet.adapters import gguf_parts

    top, layers = gguf_parts(model)
    shift = 1.0 if plan.family in NORM_PLUS_ONE else 0.0
    out = [("token_embd.weight", _np(top["token_embd"].weight)),
           ("output_norm.weight", _np(top["output_norm"].weight) + shift)]
    if top["output"] is not None and top["output"].weight is not top["token_embd"].weight:
        out.append(("output.weight", _np(top["output"].weight)))
    factors = rope_freq_factors(model.config, plan.family, rope_dims(model.config, plan))
    if factors is not None:  # llama3 rope: one divisor per rotary frequency, shared by every layer
        out.append(("rope_freqs.weight", factors))
    permute = plan.arch not in NEOX_ROPE
    for i, parts in enumerate(layers):
        fused = plan.arch == PER_LAYER_ARCH and "attn_qkv" in parts
        for role, mod in parts.items():
            for kind in ("weight", "bias"):
                t = getattr(mod, kind, None)
                if t is None:
                    continue
                pieces = _split_fused(role, _np(t), plan, i) if fused and role in ("attn_qkv", "ffn_up") \
                    else [(role, _np(t))]
                for name, a in pieces:
                    if permute and name == "attn_q":
                        a = permute_qk(a, plan.heads[i])
                    elif permute and name == "attn_k":
                        a = permute_qk(a, plan.kv_heads[i])
                    elif shift and name.endswith("norm"):
                        a = a + shift
                    out.append((f"blk.{i}.{name}.{kind}", a))
    return out


def layer_heads(model, head_dim: int) -> tuple[list[int], list[int]]:
    """(query heads, key/value heads) per layer, read from the projections' shapes (Phi-3's fused qkv: from the
    config's counts, checked against the fused rows)."""
    from diet.adapters import gguf_parts

    cfg = model.config
    heads, kv = [], []
    for i, p in enumerate(gguf_parts(model)[1]):
        if "attn_qkv" in p:
            h, k = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
            if p["attn_qkv"].out_features != (h + 2 * k) * head_dim:
                raise DietError(f"layer {i}: fused qkv rows do not match {h} query and {k} key/value heads")
        else:
            h, k = p["attn_q"].out_features // head_dim, p["attn_k"].out_features // head_dim
        heads.append(int(h))
        kv.append(int(k))
    return heads, kv
