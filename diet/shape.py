"""What the mask math needs to know about a model, as plain numbers: `ModelShape`. Pure python (no torch, no numpy).

Why its own leaf module: the adapters measure it from a model, the profiler stores it with the statistics, the
methods, the mask files, pruning and export read it, and none of those should need a model (or each other) to do so.
It travels as a plain dict inside JSON (statistics metadata, mask files), so `to_dict`/`from_dict` are the one
conversion, and everything in between reads typed fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diet.errors import DietError


@dataclass(frozen=True)
class ModelShape:
    """The prunable units of one model, per layer."""

    family: str | None  # the adapter family ("llama", "qwen2", …); None for an old mask file that did not record it
    unit: str  # what a mask entry removes: "mlp" (one MLP channel) or "heads" (one KV group of attention heads)
    widths: tuple[int, ...]  # prunable units per layer
    params_per_unit: tuple[int, ...]  # weights removed with one unit, per layer
    total_params: int  # every parameter of the dense model (embeddings included)
    stat_widths: tuple[int, ...] | None = None  # profiled channels per layer (heads: heads × head_dim); None = widths

    def __post_init__(self) -> None:
        # Normalise sequences to tuples of ints, so shapes from JSON and from a model compare equal.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "params_per_unit", tuple(int(p) for p in self.params_per_unit))
        object.__setattr__(self, "total_params", int(self.total_params))
        if self.stat_widths is not None:
            object.__setattr__(self, "stat_widths", tuple(int(w) for w in self.stat_widths))
        if len(self.params_per_unit) != len(self.widths):
            raise DietError(f"model shape: {len(self.widths)} layer widths but {len(self.params_per_unit)} "
                            "parameter counts")

    @property
    def layers(self) -> int:
        return len(self.widths)

    @property
    def uniform(self) -> bool:
        """Every layer has the same number of units (what the stacked (L, width) arrays assume)."""
        return len(set(self.widths)) <= 1

    def to_dict(self) -> dict:
        """JSON-ready form (lists, not tuples), with the layer count for people reading the file."""
        d = asdict(self)
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, "layers": self.layers}

    @classmethod
    def from_dict(cls, d: dict) -> ModelShape:
        """Read `to_dict` output or an older dict (no `stat_widths`, no `family`); KeyError/TypeError if malformed."""
        return cls(family=d.get("family"), unit=d.get("unit", "mlp"), widths=d["widths"],
                   params_per_unit=d["params_per_unit"], total_params=d["total_params"],
                   stat_widths=d.get("stat_widths"))
