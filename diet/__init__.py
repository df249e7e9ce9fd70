"""DIET Explorer engine: task-aware, training-free structured pruning of LLMs.

Usable without any UI: `python -m diet --help`, or the functions in `diet.api`.
"""

__version__ = "0.1.0"

# Heterogeneous exports (per-layer MLP widths) load with plain AutoModelForCausalLM once `diet` is imported:
# their config/model classes are registered as soon as transformers is imported (cheap: no import here).
from diet.autoload import register_on_import as _register_on_import  # noqa: E402

_register_on_import()
