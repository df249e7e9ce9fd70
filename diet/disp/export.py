"""Write a DISP-pruned model folder: per-layer, per-position widths through a config subclass + modelling file.

The same pattern as the heterogeneous DIET export (`diet/hetero.py`): the config subclass carries `disp_widths`
(position -> one width per layer), and `diet/modeling_disp.py` — self-contained, copied into the folder by
`save_pretrained` — rebuilds every decoder layer at those widths; the index sets themselves are persistent buffers
in the safetensors. So the folder loads with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
where `diet` is absent (as the paper's export does), and without `trust_remote_code` after `register()`.

Why a temporary folder renamed into place and why refuse a non-empty folder: as in `diet/export.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from diet.cache import atomic_write_json
from diet.errors import DietError

FORMAT = "diet-disp/1"
_registered = False


def register() -> None:
    """Register the DISP config/model classes with the Auto classes (idempotent), so folders load without remote
    code in a process that has imported `diet.disp_export`."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from diet.modeling_disp import CLASSES

    for config_cls, model_cls in CLASSES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _registered = True


def to_disp_class(sliced: torch.nn.Module) -> torch.nn.Module:
    """The export-class model (`Disp<Family>ForCausalLM`) holding exactly the weights and index sets of `sliced`."""
    from diet.disp import POSITIONS, index_sets_of
    from diet.modeling_disp import CLASSES

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
                overwrite: bool = False, extra: dict | None = None) -> Path:
    """Write the DISP-sliced `sliced` (from `diet.disp.slice_disp`) as a loadable folder, atomically."""
    from diet import __version__
    from diet.disp import index_sets_of
    from diet.export import check_out_dir

    out = Path(out)
    check_out_dir(out, overwrite)
    if Path(lm.path).exists() and out.resolve() == Path(lm.path).resolve():
        raise DietError(f"{out} is the base model's own folder: export somewhere else")
    model = to_disp_class(sliced)
    source = {"model": lm.spec.name, "model_identity": lm.identity}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        (tmp / "disp.json").write_text(json.dumps(disp_json(index_sets_of(sliced), summary, source, settings)))
        atomic_write_json(tmp / "diet_settings.json", {"format": "diet-export/1", "diet_version": __version__,
                                                       "mode": "disp", **source, "disp": settings,
                                                       **(extra or {})})
        if not (tmp / "modeling_disp.py").is_file():
            raise DietError("the modelling file was not written with the model; the folder would not load")
        pickles = [p.name for p in tmp.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
        if pickles:
            raise DietError(f"refusing to write pickled files {pickles}: only safetensors are exported")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
    import time
    from dataclasses import asdict

    from diet.disp import DispSettings, build_disp_masks, disp_copy, profile_disp
    from diet.disp_learn import LearnSettings, learn_index_sets, task_texts
    from diet.export import check_out_dir
    from diet.settings import ProfileSettings

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
    folder = export_disp(lm, disp_copy(lm.model, sets), out, summary, settings, overwrite)
    summary = {"model": lm.spec.name, "model_identity": lm.identity, **settings, **summary,
               "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(folder / "summary.json", summary)
    return folder, summary
