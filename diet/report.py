"""What a mask looks like in words and figures: the views every front end shows and the HTML report.

Why in the engine: the app's Masks, Prune and Export pages and `python -m diet prune --report out.html` must show
the same figures with the same captions and the same references next to every overlap number (docs/app.md, "Why
the references"). Everything here reads a `MaskResult` and cached statistics: no model, no forward pass.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace

import numpy as np

from diet import masks as M
from diet import viz
from diet.api import split_half_overlap
from diet.evaluate import average
from diet.methods import (
    MethodInputs,
    get_method,
    mask_knobs,
    method_knobs,
    pooled_stats,
    run_method,
    unit_scores,
    who_loses,
)
from diet.results import MaskResult, mask_stats, single_mask
from diet.settings import MethodSettings


def method_label(result: MaskResult) -> str:
    """"wanda-sp" or "DIET" — how the pages name the method of a mask."""
    return "DIET" if result.method == "diet" else result.method


def method_and_knobs(result: MaskResult) -> tuple[MethodSettings, set[str]]:
    """The method settings a mask was made with (from its summary) and the settings that shaped it."""
    summary = result.summary
    ms = MethodSettings(**summary["method_settings"]) if "method_settings" in summary else MethodSettings()
    return ms, mask_knobs(result.method, ms) | method_knobs(result.method, ms)


def settings_summary(result: MaskResult) -> str:
    """The method and the settings that shaped this mask, in words — only those that matter for its method."""
    s, summary = result.settings, result.summary
    ms, knobs = method_and_knobs(result)
    parts = []
    if "merge" in knobs:
        parts.append("exact-budget vote" if s.merge == "budget"
                     else f"vote threshold k = {s.resolved_threshold(len(result.tasks))}")
    if "score" in knobs:
        parts.append("mean |x| score" if s.score == "mean_abs" else "RMS score")
    if get_method(result.method).own_allocation or s.allocation == "global":
        parts.append(f"global allocation, each layer keeps at least {s.min_keep:.0%}")
    else:
        parts.append("same count in every layer")
    if "calibration" in knobs:
        parts.append("calibrated on the pooled tasks" if ms.calibration == "tasks" else "calibrated on general text")
    if "general" in knobs and "general_source" in summary:
        parts.append(f"general text: {summary['general_source']}")
    if "tau" in knobs:
        parts.append(f"τ = {ms.tau:g}, α = {ms.alpha:g}, {ms.fusion_norm} normalisation")
    if "seed" in knobs:
        parts.append(f"seed {ms.seed}")
    if "flap_bias" in knobs:
        parts.append("with bias compensation" if ms.flap_bias else "without bias compensation")
    if summary.get("compensation", "none") != "none":
        parts.append(f"{summary['compensation']} compensation")
    return f"{method_label(result)} ({'; '.join(parts)})"



@dataclass(frozen=True)
class OverlapRefs:
    """The references every overlap figure is read against (docs/app.md, "Why the references")."""

    chance: float  # mean over pairs of the expected Jaccard of independent masks with the same sizes
    split_half: dict  # task -> Jaccard of the task's masks from its two halves of samples (its noise ceiling)
    mean_jaccard: list  # per task: mean Jaccard with the other tasks
    kept_by_all: int
    kept_by_all_expected: float
    kept_by_one: int
    kept_by_one_expected: float


def split_halves(result: MaskResult, stats: dict, halves: dict | None = None) -> dict:
    """Each task's split-half self-overlap at the current mask settings. `halves`: `half_ranks(stats, score)`,
    computed once per statistics: each sparsity then costs comparisons (equal to api.split_half_overlap)."""
    if halves is None:
        return {n: split_half_overlap(stats[n], result.settings) for n in result.tasks}
    out = {}
    for n in result.tasks:
        (sa, ra), (sb, rb) = halves[n]
        pair = np.stack([M.task_mask(sa, result.settings, ra), M.task_mask(sb, result.settings, rb)])
        out[n] = float(M.jaccard_matrix(pair)[0, 1])
    return out


def half_ranks(stats: dict, score: str) -> dict:
    """Per task, (scores, desc_ranks of the normalised scores) of each half of its samples: what `split_halves`
    needs that no slider changes."""
    out = {}
    for n, st_ in stats.items():
        pair = [unit_scores(st_.half(h), score) for h in (0, 1)]
        out[n] = [(sc, M.desc_ranks(M.normalise(sc))) for sc in pair]
    return out



def overlap_refs(result: MaskResult, stats: dict, split: dict | None = None,
                 chance: np.ndarray | None = None) -> OverlapRefs:
    """`chance`: `viz.chance_matrix(result.task_masks)` when the caller has it (the Jaccard figure shows it too)."""
    T = len(result.tasks)
    J = np.asarray(result.summary["jaccard"], dtype=np.float64)
    C = viz.chance_matrix(result.task_masks) if chance is None else chance
    off = ~np.eye(T, dtype=bool)
    split = split if split is not None else split_halves(result, stats)
    mean_j = [float(J[i][off[i]].mean()) if T > 1 else float("nan") for i in range(T)]
    s = result.summary
    return OverlapRefs(float(C[off].mean()) if T > 1 else float("nan"), split, mean_j, int(s["kept_by_all"]),
                       float(s["kept_by_all_expected"]), int(s["kept_by_one"]), float(s["kept_by_one_expected"]))


def task_scores(stats: dict, names: list[str], score: str) -> np.ndarray:
    """(T, L, I) per-layer-normalised scores: what the per-task masks rank by."""
    return np.stack([M.normalise(M.scores_from(stats[n], score)) for n in names])


def mask_figures(result: MaskResult, stats: dict, refs: OverlapRefs | None = None) -> list[tuple]:
    """(title, caption, figure) for every mask view, in the order the report shows them. A single mask (a
    baseline) has no votes or overlap between tasks; its channels are sorted by DIET's mean score over `stats`."""
    names = result.tasks
    per_task = not single_mask(result)
    sub = mask_stats(result, stats)
    scores = task_scores(sub, list(sub), result.settings.score).mean(0)
    title = "Merged mask: kept channels, sorted by score" if per_task else \
        f"{method_label(result)} mask: kept channels, sorted by DIET's score"
    out = [("Kept channels (merged mask, sorted by score)" if per_task else "Kept channels", viz.CAPTIONS[
        "kept_overview"], viz.kept_overview(result.mask, title, viz.order_by(scores)))]
    if per_task:
        out.append(("Votes", viz.CAPTIONS["votes_map"], viz.votes_map(result.votes, len(names), sort=True)))
    out += [("Kept channels per layer", viz.CAPTIONS["kept_per_layer"],
             viz.kept_per_layer(M.kept_per_layer(result.mask), result.shape.widths,
                                result.task_masks.sum(-1) if per_task else None, names)),
            ("Parameters", viz.CAPTIONS["params"], viz.params_breakdown(result.summary))]
    fig, reading = who_loses_view(result, stats)
    out.append(("Who loses in the merge", f"{reading} {viz.CAPTIONS['who_loses']}", fig))
    if per_task and len(names) > 1:
        refs = refs or overlap_refs(result, sub)
        out += [("Overlap between task masks", viz.CAPTIONS["jaccard_matrix"],
                 viz.jaccard_matrix(np.asarray(result.summary["jaccard"]), names,
                                    viz.chance_matrix(result.task_masks))),
                ("Is the overlap meaningful?", viz.CAPTIONS["references"],
                 viz.references(names, refs.split_half, refs.mean_jaccard, refs.chance)),
                ("Overlap per layer", viz.CAPTIONS["jaccard_layers"],
                 viz.jaccard_layers(result.task_masks, names, float(np.mean(list(refs.split_half.values()))))),
                ("Intersections", viz.CAPTIONS["upset"], upset_figure(result))]
    return out


def who_loses_view(result: MaskResult, stats: dict, ranks: dict | None = None) -> tuple:
    """(figure, one-line reading) of who loses in the merge: each task's own top-k and score mass kept by this
    mask, next to the pooled mask and a random mask of the same size (diet.methods.who_loses).

    `ranks`: `who_loses_ranks(...)` of these statistics, computed once: for a DIET mask with the same count in every
    layer, the task masks, pooled and random masks then come from comparisons (the same masks; tests check it)."""
    sub = mask_stats(result, stats)
    inputs = MethodInputs(sub, shape=result.shape)
    settings = replace(result.settings, merge="budget")
    fast = ranks is not None and result.method == "diet" and settings.allocation == "layer"
    k = M.keep_count(result.mask.shape[-1], settings.sparsity)
    masks = {method_label(result): result.mask}
    if result.method != "pooled":
        masks["pooled"] = ranks["pooled"] < k if fast else run_method("pooled", inputs, settings).mask
    masks["random"] = ranks["random"] < k if fast else run_method("random", inputs, settings).mask
    w = who_loses(inputs, settings, masks, own=result.task_masks if fast else None,
                  norm=ranks["norm"] if fast else None)
    return viz.who_loses(w), w["reading"]


def who_loses_ranks(stats: dict, score: str, ranked: M.RankedScores) -> dict:
    """What `who_loses_view` needs that no slider changes: the tasks' normalised scores (`ranked`: theirs), and the
    per-layer ranks of the pooled method's scores and of the random method's keys (its default seed), as
    diet.methods computes them."""
    pooled = unit_scores(pooled_stats(list(stats.values())), score)
    L, n = ranked.scores.shape[1:]
    return {"norm": [M.normalise(s) for s in ranked.scores],
            "pooled": M.desc_ranks(M.normalise(pooled)),
            "random": M.desc_ranks(np.random.default_rng(MethodSettings().seed).random((L, n)))}


def upset_figure(result: MaskResult):
    inter = M.intersections(result.task_masks)
    combos = sorted(inter, key=lambda c: (-inter[c], len(c), c))[: viz.MAX_UPSET_BARS]
    return viz.upset(inter, result.tasks, viz.expected_intersections(result.task_masks, combos))



def comparison_table(comp: dict) -> list[dict]:
    """Rows for the dense-vs-pruned table (fractions; the page formats them), then the unweighted average."""
    rows = []
    for d, p in zip(comp["dense"], comp["pruned"]):
        rows.append({"task": d.task, "metric": d.metric,
                     "items": d.note if d.calibration_items else f"{d.n} of {d.total}" + (" (preview)" if d.preview
                                                                                          else ""),
                     "dense": d.value, "pruned": p.value, "Δ": p.value - d.value, "dense acc": d.acc,
                     "pruned acc": p.acc, "dense acc_norm": d.acc_norm, "pruned acc_norm": p.acc_norm})
    numeric = [k for k in rows[0] if k not in ("task", "metric", "items")]
    rows.append({"task": "average", "metric": "primary", "items": "",
                 **{k: float(np.mean([r[k] for r in rows])) for k in numeric}})
    return rows





def table_html(rows: list[dict]) -> str:
    """A plain HTML table of dict rows (floats to 4 places)."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = ""
    for r in rows:
        cells = "".join(f"<td>{'' if v is None else (f'{v:.4f}' if isinstance(v, float) else html.escape(str(v)))}"
                        "</td>" for v in r.values())
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def headline(result: MaskResult, comparison: dict | None = None) -> list[str]:
    """What a stakeholder reads first: parameters removed, then measured accuracy and speed, dense vs pruned."""
    s = result.summary
    unit = "MLP channels" if result.unit == "mlp" else "attention heads"
    lines = [f"Removed {s['unit_sparsity']:.1%} of the {unit}: {s['params_removed']:,} parameters, "
             f"{s['param_sparsity']:.1%} of the model ({s['params_total']:,} → {s['params_after']:,})."]
    if comparison:
        dense, pruned = average(comparison["dense"]), average(comparison["pruned"])
        lines.append(f"Measured mean accuracy over {len(comparison['tasks'])} task(s): dense {dense:.3f}, pruned "
                     f"{pruned:.3f} ({pruned - dense:+.3f}).")
        speed = comparison.get("speed") or {}
        if speed.get("dense") and speed.get("pruned"):
            lines.append(f"Measured forward speed: {speed['pruned'] / speed['dense']:.2f}× the dense model's "
                         f"({speed['dense']:,.0f} → {speed['pruned']:,.0f} tokens/s, same batch, same machine).")
    else:
        lines.append("Accuracy and speed not measured yet: evaluate dense vs pruned to add them here.")
    return lines


def settings_rows(result: MaskResult, model_name: str, tasks: list[str]) -> list[dict]:
    """The settings as a readable two-column table: only those that shape this method's mask."""
    s, summary = result.settings, result.summary
    ms, knobs = method_and_knobs(result)
    method = get_method(result.method)
    rows = [("Model", model_name), ("Tasks", ", ".join(tasks)), ("Method", f"{result.method} — {method.description}"),
            ("Sparsity", f"{s.sparsity:.0%} of the {'MLP channels' if result.unit == 'mlp' else 'heads'} per "
                         "layer" if s.allocation == "layer" and not method.own_allocation else f"{s.sparsity:.0%}")]
    if "merge" in knobs:
        rows.append(("Merge", "exact budget: rank by votes, ties by mean score (our default)" if s.merge == "budget"
                     else f"vote threshold k = {s.resolved_threshold(len(result.tasks))}"))
    if "score" in knobs:
        rows.append(("Score", "mean |x| (our default)" if s.score == "mean_abs" else "RMS"))
    if method.own_allocation or s.allocation == "global":
        rows.append(("Allocation", f"global, each layer keeps at least {s.min_keep:.0%}"))
    else:
        rows.append(("Allocation", "the same count in every layer (our default)"))
    for k in ("calibration", "tau", "alpha", "fusion_norm", "single_task", "seed", "flap_bias", "pool_weight"):
        if k in knobs:
            rows.append((k.replace("_", " ").capitalize(), str(getattr(ms, k))))
    if "general_source" in summary and "general" in knobs:
        rows.append(("General text", str(summary["general_source"])))
    rows.append(("Compensation after removal", str(summary.get("compensation", "none"))))
    return [{"setting": k, "value": v} for k, v in rows]


SECTIONS = {"size": "Parameters", "speed": "Forward speed (measured)", "accuracy": "Results table"}


def headline_sentence(result: MaskResult, comparison: dict | None = None) -> str:
    """The report's first line for a non-specialist, as HTML: each number links to the section that measured it
    (`diet.export.card.headline_words` words it, the model card says the same)."""
    from diet.export.card import headline_words

    speedup = dense = pruned = None
    previews: list[int] = []
    if comparison:
        speed = comparison.get("speed") or {}
        if speed.get("dense") and speed.get("pruned"):
            speedup = speed["pruned"] / speed["dense"]
        dense, pruned = average(comparison["dense"]), average(comparison["pruned"])
        previews = [r.n for r in comparison["dense"] if r.preview]
    parts = headline_words(result.summary["param_sparsity"], speedup, dense, pruned,
                           len(comparison["tasks"]) if comparison else 0, previews)
    return ", ".join(f"<a href='#{viz.anchor(SECTIONS[key])}'>{html.escape(text)}</a>" for text, key in parts) + "."


def speed_table(speed: dict) -> str:
    return table_html([{"model": k, "tokens/s": round(float(speed[k]), 1)} for k in ("dense", "pruned")]
                      + [{"model": "pruned ÷ dense", "tokens/s": round(speed["pruned"] / speed["dense"], 3)}])


def samples_html(samples: list[dict]) -> str:
    """The Try-it samples the user kept: prompt, dense answer, pruned answer."""
    cell = "<td style='text-align:left;white-space:pre-wrap;vertical-align:top'>{}</td>"
    body = "".join("<tr>" + "".join(cell.format(html.escape(s.get(k, "") or "")) for k in ("prompt", "dense", "pruned"))
                   + "</tr>" for s in samples)
    return f"<table><tr><th>prompt</th><th>dense</th><th>pruned</th></tr>{body}</table>"


def changed_html(changes: list) -> str:
    """Per task: how many items each model alone got right, then the largest log-likelihood swings."""
    from diet.changed import SWINGS_SHOWN, summary_lines

    parts = ["<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(changes)) + "</ul>"]
    for tc in changes:
        top = tc.largest_swings()
        if not top:
            continue
        parts.append(f"<p><b>{html.escape(tc.task)}</b>: the {len(top)} largest swings (of at most {SWINGS_SHOWN})</p>")
        parts.append(table_html([{"item": i.index, "direction": i.direction, "question": i.question[-120:],
                                  "right answer": i.choices[i.gold] if i.gold < len(i.choices) else i.gold,
                                  "dense": i.choices[i.dense_choice], "pruned": i.choices[i.pruned_choice],
                                  "swing": round(i.swing, 3)} for i in top]))
    return "".join(parts)


def report_figures(result: MaskResult, stats: dict, comparison: dict | None = None,
                   sweep: dict | None = None) -> list[tuple[str, str, object]]:
    """(title, caption, figure) of every figure the report shows, in its order: what "all figures (zip)" holds."""
    out = []
    if comparison:
        names = comparison["tasks"]
        out.append(("Dense vs pruned (measured)", viz.CAPTIONS["accuracy"],
                    viz.accuracy_bars(names + ["average"],
                                      [r.value for r in comparison["dense"]] + [average(comparison["dense"])],
                                      [r.value for r in comparison["pruned"]] + [average(comparison["pruned"])])))
    out += mask_figures(result, stats)
    if sweep:
        from diet import sweep as S

        lim = sweep["settings"]["limit"]
        out.append(("Sweep: accuracy vs sparsity (measured)", SWEEP_CAPTION
                    + (f" Preview: first {lim} items per task." if lim else ""), S.figure(sweep["rows"])))
    return out


def report(model_name: str, result: MaskResult, stats: dict, comparison: dict | None = None,
           sweep: dict | None = None, samples: list[dict] | None = None, changes: list | None = None) -> str:
    """The HTML report (the app's download and `python -m diet prune --report`): the headline sentence (each number
    linked to its measurement), the settings as a table, measured results when there are any (the items pruning
    changed: `changes`, `diet.changed.TaskChanges` per task), the Try-it `samples` the user kept, every mask
    figure with its caption."""
    tasks = list(mask_stats(result, stats))
    notes = [*headline(result, comparison),
             "No mask is claimed to be better than any other: the measured results are what counts."]
    sections = [("Settings", "", table_html(settings_rows(result, model_name, tasks)))]
    figs = report_figures(result, stats, comparison, sweep)
    if comparison:
        sections.append(figs.pop(0))
        sections.append((SECTIONS["accuracy"], "", table_html(comparison_table(comparison))))
        speed = comparison.get("speed") or {}
        if speed.get("dense") and speed.get("pruned"):
            sections.append((SECTIONS["speed"], "the same batch through both models, timed alternately",
                             speed_table(speed)))
        if changes:
            sections.append(("The items pruning changed", "scores normalised as each task's metric is; swing: the "
                             "right answer's margin over the best other choice, pruned − dense", changed_html(changes)))
    if samples:
        sections.append(("Try it: what the models say", "answers kept from the Prune and evaluate page's Try it "
                         "panel", samples_html(samples)))
    sections += figs
    if sweep:
        from diet import sweep as S

        sections.append(("Sweep results (tidy table)", "", table_html(S.table(sweep["rows"]).to_dict("records"))))
    return viz.report_html(f"DIET Explorer report — {model_name}", sections, notes,
                           lead=headline_sentence(result, comparison))


def disp_report(model_name: str, result, stats: dict) -> str:
    """The DISP HTML report (`python -m diet prune --method disp --report`): the parameter headline, the positions'
    table and every position's figures with the captions the app's DISP page shows (`diet.disp.views`)."""
    from diet.disp import POSITIONS
    from diet.disp.views import position_figures, position_rows

    s = result.summary
    notes = [f"Kept {s['block_kept_fraction']:.1%} of the decoder blocks' parameters (the paper's p): removed "
             f"{s['param_sparsity']:.1%} of all parameters ({s['params_total']:,} → {s['params_after']:,}).",
             f"Tasks: {', '.join(result.tasks)}. No mask is claimed to be better than any other: the measured results "
             "are what counts."]
    sections = [("Positions", "", table_html(position_rows(result)))]
    for pos in POSITIONS:
        sections += [(fig.layout.title.text, caption, fig)
                     for _key, caption, fig in position_figures(result, stats, pos)]
    return viz.report_html(f"DIET Explorer DISP report — {model_name}", sections, notes)


SWEEP_CAPTION = ("Mean over the evaluation tasks of each task's primary metric, per method and sparsity (fraction of "
                 "MLP channels removed); the dashed line is the dense model. Every point is a measured pruned model.")


def counts_notes(results: list) -> list[str]:
    """One line per kind of note on the item counts of evaluation results: previews, then tasks whose file gave
    items to calibration (the automatic split) or repeats items. [] when every task was scored whole and plain."""
    out = []
    previews = [r for r in results if r.preview]
    if previews:
        out.append("Preview: " + ", ".join(f"{r.task} first {r.n} of {r.total} items" for r in previews)
                   + ". Preview numbers are noisy and not comparable with published ones; set items to 0 for all.")
    held = [r for r in results if r.calibration_items or r.repeats]
    if held:
        out.append("Item counts: " + "; ".join(f"{r.task}: {r.note}" for r in held) + ".")
    return out
