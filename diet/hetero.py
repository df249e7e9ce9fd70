"""Heterogeneous export: per-layer MLP widths, loadable by stock transformers with or without `diet`.

The model classes live in `diet/modeling_diet.py`, a self-contained file that `save_pretrained` copies into the
folder (so `trust_remote_code=True` loads it where `diet` is not installed). Where `diet` *is* imported, the classes
are registered with `AutoConfig` / `AutoModelForCausalLM`, so the folder loads without `trust_remote_code`.

Why registration waits for transformers: importing transformers costs seconds, and `python -m diet --help` or
`diet tasks` need none of it. `import diet` therefore registers at once when transformers is already imported, and
otherwise right after transformers' own import finishes (a one-shot import hook) — before any `from_pretrained`
call can run.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING

from diet.errors import DietError

if TYPE_CHECKING:
    import torch

_registered = False


def register() -> None:
    """Register every heterogeneous config/model class with the Auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    from diet.modeling_diet import CLASSES

    register_classes(CLASSES)
    _registered = True


def register_classes(classes: dict) -> None:
    """Register {model_type: (config class, model class)} with AutoConfig / AutoModelForCausalLM (idempotent), so
    folders of those types load without `trust_remote_code` in this process (DIET's heterogeneous widths here,
    DISP's index sets from `diet.disp`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_cls, model_cls in classes.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps transformers' own loader so `register()` runs once transformers is imported."""

    def find_spec(self, name, path, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding us again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                register()
            except Exception as e:  # never break someone's `import transformers` because of us
                warnings.warn(f"diet: could not register the heterogeneous model classes: {e}", stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


def register_on_import() -> None:
    """Called by `import diet`: register now if transformers is loaded, else right after it is."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformers())


def hetero_config(config, widths: list[int]):
    """The heterogeneous subclass of `config`'s family with per-layer `intermediate_sizes`.

    model_type, architectures and transformers_version are dropped from the base dict: the subclass sets its own,
    and a stale `architectures` would point loaders at the stock class.
    """
    from diet.modeling_diet import CLASSES

    if config.model_type not in CLASSES:
        raise DietError(f"heterogeneous export does not support {config.model_type!r} yet; supported: "
                        f"{', '.join(CLASSES)} (use --export-mode padded, which loads anywhere)")
    config_cls, _ = CLASSES[config.model_type]
    base = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map", "intermediate_sizes"):
        base.pop(key, None)
    widths = [int(w) for w in widths]
    base["intermediate_size"] = max(widths)  # informative only: the real widths are `intermediate_sizes`
    return config_cls(**base, intermediate_sizes=widths)


def to_heterogeneous(pruned: torch.nn.Module, widths: list[int]) -> torch.nn.Module:
    """A heterogeneous-class model holding exactly the weights of `pruned` (a stock model sliced per layer)."""
    from diet.modeling_diet import CLASSES

    config = hetero_config(pruned.config, widths)
    _, model_cls = CLASSES[pruned.config.model_type]
    param = next(pruned.parameters())
    model = model_cls._from_config(config, dtype=param.dtype).to(param.device)
    model.load_state_dict(pruned.state_dict(), strict=True)  # any shape mismatch fails loudly, never re-initialises
    model.generation_config = pruned.generation_config
    return model.eval()
