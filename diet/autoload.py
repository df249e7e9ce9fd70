"""Registration of DIET's model classes with transformers' Auto classes, so exported folders load without
`trust_remote_code` wherever `diet` is imported.

The heterogeneous classes live in `diet/export/modeling_diet.py`, a self-contained file that `save_pretrained` copies
into the folder (so `trust_remote_code=True` loads it where `diet` is not installed). Where `diet` *is* imported,
the classes are registered with `AutoConfig` / `AutoModelForCausalLM`, so the folder loads without it. DISP's classes
(`diet.disp`) are registered through `register_classes` the same way.

Why registration waits for transformers: importing transformers costs seconds, and `python -m diet --help` or
`diet tasks` need none of it. `import diet` therefore registers at once when transformers is already imported, and
otherwise right after transformers' own import finishes (a one-shot import hook) — before any `from_pretrained`
call can run. Why its own module, outside `diet/export/`: `import diet` runs it, so it must stay this cheap (the
standard library only), whatever the export package grows to import.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

_registered = False


def register() -> None:
    """Register every heterogeneous config/model class with the Auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    from diet.export.modeling_diet import CLASSES

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
