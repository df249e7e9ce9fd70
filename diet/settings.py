"""Frozen settings for every kind of run. Their canonical JSON hash is the cache key.

Why frozen dataclasses: a run is fully described by its settings; hashing their canonical JSON gives a key that
changes exactly when something that determines the numbers changes, and the same JSON is stored next to every
artifact so anyone can see what produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from diet.errors import DietError

CACHE_FORMAT_VERSION = 2  # bump when the layout or meaning of cached statistics changes (2: per-sequence sums)

DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Where converted models, statistics and results live. `DIET_CACHE` overrides ~/.cache/diet."""
    return Path(os.environ.get("DIET_CACHE") or Path.home() / ".cache" / "diet")


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # what --dtype accepts; "auto" = the checkpoint's own


def canonical_json(obj) -> str:
    """Sorted keys, no whitespace variation: the same settings always give the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def one_of(what: str, value, allowed) -> None:
    """The one message for a value outside its list of choices: "unknown <what> 'x': use one of a, b, c"."""
    if value not in allowed:
        raise DietError(f"unknown {what} {value!r}: use one of {', '.join(allowed)}")


def within(value, low, high, message: str) -> None:
    """Refuse `value` outside [low, high] with `message` (each setting says what its range means)."""
    if not low <= value <= high:
        raise DietError(message)


def sha256_of(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how. Only `name`, `revision`, `dtype` and `quantization` change the numbers."""

    name: str = DEFAULT_MODEL  # "smollm2-135m" (embedded), a Hugging Face id, or a local folder
    revision: str | None = None  # hub revision (branch, tag or commit); None = the default branch
    dtype: str = "auto"  # "auto" = the dtype the checkpoint was saved in (float32 when it names none), or
    #                      "float32", "bfloat16", "float16"; profiling sums are fp32 regardless. A LoadedModel's
    #                      spec always holds the concrete dtype (it enters cache keys), never "auto"
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1"...
    device_map: str | None = None  # accelerate placement: "auto" (GPUs, then CPU, then disk), or a JSON object
    #                               {"module name": device, ...} with devices like 0, "cpu", "disk"
    offload_folder: str | None = None  # where accelerate writes layers a device map puts on "disk"
    quantization: str | None = None  # None, "8bit" or "4bit" (bitsandbytes; for profiling only)
    trust_remote_code: bool = False  # only when the user asks: it runs code from the model folder

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CHOICES:
            raise DietError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPE_CHOICES)} (auto = the "
                            "checkpoint's own)")
        if self.quantization not in (None, "8bit", "4bit"):
            raise DietError(f"unknown quantization {self.quantization!r}: use 8bit or 4bit (or none)")


UNITS = ("mlp", "heads")  # the prunable units a run may name; diet.adapters.UNIT_CLASSES holds one class per name


@dataclass(frozen=True)
class ProfileSettings:
    """How calibration statistics are collected for one (model, task) pair."""

    samples: int = 100  # calibration texts per task (the paper's 100), chosen with `seed` from the task's pool
    seed: int = 0  # seeded choice of the texts: same seed, same texts, same statistics
    max_length: int = 256  # tokens per text; longer texts are truncated (right side)
    batch_size: int = 8  # texts per forward pass; does not change the numbers beyond fp32 summation order
    unit: str = "mlp"  # prunable unit: "mlp" = MLP intermediate channels (down_proj inputs);
    #                    "heads" = attention heads, whole KV groups under GQA (o_proj inputs)

    def __post_init__(self) -> None:
        within(self.samples, 1, 100_000, f"samples must be between 1 and 100000, got {self.samples}")
        within(self.max_length, 8, 131_072, f"max length must be between 8 and 131072 tokens, got {self.max_length}")
        if self.batch_size < 1:
            raise DietError(f"batch size must be at least 1, got {self.batch_size}")
        if self.unit not in UNITS:
            raise DietError(f"unknown unit {self.unit!r}: supported units: {', '.join(UNITS)}")

    def key_fields(self) -> dict:
        """The fields that determine the numbers (batch size does not)."""
        d = asdict(self)
        d.pop("batch_size")
        return d


SCORES = ("mean_abs", "rms")
MERGES = ("budget", "threshold")
ALLOCATIONS = ("layer", "global")


@dataclass(frozen=True)
class MaskSettings:
    """How per-task statistics become one global mask. Pure numpy; no model needed."""

    sparsity: float = 0.2  # fraction of the unit removed (0 <= s < 1), e.g. 0.2 = drop 20% of MLP channels
    score: str = "mean_abs"  # per-channel score: "mean_abs" (mean |x|, our default) or "rms" (sqrt(mean x^2))
    merge: str = "budget"  # "budget": rank by votes, ties by mean normalised score, keep exactly the target;
    #                        "threshold": keep a channel if at least `threshold` task masks keep it
    threshold: int | None = None  # k for merge="threshold"; None = strict majority (floor(T/2) + 1)
    allocation: str = "layer"  # "layer": same kept count in every layer (our default, stock config);
    #                            "global": rank across layers after per-layer normalisation
    min_keep: float = 0.05  # global allocation only: every layer keeps at least this fraction of its channels

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise DietError(f"sparsity must be in [0, 1) (a fraction of channels removed), got {self.sparsity}")
        one_of("score", self.score, SCORES)
        one_of("merge", self.merge, MERGES)
        one_of("allocation", self.allocation, ALLOCATIONS)
        if self.threshold is not None and self.threshold < 1:
            raise DietError(f"threshold must be at least 1, got {self.threshold}")
        if not 0.0 < self.min_keep <= 1.0:
            raise DietError(f"min_keep must be in (0, 1], got {self.min_keep}")

    def resolved_threshold(self, n_tasks: int) -> int:
        """The vote threshold k for T tasks; refuses k > T with a clear message."""
        k = self.threshold if self.threshold is not None else n_tasks // 2 + 1
        if k > n_tasks:
            raise DietError(f"threshold {k} is above the number of tasks ({n_tasks}): use 1..{n_tasks}")
        return k


FUSION_NORMS = ("rank", "zscore")
CALIBRATIONS = ("default", "general", "tasks")
POOL_WEIGHTS = ("tokens", "tasks")


@dataclass(frozen=True)
class MethodSettings:
    """Which scoring method turns statistics into a mask, and its own knobs (see docs/methods.md).

    The method name is checked against the registry in diet/methods.py (which imports this module, not the reverse).
    """

    method: str = "diet"  # a name from diet.methods.list_methods(); "diet" = task masks merged by vote
    calibration: str = "default"  # data of the single-score baselines: "default" = what the method's paper used
    #                               (general text for wanda-sp, flap, minitron, task-agnostic); "general"; "tasks" =
    #                               all task statistics pooled into one (isolates the vote from the data)
    tau: float = 0.9  # task-fusion: a channel is task-exclusive if task/general RMS ratio is above this quantile
    alpha: float = 0.5  # task-fusion: weight of the general score for shared channels (our default)
    fusion_norm: str = "rank"  # task-fusion: per-layer normalisation before fusing: "rank" (our default) or "zscore"
    single_task: str | None = None  # single-task: which task's mask (None = the only task given)
    seed: int = 0  # random: seed of the random choice of units
    flap_bias: bool = True  # flap: add FLAP's bias compensation (mean input of pruned units through the out proj)
    pool_weight: str = "tokens"  # pooled: "tokens" = the tasks' sums added (every token counts once);
    #                              "tasks" = the mean of each task's score (every task counts once)

    def __post_init__(self) -> None:
        one_of("calibration", self.calibration, CALIBRATIONS)
        within(self.tau, 0.0, 1.0, f"tau must be in [0, 1] (a quantile), got {self.tau}")
        within(self.alpha, 0.0, 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        one_of("fusion norm", self.fusion_norm, FUSION_NORMS)
        one_of("pool weight", self.pool_weight, POOL_WEIGHTS)


COMPENSATIONS = ("none", "bias", "lstsq")
TARGETS = ("dense", "layer")


@dataclass(frozen=True)
class CompensationSettings:
    """What happens to the output projection after units are removed (see docs/methods.md, "Compensation").

    Training-free, closed form; the weights keep the stock shapes, so every export mode still loads as before.
    """

    method: str = "none"  # "none"; "bias": FLAP's mean-activation bias W[:, removed] · E[x_removed] on the output
    #                       projection; "lstsq": least-squares refit of the output projection's kept columns
    ridge: float = 0.01  # lstsq: damping λ = ridge × mean diagonal of E[x_K x_Kᵀ] (a relative ridge, as SparseGPT)
    samples: int = 32  # lstsq: calibration texts per task the fit reads (seeded choice from each task's pool)
    seed: int = 0  # lstsq: seed of that choice
    max_length: int = 256  # lstsq: tokens per text, longer ones truncated
    batch_size: int = 16  # lstsq: texts per forward pass (does not change the numbers beyond fp32 summation order)
    target: str = "layer"  # lstsq: layers are fitted in order, on the inputs the already-compensated layers
    #                        before them produce; "layer" = to the layer's own unpruned output on those inputs
    #                        (default: lower held-out loss, bench/compensation.py); "dense" = to the dense
    #                        model's output of that projection on the dense model's inputs

    def __post_init__(self) -> None:
        one_of("compensation", self.method, COMPENSATIONS)
        within(self.ridge, 0.0, 100.0, f"ridge must be in [0, 100] (relative to the mean diagonal), got {self.ridge}")
        within(self.samples, 1, 100_000, f"compensation samples must be between 1 and 100000, got {self.samples}")
        one_of("lstsq target", self.target, TARGETS)
        if self.batch_size < 1 or self.max_length < 8:
            raise DietError("compensation batch size must be >= 1 and max length >= 8 tokens")

    def key_fields(self) -> dict:
        """What determines the compensated weights (nothing but the method when it is not lstsq)."""
        if self.method != "lstsq":
            return {"method": self.method}
        d = asdict(self)
        d.pop("batch_size")
        return d


@dataclass(frozen=True)
class ClusterSettings:
    """Where the independent units of a run (one task's statistics, one sweep cell, one evaluation) are computed
    when they leave this process (diet/cluster/, docs/scale.md). None of these change a number."""

    address: str = "local"  # "local": start Ray on this machine; "auto": join the cluster `ray start` runs here;
    #                         "host:port": join that cluster's head
    cpus_per_worker: int | None = None  # CPU-only clusters: cores (torch threads) per worker; None = chosen from
    #                                     the cluster's cores and memory (printed); GPU clusters: one worker per GPU
    max_workers: int | None = None  # at most this many workers (None = as many as the resources allow)
    retries: int = 2  # a unit whose worker died is given to another worker at most this many times
    local_cpus: int | None = None  # "local" only: cores the Ray instance may use (None = all of this machine's)

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise DietError("--ray needs local, auto or the head's host:port")
        for name in ("cpus_per_worker", "max_workers", "local_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DietError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
        if self.retries < 0:
            raise DietError(f"retries must be 0 or more, got {self.retries}")
