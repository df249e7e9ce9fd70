"""Write a DISP-pruned model folder: per-layer, per-position widths through a config subclass + modelling file.

The same pattern as the heterogeneous DIET export (`diet/export/hf.py`, registered by `diet/autoload.py`): the
config subclass carries `disp_widths` (position -> one width per layer), and `diet/disp/modeling_disp.py` —
self-contained, copied into the folder by `save_pretrained` — rebuilds every decoder layer at those widths; the
index sets themselves are persistent buffers in the safetensors. So the folder loads with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` where `diet` is absent (as the paper's export
does), and without `trust_remote_code` where `diet.disp` is imported.

Folders are written through `diet.folders.staged_folder` (whole or not at all, never over a non-empty one).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from diet.cache import atomic_write_json
from diet.disp.learn import LearnSettings, learn_index_sets, task_texts
from diet.disp.masks import DispSettings, build_disp_masks
from diet.disp.modeling_disp import CLASSES
from diet.disp.statistics import profile_disp
from diet.disp.structure import POSITIONS, disp_copy, index_sets_of
from diet.errors import DietError
from diet.folders import check_out_dir, save_tokenizer, staged_folder
from diet.settings import ProfileSettings

FORMAT = "diet-disp/1"


def to_disp_class(sliced: torch.nn.Module) -> torch.nn.Module:
    """The export-class model (`Disp<Family>ForCausalLM`) holding exactly the weights and index sets of `sliced`."""
    model_type = sliced.config.model_type
    if model_type not in CLASSES:
        raise DietError(f"DISP export supports {', '.join(CLASSES)}; not {model_type!r}")
    sets = index_sets_of(sliced)
    config_cls, model_cls = CLASSES[model_type]
    base = sliced.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map", "disp_widths"):
        base.pop(key, None)
    widths = {pos: [int(len(k)) for k in sets[pos]] for pos in POSITIONS}
    config = config_cls(**base, disp_widths=widths)
    param = next(sliced.parameters())
    model = model_cls._from_config(config, dtype=param.dtype).to(param.device)
    model.load_state_dict(sliced.state_dict(), strict=True)  # a shape mismatch fails loudly, never re-initialises
    model.generation_config = sliced.generation_config
    return model.eval()


def disp_json(sets: dict, summary: dict, source: dict, settings: dict | None) -> dict:
    """The human-readable record: index sets per position and layer, the parameter accounting, how they were made."""
    return {"format": FORMAT, **source, "settings": settings, "summary": summary,
            "index_sets": {pos: [np.asarray(k).tolist() for k in per_layer] for pos, per_layer in sets.items()}}


def export_disp(lm, sliced: torch.nn.Module, out: str | Path, summary: dict, settings: dict | None = None,
                overwrite: bool = False, extra: dict | None = None, folder_summary: dict | None = None) -> Path:
    """Write the DISP-sliced `sliced` (from `diet.disp.slice_disp`) as a loadable folder, atomically.
    `folder_summary`: written as summary.json inside the staged folder, so the folder never appears without it."""
    from diet import __version__

    out = Path(out)
    check_out_dir(out, overwrite)
    if Path(lm.path).exists() and out.resolve() == Path(lm.path).resolve():
        raise DietError(f"{out} is the base model's own folder: export somewhere else")
    model = to_disp_class(sliced)
    source = {"model": lm.spec.name, "model_identity": lm.identity}
    with staged_folder(out, overwrite) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(lm.tokenizer, tmp)
        (tmp / "disp.json").write_text(json.dumps(disp_json(index_sets_of(sliced), summary, source, settings)))
        atomic_write_json(tmp / "diet_settings.json", {"format": "diet-export/1", "diet_version": __version__,
                                                       "mode": "disp", **source, "disp": settings,
                                                       **(extra or {})})
        if not (tmp / "modeling_disp.py").is_file():
            raise DietError("the modelling file was not written with the model; the folder would not load")
        if folder_summary is not None:
            atomic_write_json(tmp / "summary.json", folder_summary)
    return out


def load_disp(folder: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load an exported DISP folder with its own modelling file (what a user without `diet` does)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "disp.json").is_file():
        raise DietError(f"{folder} is not a DISP export (no disp.json)")
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------------ one call: prune


def prune_disp(lm, tasks, out: str | Path, method: str = "disp", profile=None, disp=None, learn=None,
               overwrite: bool = False, progress=None, say=None) -> tuple[Path, dict]:
    """Choose DISP index sets for `tasks` (training-free `disp`, or the `disp-learned` hypernetwork), slice a copy of
    `lm.model` and export it; returns (folder, summary). The loaded model stays dense.

    progress: for `disp`, (task, texts done, texts total) while profiling; for `disp-learned`, (step, steps, record).
    """
    say = say or (lambda m: None)
    out = Path(out)
    check_out_dir(out, overwrite)  # refuse before any expensive work
    t0 = time.perf_counter()
    task_names = [t if isinstance(t, str) else t.name for t in tasks]
    if method == "disp":
        profile, disp = profile or ProfileSettings(), disp or DispSettings()
        if disp.merge == "threshold":
            disp.mask_settings(1.0).resolved_threshold(len(tasks))
        result = build_disp_masks(profile_disp(lm, tasks, profile, progress), disp)
        sets, summary = result.index_sets(), dict(result.summary)
        settings = {"method": method, "tasks": task_names, "profile": asdict(profile), "disp": asdict(disp)}
    elif method == "disp-learned":
        learn = learn or LearnSettings()
        say(f"training the DISP hypernetwork: {learn.steps} steps x {learn.tokens_per_step} tokens, p={learn.p}")
        res = learn_index_sets(lm.model, lm.tokenizer, task_texts(tasks), learn, progress)
        sets, summary = res.index_sets, dict(res.summary)
        summary["final_lm_loss"] = res.history[-1]["lm_loss"] if res.history else None
        settings = {"method": method, "tasks": task_names, "learn": asdict(learn)}
    else:
        raise DietError(f"unknown DISP method {method!r}: use disp or disp-learned")
    sliced = disp_copy(lm.model, sets)
    full = {"model": lm.spec.name, "model_identity": lm.identity, **settings, **summary,
            "seconds": round(time.perf_counter() - t0, 2)}  # up to the writing: summary.json is written inside it
    folder = export_disp(lm, sliced, out, summary, settings, overwrite, folder_summary=full)
    return folder, full
