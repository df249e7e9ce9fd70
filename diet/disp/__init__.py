"""DISP-LLM's dimension-independent structure, and training-free index sets chosen like DIET chooses channels.

The structure (arXiv 2410.11988): the residual stream, embeddings, every norm and the lm_head keep their full
width; each decoder layer gets five *index sets* over its own dimensions —

    attn_in   residual dims that feed q/k/v (chosen *after* the input norm, which still normalises the full width)
    attn_out  residual dims that o_proj writes to
    mlp_in    residual dims that feed gate/up (after the pre-MLP norm, over the full width)
    mlp_mid   MLP intermediate channels
    mlp_out   residual dims that down_proj writes to

and runs as: norm over the full residual → `index_select` the block's input dims → the narrower block →
`index_add` of its output into the selected residual dims. That is *exactly* the masked-dense model (the pruned
columns/rows zeroed), which `zero_disp` builds as the reference. Gemma-2/3's post-block norms normalise over the full
width, so their block output is scattered into zeros first and normalised there: still exact.

Why the norm-then-select order matters: RMSNorm divides by the RMS of *all* residual dims; selecting first would
change that denominator and the model would no longer be the masked one.

Training-free index sets: the same per-task activation statistics DIET uses (mean |x| or RMS, summed in fp32 over
non-padding tokens, cached), taken at the five positions, turned into per-task masks and merged by DIET's vote with
`diet.masks` — so every DIET view and slider applies per position.

The package, one concern a module:

    structure.py       the five positions, the masked-dense reference (`zero_disp`), slicing (`slice_disp`),
                       the paper's parameter accounting
    statistics.py      the hooks at the five positions; profiling and caching through `diet.statistics.profile`
    masks.py           training-free index sets: DIET's per-task masks and vote per position (numpy only)
    learn.py           learned index sets: the paper's hypernetwork
    export.py          export folders and the one-call `prune_disp`
    modeling_disp.py   the layer code (torch + transformers only) that every export folder carries, so a reloaded
                       folder runs the very same forward as the in-memory model
"""

from diet.autoload import register_classes
from diet.disp.export import export_disp, load_disp, prune_disp, to_disp_class
from diet.disp.learn import LearnResult, LearnSettings, learn_index_sets, task_texts
from diet.disp.masks import DispMaskResult, DispSettings, build_disp_masks, keep_fractions
from diet.disp.modeling_disp import CLASSES
from diet.disp.statistics import POSITION_PROBE, is_disp_profiled, profile_disp, profile_positions
from diet.disp.structure import (
    DISP_FAMILIES,
    POSITION_LABELS,
    POSITION_SHORT,
    POSITION_WHAT,
    POSITIONS,
    RESIDUAL,
    DispShape,
    IndexSets,
    block_params,
    check_sets,
    counts_of,
    disp_copy,
    disp_layers,
    disp_shape,
    index_sets_of,
    is_disp_layer,
    param_summary,
    slice_disp,
    unit_word,
    zero_disp,
)

register_classes(CLASSES)  # DISP folders then load without trust_remote_code wherever diet.disp is imported

__all__ = [
    "DISP_FAMILIES", "POSITIONS", "POSITION_LABELS", "POSITION_SHORT", "POSITION_WHAT", "RESIDUAL", "unit_word",
    "POSITION_PROBE", "DispMaskResult", "DispSettings", "DispShape",
    "IndexSets", "LearnResult", "LearnSettings", "block_params", "build_disp_masks", "check_sets", "counts_of",
    "disp_copy", "disp_layers", "disp_shape", "export_disp", "index_sets_of", "is_disp_layer", "is_disp_profiled",
    "keep_fractions", "learn_index_sets", "load_disp", "param_summary", "profile_disp", "profile_positions",
    "prune_disp", "slice_disp", "task_texts", "to_disp_class", "zero_disp",
]
