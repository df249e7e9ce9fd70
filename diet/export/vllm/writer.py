"""Write a pruned model as a folder vLLM serves natively as `DeciLMForCausalLM`, with exact per-layer MLP widths.

Why DeciLM: vLLM's `nemotron_nas.py` builds each decoder layer from `config.block_configs[i]`; a block whose `ffn`
part has an `intermediate_size` and no `ffn_mult` keeps that width exactly, and the modelling, weight names
(`model.layers.N.mlp.down_proj.weight`, ...) and rope are Llama's. So the folder holds the sliced model's own
safetensors, a DeciLM config.json and a config-only remote-code file (`configuration_decilm.py` beside this one,
copied in) that gives vLLM the attribute objects it reads. Nothing of `diet` is needed to serve it.

Limits, each refused in one line: the query-head count is one global setting there (only the KV-head count varies per
layer), so per-layer head masks cannot be served; the family must be Llama-shaped with plain rope and no sliding
window (Llama, Mistral). Tensor parallelism additionally needs every width divisible by the TP size (`--round-to`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from diet.errors import DietError
from diet.export.hf import write_index
from diet.export.protocol import Options, Say, mlp_widths
from diet.folders import save_tokenizer

VLLM_FAMILIES = ("llama", "mistral")
CONFIG_FILE = "configuration_decilm.py"
ARCHITECTURE = "DeciLMForCausalLM"


def check_request(family: str, ffn_widths: Sequence[int], kv_groups: Sequence[int] | None = None) -> None:
    """Refuse, before any expensive work, what vLLM's DeciLM cannot serve exactly (one line each)."""
    if family not in VLLM_FAMILIES:
        raise DietError(f"vLLM export (DeciLM) supports {', '.join(VLLM_FAMILIES)} models; for {family}, export "
                        "--export-mode uniform (a stock folder vLLM serves as its own architecture) or padded")
    if kv_groups is not None and len(set(int(k) for k in kv_groups)) > 1:
        raise DietError("vLLM's DeciLM takes the query-head count from one global setting: a head mask with "
                        "different counts per layer cannot be served there; use --export-mode gguf, or a mask that "
                        "keeps the same number of KV groups in every layer")
    if min(int(w) for w in ffn_widths) < 1:
        raise DietError("a layer keeps no MLP channel: lower the threshold or the sparsity")


def decilm_config(model) -> dict:
    """config.json of the DeciLM folder, from a pruned stock model's config and its own tensor shapes."""
    from diet.adapters import get_family, llama_like_parts

    family = get_family(model).name
    cfg = model.config
    if getattr(cfg, "sliding_window", None):
        raise DietError("vLLM's DeciLM has no sliding-window attention: this model uses one; export "
                        "--export-mode uniform or padded instead")
    _, layers = llama_like_parts(model)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    heads = {int(p["attn_q"].out_features) // head_dim for p in layers}
    kv = [int(p["attn_k"].out_features) // head_dim for p in layers]
    ffn = [int(p["ffn_down"].in_features) for p in layers]
    q_per_kv = {int(p["attn_q"].out_features) // int(p["attn_k"].out_features) for p in layers}
    check_request(family, ffn, kv if len(heads) == 1 and len(q_per_kv) == 1 else list(range(len(kv))))
    n_heads = heads.pop()
    d = cfg.to_dict()
    for key in ("architectures", "auto_map", "transformers_version", "model_type", "_name_or_path",
                "sliding_window", "intermediate_sizes"):
        d.pop(key, None)
    d.update(model_type="nemotron-nas", architectures=[ARCHITECTURE],
             auto_map={"AutoConfig": f"{CONFIG_FILE[:-3]}.DeciLMConfig"},
             num_attention_heads=n_heads, num_key_value_heads=kv[0], head_dim=head_dim,
             intermediate_size=max(ffn),  # informative only: each block's own width is below
             block_configs=[{"attention": {"n_heads_in_group": n_heads // k, "no_op": False,
                                           "replace_with_linear": False},
                             "ffn": {"intermediate_size": w, "no_op": False}} for k, w in zip(kv, ffn, strict=True)])
    return d


def write_vllm_folder(model, folder: str | Path) -> dict:
    """Safetensors (the sliced model's own names), DeciLM config.json and configuration_decilm.py into `folder`."""
    folder = Path(folder)
    config = decilm_config(model)  # refuses before anything is written
    model.save_pretrained(folder)
    write_index(folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(Path(__file__).with_name(CONFIG_FILE), folder / CONFIG_FILE)
    return {"arch": ARCHITECTURE, "ffn": [b["ffn"]["intermediate_size"] for b in config["block_configs"]]}


class VLLMWriter:
    """The `vllm` mode: the sliced model's safetensors with a DeciLM config vLLM builds at each layer's width."""

    takes_bias = False
    engine_file = None  # vLLM is not timed here (a GPU server; docs/export.md)
    records: tuple[str, ...] = ()

    def check(self, lm, result, options: Options, say: Say) -> None:
        from diet.adapters import get_family

        ffn, kept = mlp_widths(lm, result)
        check_request(get_family(lm.model).name, ffn, kept if result.unit == "heads" else None)
        if result.summary.get("uniform"):
            say("note: every layer keeps the same width, so the ordinary uniform folder (--export-mode uniform) "
                "already serves in vLLM as the stock architecture, and everywhere else")

    def cut(self, model, keep: list, unit: str, release: bool):
        from diet.prune import prune_units

        return prune_units(model, keep, unit=unit, release=release)  # exact slicing; `write` makes it DeciLM

    def write(self, model, lm, folder: Path, options: Options) -> dict:
        from diet.models import count_parameters

        info = write_vllm_folder(model, folder)
        save_tokenizer(lm.tokenizer, folder)
        return {"params_stored": count_parameters(model), **info}
