"""The DIET pipeline, one call from settings to a finished folder: what `python -m diet prune`, the app's Export and
the sweep's cells all run.

    mask (any method) → compensation → in-place prune → export in any mode → summary.json + the model card

Why one pipeline: the CLI used to compose it itself (its own choice of mask function, its own lstsq texts, and a
summary.json written *after* the folder had been renamed into place), while the app's Export went through
`export_model` and wrote no summary at all — the same settings gave two different folders, and a folder could look
finished before it was. Here every file, summary.json included, is written inside the staged folder
(`diet.folders.staged_folder`): the folder appears complete or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from diet.adapters import parameter_shares
from diet.api import build_mask, compensation_of, lstsq_texts, method_mask
from diet.cache import atomic_write_json
from diet.errors import DietError
from diet.export import export_model
from diet.folders import check_out_dir
from diet.methods import MethodInputs, run_method
from diet.results import MaskResult
from diet.settings import CompensationSettings, MaskSettings, MethodSettings, ProfileSettings

Say = Callable[[str], None]


def mask_for(lm, stats: dict | None, mask: MaskSettings, method: MethodSettings, profile: ProfileSettings,
             general: str = "auto", compensation: str = "none", say: Say | None = None,
             inputs: MethodInputs | None = None) -> MaskResult:
    """The mask of any method. `inputs`: method inputs gathered once for many masks (a sweep's cells); else they
    are gathered here from `stats` (DIET's own vote needs nothing else: its fast path reads only the statistics)."""
    if inputs is not None:
        return run_method(method.method, inputs, mask, method, compensation)
    if not stats:
        raise DietError("no task statistics: profile at least one task first")
    if method.method == "diet" and profile.unit == "mlp" and compensation == "none":
        return build_mask(stats, mask)
    return method_mask(lm, stats, mask, method, profile, general=general, say=say, compensation=compensation)


def written_sizes(written: dict, s: dict) -> dict:
    """summary.json fields from what the export wrote: the logical count (what the mask keeps, after --round-to) and
    the parameters the file actually stores (more where zero padding fills layers up to the widest)."""
    logical = int(written.get("params_logical", s["params_after"]))
    out = {"export_mode": written["mode"], "params_after": logical,
           "params_stored": int(written.get("params_stored", logical)), "kept_per_layer": written["kept_per_layer"]}
    if "round_to" in written:  # the rounded mask's sparsity, next to the rounding
        out.update(round_to=written["round_to"], param_sparsity=1 - logical / s["params_total"],
                   unit_sparsity=1 - sum(written["kept_per_layer"]) / s["units_total"])
    for key in ("outtype", "arch", "warnings"):  # warnings: optional work that failed, folder complete (diet/export/)
        if key in written:
            out[key] = written[key]
    return out


def folder_summary(lm, result: MaskResult, profile: ProfileSettings, written: dict, seconds: float) -> dict:
    """summary.json: the model, the mask's sizes and every setting that made it, then what the export wrote."""
    s = result.summary
    summary = {"model": lm.spec.name, "model_identity": lm.identity, "tasks": list(result.tasks),
               "unit_sparsity": s["unit_sparsity"], "param_sparsity": s["param_sparsity"],
               "params_before": s["params_total"], "params_after": s["params_after"],
               "kept_per_layer": s["kept_per_layer"], "profile_settings": asdict(profile),
               "mask_settings": asdict(result.settings), "method": result.method,
               "method_settings": s.get("method_settings", asdict(MethodSettings(method=result.method))),
               "compensation": s.get("compensation", "none")}
    summary.update(written_sizes(written, s))
    summary["seconds"] = round(seconds, 2)
    return summary


def prune_to_folder(lm, result: MaskResult, out: str | Path, profile: ProfileSettings, stats: dict | None = None,
                    lstsq: CompensationSettings | None = None, started: float | None = None, say: Say | None = None,
                    **export_options) -> tuple[Path, dict]:
    """Compensate, prune and export `result` into `out`, with summary.json written inside the staged folder;
    returns (folder, summary).

    `profile`: the settings the statistics were profiled with (recorded in the folder). `stats`: the statistics
    behind the mask, so an lstsq refit finds uploaded task files again. `lstsq`: the refit's knobs when the mask asks
    for one (default: CompensationSettings' own). `started`: when the run began (perf_counter), for the summary's
    seconds. `export_options`: `diet.export.export_model`'s (mode, overwrite, outtype, round_to, speed,
    eval_settings, evaluation, in_place, max_shard_size)."""
    started = time.perf_counter() if started is None else started
    comp = compensation_of(result)
    if comp is not None:
        comp = lstsq or comp
        export_options.update(compensation=comp, texts=lstsq_texts(result, comp, stats))
    box: dict = {}
    shares = parameter_shares(lm.model)  # of the dense model: the export may prune it in place

    def finish(folder: Path, written: dict) -> None:  # inside the staged folder, before it is renamed into place
        box["summary"] = folder_summary(lm, result, profile, written, time.perf_counter() - started)
        box["summary"]["param_shares"] = shares
        atomic_write_json(folder / "summary.json", box["summary"])

    folder = export_model(lm, result, out, extra={"profile": asdict(profile)}, say=say, finish=finish,
                          **export_options)
    return folder, box["summary"]


def prune(lm, stats: dict, out: str | Path, mask: MaskSettings, method: MethodSettings, profile: ProfileSettings,
          general: str = "auto", compensation: str = "none", lstsq: CompensationSettings | None = None,
          started: float | None = None, say: Say | None = None, before_export: Callable | None = None,
          **export_options) -> tuple[MaskResult, Path, dict]:
    """Settings to a finished folder: `mask_for`, then `prune_to_folder`. `before_export(result)` runs between the
    two (the CLI writes its HTML report there: the figures need only statistics, and export prunes in place).
    Returns (mask, folder, summary)."""
    check_out_dir(out, export_options.get("overwrite", False))
    result = mask_for(lm, stats, mask, method, profile, general, compensation, say)
    if before_export is not None:
        before_export(result)
    folder, summary = prune_to_folder(lm, result, out, profile, stats, lstsq, started, say, **export_options)
    return result, folder, summary
