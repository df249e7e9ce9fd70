"""Hugging Face folders (`save_pretrained`): the `uniform`, `padded` and `heterogeneous` modes.

* `uniform` — the same kept count in every layer: stock config with a smaller `intermediate_size`; loads with plain
  `AutoModelForCausalLM.from_pretrained`, lm-eval, vLLM, with no `diet` and no remote code.
* `padded` — per-layer masks; each layer keeps its channels plus zero rows/columns up to the widest layer: stock
  config, outputs identical to the masked model, compression only down to the widest layer.
* `heterogeneous` — per-layer widths through a config subclass (`diet/export/modeling_diet.py`, copied into the
  folder by `save_pretrained`): loads with `trust_remote_code=True` where `diet` is absent, and without it after
  `import diet` (`diet/autoload.py` registers the classes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diet.errors import DietError
from diet.export.protocol import Options, Say
from diet.folders import save_tokenizer


class _Folder:
    """What the three modes share: no refusal of their own, a bias fits their stock configs (heterogeneous: not),
    no serving engine to time, and one way of writing."""

    takes_bias = True
    engine_file = None
    records: tuple[str, ...] = ()

    def check(self, lm, result, options: Options, say: Say) -> None:
        return None

    def write(self, model, lm, folder: Path, options: Options) -> dict:
        from diet.models import count_parameters

        model.save_pretrained(folder, max_shard_size=options.max_shard_size)  # shards + index; from the tensors
        write_index(folder)  # so vLLM, which loads every *.safetensors without one, skips mask.safetensors
        save_tokenizer(lm.tokenizer, folder)
        return {"params_stored": count_parameters(model)}


class UniformWriter(_Folder):
    """The stock architecture with smaller widths (MLP channels or attention heads)."""

    def check(self, lm, result, options: Options, say: Say) -> None:
        if len(set(int(k) for k in result.mask.sum(axis=1))) != 1:
            raise DietError("this mask keeps different counts per layer: use --export-mode padded (stock config, "
                            "zero padding) or heterogeneous (per-layer widths), or the exact-budget merge, which "
                            "keeps the same count in every layer")

    def cut(self, model, keep: list, unit: str, release: bool):
        from diet.prune import prune_units

        if len(set(len(k) for k in keep)) != 1:
            raise DietError("uniform export needs the same kept count in every layer")
        return prune_units(model, keep, unit=unit, release=release)


class PaddedWriter(_Folder):
    """Every layer as wide as the widest one: the kept channels plus zero rows/columns."""

    def cut(self, model, keep: list, unit: str, release: bool):
        from diet.adapters import get_unit
        from diet.prune import prune_units

        mlp_only("padded", unit)
        mlp = get_unit(model)
        full = [mlp.width(layer) for layer in mlp.family.layers(model)]
        top = max(len(k) for k in keep)
        slots, pads = [], []  # per layer: the channels to store (kept + padding), and which of them are padding
        for k, w in zip(keep, full, strict=True):
            k = np.sort(np.asarray(k, dtype=np.int64))
            pad = np.setdiff1d(np.arange(w), k)[: top - len(k)]
            stored = np.union1d(k, pad)
            slots.append(stored)
            pads.append(np.searchsorted(stored, pad))
        padded = prune_units(model, slots, release=release)
        for layer, pad in zip(mlp.family.layers(padded), pads, strict=True):
            if len(pad):
                mlp.zero_channels(layer, pad)
        return padded


class HeterogeneousWriter(_Folder):
    """Each layer at its own MLP width, through the config subclasses of `diet/export/modeling_diet.py`."""

    takes_bias = False

    def cut(self, model, keep: list, unit: str, release: bool):
        from diet.prune import prune_units

        mlp_only("heterogeneous", unit)
        return heterogeneous(prune_units(model, keep, release=release), [len(k) for k in keep])


def mlp_only(mode: str, unit: str) -> None:
    """Padding and per-layer widths exist for MLP channels only."""
    if unit != "mlp":
        raise DietError(f"{mode} export supports MLP channels only; a {unit!r} mask exports in uniform mode")


def hetero_config(config, widths: list[int]):
    """The heterogeneous subclass of `config`'s family with per-layer `intermediate_sizes`.

    model_type, architectures and transformers_version are dropped from the base dict: the subclass sets its own,
    and a stale `architectures` would point loaders at the stock class.
    """
    from diet.export.modeling_diet import CLASSES

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


def heterogeneous(pruned, widths: list[int]):
    """The heterogeneous-class model holding exactly `pruned`'s tensors (no copy: built on the meta device, then
    given the very tensors of `pruned`; buffers that are not saved, such as RoPE's, are taken over too)."""
    import torch

    from diet.export.modeling_diet import CLASSES

    config = hetero_config(pruned.config, widths)  # refuses an unsupported family in one line
    _, model_cls = CLASSES[pruned.config.model_type]
    dtype = next(pruned.parameters()).dtype
    with torch.device("meta"):
        model = model_cls._from_config(config, dtype=dtype)
    model.load_state_dict(pruned.state_dict(), strict=True, assign=True)
    for name, buf in pruned.named_buffers():
        owner, _, attr = name.rpartition(".")
        target = model.get_submodule(owner) if owner else model
        setattr(target, attr, buf)  # an existing buffer name: stays a buffer, persistence unchanged
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise DietError(f"heterogeneous export could not take over {left[:3]} from the pruned model")
    model.generation_config = pruned.generation_config
    return model.eval()


def write_index(folder: Path) -> None:
    """A safetensors index naming the weight files, where save_pretrained wrote a single file without one.

    Why: without an index vLLM loads every `*.safetensors` in the folder, and the export also holds
    `mask.safetensors` (the mask, not weights), which vLLM would refuse as an unknown parameter."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        return
    weight_map, total = {}, 0
    for f in sorted(p for p in folder.glob("*.safetensors") if p.name != "mask.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                weight_map[name] = f.name
                sl = st.get_slice(name)
                n = 1
                for d in sl.get_shape():
                    n *= d
                total += n * {"F32": 4, "F16": 2, "BF16": 2}.get(sl.get_dtype(), 4)
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
