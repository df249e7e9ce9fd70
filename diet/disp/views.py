"""DISP's views in numbers and figures, per position: what the DISP page and the DISP report show.

Why in the engine (and not in the page): the app's DISP page and `python -m diet prune --method disp --report` must
show the same figures with the same captions, as `diet.report` does for DIET masks. Everything here reads a
`DispMaskResult` and cached statistics: no model, no forward pass.
"""

from __future__ import annotations

import numpy as np

from diet import masks as M
from diet import viz
from diet.disp.masks import DispMaskResult
from diet.disp.structure import POSITION_SHORT as SHORT
from diet.disp.structure import POSITION_WHAT as WHAT
from diet.disp.structure import POSITIONS, RESIDUAL, unit_word


def position_rows(result: DispMaskResult) -> list[dict]:
    """One row per position: what it selects, its width, how much is kept, how much the task masks agree."""
    rows = []
    for pos in POSITIONS:
        kept = M.kept_per_layer(result.masks[pos])
        width = int(result.masks[pos].shape[1])
        lo, hi = int(kept.min()), int(kept.max())
        row = {"position": pos, "selects": WHAT[pos], "pruned": pos in result.settings.positions, "width": width,
               "kept per layer": f"{lo}" if lo == hi else f"{lo}–{hi}", "kept": float(kept.sum() / kept.size / width)}
        T = len(result.tasks)
        if T > 1:
            J = np.asarray(result.summary["jaccard"][pos], dtype=np.float64)
            C = viz.chance_matrix(result.task_masks[pos])
            off = ~np.eye(T, dtype=bool)
            row["mean Jaccard between tasks"] = float(J[off].mean())
            row["chance"] = float(C[off].mean())
        rows.append(row)
    return rows


def retitle(fig, title: str, **axes):
    """`fig` with its title (and axis titles) set: viz's DIET figures, worded for a DISP position."""
    fig.update_layout(title_text=title, **axes)
    return fig


def position_figures(result: DispMaskResult, stats: dict, pos: str) -> list[tuple[str, str, object]]:
    """(key, caption, figure) for one position: kept dims per layer, votes, kept count per layer, task overlap.

    Residual dims are shown in their own order: dim d is the same residual coordinate in every layer, so vertical
    stripes mean the layers keep the same dims. MLP channels carry no order: they are sorted by score (DIET's view).
    """
    names, T = list(result.tasks), len(result.tasks)
    mask, width = result.masks[pos], result.masks[pos].shape[1]
    what, word = WHAT[pos], unit_word(pos)
    order = None
    if pos not in RESIDUAL:
        score = np.mean([M.normalise(M.scores_from(stats[n][pos], result.settings.score)) for n in names], axis=0)
        order = viz.order_by(score)
    bins = len(viz.bin_edges(width)) - 1
    xtitle = (f"{word}s sorted by mean score, highest first" if order is not None
              else f"{word} (the same dim in every layer)") + f" — {width} per layer" + (
        f", {bins} bins" if bins < width else "")
    out = [(f"{pos}-kept", f"Each row is a layer, each column {'a bin of ' if bins < width else ''}{what}; colour = "
            "fraction kept (dark = kept, light = removed)."
            + (" Vertical stripes: the layers keep the same residual dims." if order is None else ""),
            retitle(viz.kept_overview(mask, "", order, unit=word), f"{SHORT[pos]}: which {what} are kept",
                     xaxis_title=xtitle))]
    if T > 1:  # MLP channels: each layer's sorted by votes (their order means nothing); residual dims in place
        sort = order is not None
        out.append((f"{pos}-votes", f"Colour = in how many of the {T} task masks each {word} is kept; the merged "
                    "index set keeps the most-voted ones.",
                    retitle(viz.votes_map(result.votes[pos], T, sort=sort, unit=word),
                             f"{SHORT[pos]}: votes per {word}",
                             xaxis_title=f"{word}s sorted by votes, most first" if sort
                             else f"{word} (the same dim in every layer)")))
    per_task = result.task_masks[pos].sum(-1) if T > 1 else None
    out.append((f"{pos}-layers", f"{word[0].upper()}{word[1:]}s kept per layer by the merged index set (bars) out of "
                "the width (line); one line per task where their counts differ.",
                retitle(viz.kept_per_layer(M.kept_per_layer(mask), [width] * mask.shape[0], per_task, names),
                         f"{SHORT[pos]}: kept {word}s per layer", yaxis_title=f"{word}s")))
    if T > 1:
        out.append((f"{pos}-jaccard", "Jaccard overlap |A∩B| / |A∪B| of two task masks at this position over all "
                    "layers (1 = identical); hover for the chance level of independent masks of the same sizes.",
                    retitle(viz.jaccard_matrix(np.asarray(result.summary["jaccard"][pos]), names,
                                                viz.chance_matrix(result.task_masks[pos])),
                             f"{SHORT[pos]}: overlap between task masks (Jaccard)")))
    return out
