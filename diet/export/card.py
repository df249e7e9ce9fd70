"""The README.md model card and PNG plots written into every export folder.

Why a card with measured numbers: a pruned checkpoint is only useful if its reader knows what was removed (both
denominators: MLP channels and all parameters), what it costs on disk, how fast it really runs next to the dense
model (measured, not inferred from the parameter count), how it scored, and how to load it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOAD_SNIPPETS = {
    "uniform": ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                'model = AutoModelForCausalLM.from_pretrained("{dir}")\n'
                'tokenizer = AutoTokenizer.from_pretrained("{dir}")'),
    "padded": ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
               'model = AutoModelForCausalLM.from_pretrained("{dir}")\n'
               'tokenizer = AutoTokenizer.from_pretrained("{dir}")'),
    "heterogeneous": ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                      '# per-layer MLP widths: the folder carries its own modelling file (modeling_diet.py)\n'
                      'model = AutoModelForCausalLM.from_pretrained("{dir}", trust_remote_code=True)\n'
                      '# or, where diet is installed: `import diet` first, then no trust_remote_code is needed\n'
                      'tokenizer = AutoTokenizer.from_pretrained("{dir}")'),
    "gguf": ('# llama.cpp (any build with the deci architecture for per-layer widths, e.g. llama-cpp-python 0.3.36)\n'
             'llama-cli -m {dir}/model.gguf -p "The capital of France is" -n 32\n\n'
             '# Ollama: a Modelfile pointing at the file (Ollama runs it where its llama.cpp knows the architecture)\n'
             'printf "FROM ./model.gguf\\n" > {dir}/Modelfile\n'
             'ollama create my-pruned-model -f {dir}/Modelfile && ollama run my-pruned-model\n\n'
             '# Python\n'
             'python -c "from llama_cpp import Llama; print(Llama(\'{dir}/model.gguf\')(\'The capital of France is\', '
             'max_tokens=16))"\n\n'
             '# CPUs with AMX (llama.cpp\'s system info shows AMX_INT8 = 1, many cloud Xeons): some llama.cpp builds '
             'crash there\n# (SIGSEGV in ggml_backend_amx_mul_mat) on quantized weights. Turn weight repacking off:\n'
             'llama-cli -m {dir}/model.gguf --no-repack -p "The capital of France is" -n 32   # or LLAMA_ARG_REPACK=0\n'
             '# llama-cpp-python: model params use_extra_bufts=False (python -m diet does this itself on such CPUs)'),
    "vllm": ('# vLLM serves the folder as DeciLMForCausalLM (its own modelling; the config file is config only)\n'
             'vllm serve {dir} --trust-remote-code\n\n'
             '# offline, in Python:\n'
             '# from vllm import LLM; llm = LLM(model="{dir}", trust_remote_code=True)'),
}
SNIPPET_LANGUAGE = {"gguf": "bash", "vllm": "bash"}  # default: python

# unit -> (plural name, what the other parameters are)
UNIT_WORDS = {"mlp": ("MLP channels", "embeddings and attention are untouched"),
              "heads": ("attention KV groups", "embeddings and MLPs are untouched")}

MODE_WORDS = {
    "uniform": "every layer keeps the same number of {units}: a stock config with smaller widths; loads with "
               "plain transformers, lm-eval, vLLM.",
    "padded": "layers keep different numbers of channels; each is padded with zero rows/columns up to the widest "
              "layer, so the config is stock and the outputs equal the masked model's (less compression).",
    "heterogeneous": "each layer has its own MLP width (`intermediate_sizes` in config.json); loads with "
                     "`trust_remote_code=True` (the modelling file is in this folder) or after `import diet`.",
    "gguf": "one `model.gguf` that llama.cpp runs natively: per-layer widths as llama.cpp's `deci` architecture "
            "(per-layer `feed_forward_length` and head counts), uniform widths in the family's own architecture.",
    "vllm": "a folder vLLM serves as `DeciLMForCausalLM` with each layer's exact MLP width (`block_configs` in "
            "config.json); the modelling is vLLM's own, `configuration_decilm.py` only gives it the config.",
}


SPEED_ORDER_WORDS = {
    "interleaved": "dense and pruned interleaved in one run",
    "sequential": "the dense model first, then the same model pruned in place (one copy in memory; the two "
                  "were timed one after the other, so a change in machine load would show in the ratio)",
}


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states. Sizes in bytes; `None` where unknown or not measured."""

    base_model: str  # what the user named: embedded name, hub id or folder
    base_identity: str  # content fingerprint of the base model
    mode: str  # "uniform", "padded" or "heterogeneous"
    tasks: list[str]  # the tasks whose masks were merged
    mask_settings: dict  # MaskSettings as a dict
    unit_sparsity: float  # fraction of the pruned unit removed (MLP channels, or KV groups)
    param_sparsity: float  # fraction of all parameters removed (by the mask)
    params_before: int  # parameters of the dense model
    params_stored: int  # parameters stored in this folder (zero padding included)
    params_effective: int  # parameters the mask keeps (zero padding excluded)
    widths: list[int]  # original MLP width per layer
    kept_per_layer: list[int]  # units kept per layer (padding excluded)
    votes_histogram: list[int] | None = None  # channels kept by exactly 0..T task masks
    disk_before: int | None = None  # weight files of the base model
    disk_before_estimated: bool = False  # True: from parameter count x dtype size, not from files
    disk_after: int | None = None  # weight files written here
    evaluation: dict[str, list[dict]] | None = None  # label ("dense", "pruned") -> TaskResult dicts
    speed: dict | None = None  # diet.measure.measure_speed output
    dtype: str | None = None  # the weights' dtype in this folder (the dtype the base model was loaded in)
    plots: list[str] = field(default_factory=list)  # PNG file names in the folder
    extra: dict = field(default_factory=dict)  # profile settings and the like, shown as JSON
    unit: str = "mlp"  # "mlp" (MLP channels) or "heads" (attention KV groups)
    engine_speed: dict | None = None  # serving-engine measurement (llama.cpp tokens/s), shown next to the torch one
    engine_speed_error: str | None = None  # why the serving-engine measurement failed (one line), when it did
    tensor_types: str | None = None  # GGUF: the tensor types the written file holds, in words (read back from it)
    samples: list[dict] = field(default_factory=list)  # sample generations: {"prompt", "dense", "pruned"} (greedy)


# ------------------------------------------------------------------------------------------------ headline


def headline_words(param_sparsity: float, speedup: float | None = None, dense_acc: float | None = None,
                   pruned_acc: float | None = None, n_tasks: int = 0, preview_items: list[int] | None = None,
                   speed_words: str = "") -> list[tuple[str, str]]:
    """The headline for a non-specialist as (words, what measured them: "size", "speed" or "accuracy") pieces, e.g.
    "25% smaller", "1.30× faster forward", "accuracy 0.590 → 0.561 (−2.9 points) on 3 tasks (preview: 10 items
    each)". The report and the model card join them and link each piece to its measurement."""
    out = [(f"{param_sparsity:.0%} smaller", "size")]
    if speedup:
        what = f"{speedup:.2f}× faster forward" if speedup >= 1 else f"{speedup:.2f}× the dense forward speed"
        out.append((what + (f" ({speed_words})" if speed_words else ""), "speed"))
    if dense_acc is not None and pruned_acc is not None:
        note = ""
        if preview_items:
            lo, hi = min(preview_items), max(preview_items)
            note = f" (preview: {lo} items each)" if lo == hi else f" (preview: {lo}–{hi} items per task)"
        points = (pruned_acc - dense_acc) * 100
        out.append((f"accuracy {dense_acc:.3f} → {pruned_acc:.3f} ({points:+.1f} points".replace("-", "−")
                    + f") on {n_tasks} task{'s' if n_tasks != 1 else ''}{note}", "accuracy"))
    return out


def _card_headline(f: CardFacts) -> str:
    """The card's first sentence, each number linking to the section that measured it."""
    speedup = words = None
    if f.speed and f.speed.get("rows"):
        row = f.speed["rows"][0]
        speedup, words = row["speedup"], f"batch {row['batch']} × {f.speed['seq_len']} tokens"
    dense = pruned = None
    previews: list[int] = []
    n = 0
    if f.evaluation and "dense" in f.evaluation and "pruned" in f.evaluation:
        d, p = f.evaluation["dense"], f.evaluation["pruned"]
        n = len(d)
        dense, pruned = sum(r["value"] for r in d) / n, sum(r["value"] for r in p) / len(p)
        previews = [r["n"] for r in d if r.get("preview")]
    links = {"size": "#what-was-removed", "speed": "#measured-forward-speed", "accuracy": "#evaluation"}
    parts = headline_words(f.param_sparsity, speedup, dense, pruned, n, previews, words or "")
    return "**" + ", ".join(f"[{text}]({links[key]})" for text, key in parts) + ".**"


def _samples_section(f: CardFacts) -> list[str]:
    if not f.samples:
        return []
    out = ["## Sample generations", "",
           "Greedy answers of the dense model and of this pruned one to the same prompts (the first item of a task "
           "each, with the tokenizer's chat template where it has one):", ""]
    for s in f.samples:
        out += [f"**Prompt:** {_quote(s['prompt'])}", "", f"- dense: {_quote(s['dense'])}",
                f"- pruned: {_quote(s['pruned'])}", ""]
    return out


def _quote(text: str) -> str:
    return "`" + " ".join(text.split()).replace("`", "'")[:400] + "`" if text.strip() else "*(empty)*"


# ------------------------------------------------------------------------------------------------ plots


def write_plots(folder: Path, widths: list[int], kept: list[int], votes_histogram: list[int] | None,
                unit: str = "mlp") -> list[str]:
    """kept_per_layer.png and votes_histogram.png; [] when matplotlib is not installed (the card says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    units = UNIT_WORDS.get(unit, UNIT_WORDS["mlp"])[0]
    names = []
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    layers = list(range(len(kept)))
    ax.bar(layers, widths, color="#d9d9d9", label="original width")
    ax.bar(layers, kept, color="#2b6cb0", label="kept")
    ax.set_xlabel("layer")
    ax.set_ylabel(units)
    ax.set_title(f"{units[0].upper()}{units[1:]} kept per layer")
    ax.set_ylim(0, 1.18 * max(widths))  # headroom for the legend
    ax.legend(loc="upper right", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(folder / "kept_per_layer.png")
    plt.close(fig)
    names.append("kept_per_layer.png")
    if votes_histogram:
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
        ax.bar(range(len(votes_histogram)), votes_histogram, color="#2f855a")
        ax.set_xticks(range(len(votes_histogram)))
        ax.set_xlabel("number of task masks keeping the unit")
        ax.set_ylabel("channels")
        ax.set_title(f"Votes per unit ({units})")
        fig.tight_layout()
        fig.savefig(folder / "votes_histogram.png")
        plt.close(fig)
        names.append("votes_histogram.png")
    return names


# ------------------------------------------------------------------------------------------------ card


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _evaluation_table(evaluation: dict[str, list[dict]]) -> str:
    labels = list(evaluation)
    by_task: dict[str, dict[str, dict]] = {}
    for label, results in evaluation.items():
        for r in results:
            by_task.setdefault(r["task"], {})[label] = r
    head = "| task | metric | items | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (3 + len(labels))]
    for task, per in by_task.items():
        any_r = next(iter(per.values()))
        items = f"{any_r['n']} of {any_r['total']}" + (" (preview)" if any_r.get("preview") else "")
        if any_r.get("calibration_items"):  # a file without `split`: say where the other items went
            items = any_r.get("note") or items
        cells = [f"{100 * per[lb]['value']:.1f}" if lb in per else "–" for lb in labels]
        lines.append(f"| {task} | {any_r['metric']} | {items} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _speed_table(speed: dict) -> str:
    first, last = speed["names"][0], speed["names"][-1]
    lines = [f"| batch × tokens | {first} ms | {last} ms | {first} tokens/s | {last} tokens/s | speedup |",
             "|---|---|---|---|---|---|"]
    for r in speed["rows"]:
        lines.append(f"| {r['batch']} × {speed['seq_len']} | {r[first + '_ms']:.1f} | {r[last + '_ms']:.1f} | "
                     f"{r[first + '_tokens_per_s']:.0f} | {r[last + '_tokens_per_s']:.0f} | {r['speedup']:.2f}× |")
    return "\n".join(lines)


def _removed_section(f: CardFacts) -> list[str]:
    """What was removed: units and parameters before/after (stored next to logical), sparsity, settings."""
    units_total, units_kept = sum(f.widths), sum(f.kept_per_layer)
    k_min, k_max = min(f.kept_per_layer), max(f.kept_per_layer)
    kept_words = f"{k_min} per layer" if k_min == k_max else f"{k_min}–{k_max} per layer"
    units, untouched = UNIT_WORDS.get(f.unit, UNIT_WORDS["mlp"])
    disk_before = _size(f.disk_before) + (" (estimated from the parameter count)" if f.disk_before_estimated else "")
    out = [
        "## What was removed",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| {units} | {units_total:,} | {units_kept:,} ({kept_words}) |",
        f"| parameters | {f.params_before:,} | {f.params_stored:,}"
        + (f" stored ({f.params_effective:,} without the zero padding)" if f.params_stored != f.params_effective
           else "") + " |",
        f"| weights on disk | {disk_before} | {_size(f.disk_after)} |",
        "",
        f"- Sparsity: **{_pct(f.unit_sparsity)} of {units}**, which is **{_pct(f.param_sparsity)} of all "
        f"parameters** ({untouched}).",
        f"- {units[0].upper()}{units[1:]} kept per layer: {', '.join(map(str, f.kept_per_layer))}",
        f"- Tasks ({len(f.tasks)}): {', '.join(f.tasks)}",
        f"- Mask settings: `{json.dumps(f.mask_settings, sort_keys=True)}`",
        f"- Base model identity (content fingerprint): `{f.base_identity}`",
    ]
    if f.tensor_types:  # a GGUF file has its own types (f16, Q8_0, ...), not the loaded model's dtype
        out.append(f"- Tensor types in `model.gguf`: {f.tensor_types}")
    elif f.dtype:
        out.append(f"- Weights dtype: {f.dtype} (the dtype the base model was loaded in; no conversion on export)")
    if f.extra:
        out.append(f"- Other settings: `{json.dumps(f.extra, sort_keys=True, default=str)}`")
    return out


def _measured_sections(f: CardFacts) -> list[str]:
    """Measured forward speed (and serving-engine speed), then the evaluation table."""
    out = ["## Measured forward speed", ""]
    if f.speed:
        out += [f"Measured on {f.speed['device']} ({f.speed['threads']} threads), median of {f.speed['repeats']} "
                "forward passes per model, " + SPEED_ORDER_WORDS[f.speed.get("order", "interleaved")] + ":", "",
                _speed_table(f.speed),
                "", "Speed depends on the hardware, batch size and kernels; measure on yours."]
    else:
        out.append("Not measured for this export.")
    if f.engine_speed:
        e = f.engine_speed
        out += ["", f"Measured in {e['engine']} ({e['threads']} threads, {e['file']}): prompt processing "
                f"**{e['prompt_tokens_per_s']:.0f} tokens/s** ({e['n_prompt']} tokens), generation "
                f"**{e['gen_tokens_per_s']:.0f} tokens/s** ({e['n_gen']} tokens); median of {e['repeats']}."]
    if f.engine_speed_error:
        out += ["", f"Serving-engine speed: not measured ({f.engine_speed_error})."]
    out += ["", "## Evaluation", ""]
    if f.evaluation:
        out += ["Zero-shot multiple-choice accuracy (%, lm-eval scoring) of each task's primary metric:", "",
                _evaluation_table(f.evaluation)]
        if any(r.get("preview") for rs in f.evaluation.values() for r in rs):
            out += ["", "Rows marked *preview* scored only the first items: not comparable with published numbers."]
    else:
        out.append("No evaluation was run with this export.")
    return out


def render_card(f: CardFacts, folder_hint: str = "path/to/this/folder") -> str:
    """The README.md text (Hugging Face model card layout: YAML front matter, then Markdown)."""
    units = UNIT_WORDS.get(f.unit, UNIT_WORDS["mlp"])[0]
    out = [
        "---",
        "library_name: transformers",
        "tags: [pruned, structured-pruning, diet-explorer]",
        "---",
        "",
        f"# {f.base_model}, pruned with DIET ({f.mode}, {_pct(f.unit_sparsity)} of {units} removed)",
        "",
        _card_headline(f),
        "",
        "Task-aware, training-free structured pruning: one mask per task from activation statistics, merged by "
        f"DIET's vote, then the pruned {units} are physically removed. No weights were retrained.",
        "",
        f"**Export mode — {f.mode}:** {MODE_WORDS[f.mode].format(units=units)}",
        "",
        *_removed_section(f),
        "",
        *_measured_sections(f),
        "",
        *_samples_section(f),
    ]
    out += ["", "## Plots", ""]
    if f.plots:
        out += [f"![{p[:-4].replace('_', ' ')}]({p})" for p in f.plots]
    else:
        out.append("Not drawn (matplotlib is not installed).")
    out += ["", "## How to load", "", f"```{SNIPPET_LANGUAGE.get(f.mode, 'python')}",
            LOAD_SNIPPETS[f.mode].format(dir=folder_hint), "```", "",
            "## Files", "",
            "- `mask.json`: kept channel indices per layer, the tasks, settings and summary (re-apply it to the base "
            "model with `python -m diet apply-mask --model BASE --mask mask.json --out DIR`)",
            "- `mask.safetensors`: the merged mask, votes and per-task masks as arrays",
            "- `diet_settings.json`: everything that produced this folder", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ an export's card


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (safetensors, bin, gguf), without the mask's own safetensors."""
    return [p for p in folder.iterdir()
            if p.suffix in (".safetensors", ".bin", ".gguf") and p.name != "mask.safetensors"]


def base_weight_bytes(lm) -> tuple[int, bool]:
    """(bytes of the base model's weight files, estimated?) — from the files when the model is a local folder."""
    from diet.models import count_parameters

    folder = Path(lm.path)
    if folder.is_dir():
        files = weight_files(folder)
        if files:
            return sum(p.stat().st_size for p in files), False
    param = next(lm.model.parameters())
    return count_parameters(lm.model) * param.element_size(), True


def _evaluation_dict(evaluation) -> dict[str, list[dict]] | None:
    """Accept a list of TaskResult (or their dicts) = the pruned model's, or {label: list}."""
    if not evaluation:
        return None
    if not isinstance(evaluation, dict):
        evaluation = {"pruned": evaluation}
    tables = {label: [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in rs]
              for label, rs in evaluation.items() if isinstance(rs, (list, tuple))}  # other keys: not task rows
    return tables or None


def write_card(folder: Path, out: Path, lm, result, mode: str, before: dict, params_stored: int, evaluation,
               measured, extra: dict | None, engine_speed: dict | None = None, tensor_words: str | None = None,
               engine_error: str | None = None, samples: list[dict] | None = None) -> None:
    """The folder's README.md (model card) with its plots: sizes, widths, measured accuracy and speed, how to run."""
    s, keep, unit = result.summary, result.keep(), result.unit
    plots = write_plots(folder, list(result.shape.widths), [len(k) for k in keep], s.get("votes_histogram"), unit)
    disk_bytes, estimated = before["disk"]
    facts = CardFacts(
        base_model=lm.spec.name, base_identity=lm.identity, mode=mode, tasks=list(result.tasks),
        mask_settings=asdict(result.settings), unit_sparsity=float(s["unit_sparsity"]),
        param_sparsity=float(s["param_sparsity"]), params_before=before["params"], params_stored=params_stored,
        params_effective=int(s["params_after"]), widths=list(result.shape.widths),
        kept_per_layer=[len(k) for k in keep], votes_histogram=s.get("votes_histogram"), disk_before=disk_bytes,
        disk_before_estimated=estimated, disk_after=sum(p.stat().st_size for p in weight_files(folder)),
        evaluation=_evaluation_dict(evaluation), speed=measured, plots=plots, unit=unit,
        extra={k: v for k, v in (extra or {}).items() if k != "evaluation"}, dtype=before["dtype"],
        engine_speed=engine_speed, tensor_types=tensor_words, engine_speed_error=engine_error,
        samples=samples or [])
    (folder / "README.md").write_text(render_card(facts, folder_hint=str(out)))
