"""How a GGUF file's matrices meet block quantization: the channel order written, and the tensor types a file holds.

Why reorder: Q8_0 stores each row in blocks of 32 consecutive values with one scale (the block's largest |value| ÷
127), and llama.cpp's Q8_0 matrix product rounds its input vector the same way. One large value in a block coarsens
the other 31. The order of a layer's MLP channels is free — permuting ffn_gate/ffn_up rows together with ffn_down
columns computes exactly the same function — but it decides which channels share a block of ffn_down's rows and of
its input. Sorting each layer's channels by the largest |weight| of their ffn_down column puts the large columns
together, so they no longer set the scale of blocks of small ones. The f32/f16 files keep the model's own order
(nothing to gain, and byte-identical to the unsorted export).
"""

from __future__ import annotations

import re

import numpy as np

MLP_IN = ("ffn_gate", "ffn_up")  # roles whose rows are the layer's MLP channels (a fused ffn_up: gate rows, up rows)
MLP_OUT = "ffn_down"  # the role whose columns are the MLP channels
_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def channel_order(down: np.ndarray) -> np.ndarray:
    """The sorted order of one layer's MLP channels: ascending largest |weight| of each ffn_down column (stable)."""
    return np.argsort(np.abs(down).max(axis=0), kind="stable")


def order_mlp_channels(arrays: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """`arrays` (GGUF name, [out, in] array) with each layer's MLP channels in `channel_order`: ffn_gate/ffn_up rows
    and biases (both halves of a fused gate/up) and ffn_down columns permuted together, so the function is unchanged.
    A layer whose tensors do not have that shape is left as it is."""
    by_layer: dict[int, dict[str, int]] = {}
    for k, (name, _) in enumerate(arrays):
        m = _NAME.match(name)
        if m:
            by_layer.setdefault(int(m[1]), {})[f"{m[2]}.{m[3]}"] = k
    out = list(arrays)
    for idx in by_layer.values():
        down = idx.get(f"{MLP_OUT}.weight")
        if down is None:
            continue
        width = arrays[down][1].shape[1]
        rows = [k for key, k in idx.items() if key.split(".")[0] in MLP_IN]
        if not rows or any(arrays[k][1].shape[0] not in (width, 2 * width) for k in rows):
            continue
        order = channel_order(arrays[down][1])
        out[down] = (arrays[down][0], np.ascontiguousarray(arrays[down][1][:, order]))
        for k in rows:
            name, a = arrays[k]
            full = order if a.shape[0] == width else np.concatenate([order, width + order])
            out[k] = (name, np.ascontiguousarray(a[full]))
    return out


FIT_FACTORS = np.linspace(0.8, 1.2, 81)  # candidate scales per block, × llama.cpp's own (largest |value| ÷ 127)


def quantize_q8_0_fit(a: np.ndarray, factors: np.ndarray = FIT_FACTORS, chunk: int = 1 << 16) -> np.ndarray:
    """Q8_0 bytes of `a` (rows of a multiple of 32 values) with each block's scale chosen to minimise the block's
    squared error among llama.cpp's own scale and `factors` × it (values past ±127 clipped). The format stores only
    the scale (f16) and 32 int8 values, so llama.cpp reads the file as any Q8_0; a block is never worse than
    llama.cpp's own rounding (its bytes are kept unless a candidate is strictly better)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    rows = a.shape[0]
    blocks = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, 32)
    out = quantize(blocks, Q.Q8_0)  # (n, 34): f16 scale, 32 int8
    for start in range(0, len(blocks), chunk):
        x, o = blocks[start:start + chunk], out[start:start + chunk]
        d = o[:, :2].copy().view(np.float16).astype(np.float32)
        qs = o[:, 2:].copy().view(np.int8)
        err = ((x - qs * d) ** 2).sum(1)
        base = np.abs(x).max(1, keepdims=True) / 127
        for f in factors:
            d_f = (base * f).astype(np.float16).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                q_f = np.clip(np.rint(np.where(d_f == 0, 0, x / d_f)), -127, 127)
            e = ((x - q_f * d_f) ** 2).sum(1)
            better = e < err
            err[better], d[better], qs[better] = e[better], d_f[better], q_f[better].astype(np.int8)
        o[:, :2] = d.astype(np.float16).view(np.uint8)
        o[:, 2:] = qs.view(np.uint8)
    return out.reshape(rows, -1)


def tensor_type_words(types: dict[str, str]) -> str:
    """One line naming the tensor types of a GGUF file from {tensor name: type name}: the matrices' most common type,
    the roles stored otherwise, then the 1-D tensors' where they differ — e.g. "Q8_0 except ffn_down F16; norms F32"."""
    matrices: dict[str, set[str]] = {}
    vectors: set[str] = set()
    for name, kind in types.items():
        role = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        if role.endswith("norm") or name.endswith(".bias"):
            vectors.add(kind)
        else:
            matrices.setdefault(role, set()).add(kind)
    counts: dict[str, int] = {}
    for kinds in matrices.values():
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
    main = max(counts, key=lambda k: (counts[k], k)) if counts else None
    other: dict[str, list[str]] = {}
    for role in sorted(matrices):
        for kind in sorted(matrices[role] - {main}):
            other.setdefault(kind, []).append(role)
    words = main or ""
    if other:
        words += " except " + ", ".join(f"{', '.join(roles)} {kind}" for kind, roles in sorted(other.items()))
    if vectors and (vectors != {main} or other):
        biases = " and biases" if any(n.endswith(".bias") for n in types) else ""
        words += f"; norms{biases} {'/'.join(sorted(vectors))}"
    return words


def file_tensor_types(path) -> dict[str, str]:
    """{tensor name: type name} as a GGUF file really holds them (read from its header)."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
