"""DIET Explorer engine: task-aware, training-free structured pruning of LLMs.

Usable without any UI: `python -m diet --help`, or the functions in `diet.api`.
"""

__version__ = "0.1.0"
