"""How much memory a run needs, said before loading — and the memory-saving helpers pruning uses.

Why estimate before loading: an 8B model that does not fit is discovered minutes into loading, as a swap storm or
an out-of-memory kill with no message. The weights' size is known without reading them (config.json and the
safetensors headers give every tensor's dtype and shape), so the run can say in one line what it needs, what is
free, and what to change.

Why `PageReleaser`: transformers 5 keeps weights loaded in the checkpoint's own dtype as views of the
safetensors file mapping. Their pages count in the process's resident memory once read, and they stay there until
the whole mapping goes away — i.e. as long as any weight of that file is alive. When pruning replaces a layer's
weights with sliced copies, the old weights' pages are therefore dropped explicitly (madvise MADV_DONTNEED; a
later read would simply fetch them from the file again), so the dense weights do not linger next to the pruned ones.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diet.errors import DietError

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class Workload:
    """The largest forward pass a run makes: what sizes its biggest activation."""

    batch: int = 8  # sequences per forward pass (profiling: --batch-size; evaluation: contexts per pass)
    tokens: int = 256  # tokens per sequence (profiling: --max-length)


@dataclass(frozen=True)
class Estimate:
    """What loading and running a model needs, in bytes."""

    params: int  # parameters stored in the checkpoint (tied weights once)
    dtype: str  # the dtype the weights will have in memory
    weight_bytes: int  # params at that dtype (8/4-bit: linear weights at 1 or 0.5 byte)
    activation_bytes: int  # the largest activation: batch x tokens x max(vocab, MLP width) in fp32, twice

    @property
    def total(self) -> int:
        return self.weight_bytes + self.activation_bytes


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (dtype, shape and offsets of every tensor) without reading any data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise DietError(f"{path} is not a safetensors file (header length {n})")
        return json.loads(f.read(n))


def checkpoint_tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} over every weight file of a local model folder."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for p in sorted(Path(folder).glob("*.safetensors")):
        if p.name == "mask.safetensors":
            continue
        for name, info in read_safetensors_header(p).items():
            if name != "__metadata__":
                out[name] = (info["dtype"], tuple(info["shape"]))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def config_dtype(config: dict) -> str | None:
    """The dtype a config says its checkpoint was saved in (`dtype`, or the older `torch_dtype`), if it says."""
    for cfg in (config, config.get("text_config") or {}):
        value = cfg.get("dtype") or cfg.get("torch_dtype")
        if value:
            return str(value).removeprefix("torch.")
    return None


def _text_config(config: dict) -> dict:
    return config.get("text_config") or config


def activation_bytes(config: dict, work: Workload) -> int:
    """batch x tokens x max(vocab, MLP width) fp32 values, twice: the logits and their log-softmax (or the gate and
    up outputs) are alive together. Profiling never computes logits, so for it this is on the safe side."""
    cfg = _text_config(config)
    widest = max(int(cfg.get("vocab_size") or 0), int(cfg.get("intermediate_size") or 0))
    return 2 * 4 * work.batch * work.tokens * widest


def estimate(folder: Path, dtype: str, quantization: str | None = None, work: Workload = Workload()) -> Estimate:
    """What loading `folder` in `dtype` and running `work` through it needs, from its files' headers only."""
    config = json.loads((Path(folder) / "config.json").read_text())
    tensors = checkpoint_tensors(folder)
    if tensors:
        params = sum(_numel(shape) for _, shape in tensors.values())
    else:  # .bin checkpoints have no cheap header: count from the files' size at the config's dtype
        files = [p for p in Path(folder).glob("*.bin")]
        size = DTYPE_BYTES.get(config_dtype(config) or "float32", 4)
        params = sum(p.stat().st_size for p in files) // size
    per = DTYPE_BYTES.get(dtype, 4)
    weights = params * per
    if quantization:
        cfg = _text_config(config)
        embed = int(cfg.get("vocab_size") or 0) * int(cfg.get("hidden_size") or 0)
        per_linear = 1.0 if quantization == "8bit" else 0.5
        weights = int(embed * per + max(params - embed, 0) * per_linear)
    return Estimate(params=params, dtype=dtype, weight_bytes=int(weights),
                    activation_bytes=activation_bytes(config, work))


def free_ram() -> int:
    """Bytes the kernel says a new allocation can get without swapping (/proc/meminfo MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return sys.maxsize  # unknown (not Linux): never refuse on a guess


def free_gpu(device: str) -> int:
    """Free bytes on a CUDA device (torch.cuda.mem_get_info)."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def free_bytes(device: str) -> tuple[int, str]:
    """(free bytes, what they are) where the weights will live: the GPU for cuda devices, else RAM."""
    if device.startswith("cuda"):
        return free_gpu(device), f"free memory on {device}"
    return free_ram(), "free RAM"


def check_fits(name: str, est: Estimate, device: str, work: Workload, quantization: str | None = None) -> None:
    """Refuse, in one line with the numbers and the ways out, a run that cannot fit where it would load."""
    free, where = free_bytes(device)
    if est.total <= free:
        return
    ways = []
    if est.dtype == "float32":
        ways.append("--dtype bfloat16 (half the weight bytes)")
    ways.append("--device-map auto (spreads layers over GPUs, CPU and disk)")
    if quantization != "4bit":
        ways.append("--quantization 4bit (profiling only)")
    ways.append("a smaller --batch-size or --max-length (activations)")
    raise DietError(f"{name} needs about {est.total / GB:.1f} GB ({est.params / 1e9:.2f}B parameters = "
                    f"{est.weight_bytes / GB:.1f} GB of {quantization or est.dtype} weights + "
                    f"{est.activation_bytes / GB:.1f} GB for activations at {work.batch} x {work.tokens} tokens) "
                    f"but only {free / GB:.1f} GB of {where} is available: use " + ", ".join(ways))


# ------------------------------------------------------------------------------------------- file-backed pages


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's memory mappings that are backed by a regular weight file."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip().endswith((".safetensors", ".bin")):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    out.append((start, end))
    except OSError:
        pass
    return out


class PageReleaser:
    """Drops the resident pages of file-backed weights that pruning has replaced (see the module docstring).

    Only pages inside a mapping of a weight file are touched: for those, MADV_DONTNEED loses nothing (a later read
    re-fetches the file's bytes), so even a tensor that something else still references stays correct.
    """

    MADV_DONTNEED = 4

    def __init__(self) -> None:
        self.mappings = _file_mappings() if sys.platform.startswith("linux") else []
        self.page = os.sysconf("SC_PAGE_SIZE") if self.mappings else 4096
        self._madvise: Callable | None = None
        if self.mappings:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            self._madvise = libc.madvise
        self.released = 0  # bytes given back so far

    def release(self, tensor) -> None:
        """Give back the whole pages of `tensor`'s data when they lie in a weight-file mapping (CPU tensors only)."""
        if self._madvise is None or tensor is None or tensor.device.type != "cpu":
            return
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not any(a <= start and end <= b for a, b in self.mappings):
            return
        lo = -(-start // self.page) * self.page  # whole pages inside the tensor only
        hi = end // self.page * self.page
        if hi > lo and self._madvise(lo, hi - lo, self.MADV_DONTNEED) == 0:
            self.released += hi - lo
