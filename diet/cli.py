"""`python -m diet …` — the command-line contract other tools and our own checks call.

Every user mistake ends as one line `error: …` and exit code 2 (never a traceback); Ctrl-C or SIGTERM ends with exit
130 and, since every write is atomic, leaves no half-written file.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from diet.errors import DietError
from diet.methods import METHODS
from diet.settings import DEFAULT_MODEL, DTYPE_CHOICES, MaskSettings, ModelSpec, ProfileSettings

METHOD_NAMES = tuple(METHODS)  # the registry's methods; DISP has its own subcommand flow


def _tasks_arg(s: str) -> list[str]:
    names = [t.strip() for t in s.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one task (comma-separated names or JSONL/CSV paths)")
    return names


def _dtype_arg(s: str) -> str:
    if s not in DTYPE_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown dtype {s!r}: use one of {', '.join(DTYPE_CHOICES)} (auto = the "
                                         "checkpoint's own)")
    return s


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1) (fraction of channels removed), got {v}")
    return v


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"'{DEFAULT_MODEL}' (embedded, offline), a Hugging Face id, or a local folder "
                        f"(default: {DEFAULT_MODEL}). Before a local folder is loaded, its weights (sizes from "
                        "config.json and the safetensors headers) plus the largest activation are checked "
                        "against free RAM, or free GPU memory on --device cuda; a run that cannot fit stops "
                        "with the numbers and the ways out")
    g.add_argument("--revision", default=None, help="hub revision: branch, tag or commit (default: main)")
    g.add_argument("--dtype", default="auto", type=_dtype_arg, metavar="{" + ",".join(DTYPE_CHOICES) + "}",
                   help="weights dtype in memory and in the export: auto = the dtype the checkpoint was saved in "
                        "(float32 when its config names none; the embedded default is stored float32); memory is "
                        "about parameters x 4 bytes in float32, x 2 in bfloat16/float16. Statistics are always "
                        "summed in fp32 (default: auto)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    g.add_argument("--device-map", default=None,
                   help="accelerate placement for models larger than one device: 'auto' (GPUs, then CPU, then disk) "
                        "or a JSON object {\"model.layers.0\": 0, \"model.layers.9\": \"disk\", ...}; profiling "
                        "and evaluation work across devices; pruning needs every layer on a GPU or in RAM")
    g.add_argument("--offload-folder", default=None,
                   help="folder for the layers a --device-map puts on 'disk' (default: none)")
    g.add_argument("--quantization", default=None, choices=["8bit", "4bit"],
                   help="bitsandbytes loading, for profiling large models in less memory (not for pruning)")
    g.add_argument("--trust-remote-code", action="store_true", help="run code shipped in the model folder (off)")


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, type=_tasks_arg,
                   help="comma-separated task names (see `python -m diet tasks`) or paths to JSONL/CSV task files")
    p.add_argument("--samples", type=int, default=100, help="calibration texts per task (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of calibration texts (default: 0)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per text, longer ones truncated (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default: 8)")
    p.add_argument("--unit", default="mlp", choices=["mlp", "heads"],
                   help="prunable unit: mlp = MLP intermediate channels (default); heads = attention heads, whole "
                        "KV groups under GQA")


def _ray_args(p: argparse.ArgumentParser) -> None:
    """--ray: the command's independent units on a Ray cluster (docs/scale.md); absent = this process, as ever."""
    g = p.add_argument_group("cluster (docs/scale.md)")
    g.add_argument("--ray", default=None, metavar="local|auto|HOST:PORT",
                   help="run the units (one task's statistics, one sweep cell, one task's evaluation) on Ray "
                        "workers, each holding the model once; this process then loads no model. local: start "
                        "Ray on this machine; auto: join the cluster `ray start` runs here; HOST:PORT: join that "
                        "head. Results land in this machine's cache under the usual keys (default: no Ray)")
    g.add_argument("--ray-cpus-per-worker", type=int, default=None, metavar="N",
                   help="CPU-only clusters: cores (torch threads) per worker (default: chosen from the cluster's "
                        "cores and memory, and printed); with GPUs: one worker per GPU")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N", help="at most N workers (default: all)")


def _cluster(a):
    """ClusterSettings from --ray (None without it)."""
    if a.ray is None:
        return None
    from diet.settings import ClusterSettings

    return ClusterSettings(address=a.ray, cpus_per_worker=a.ray_cpus_per_worker, max_workers=a.ray_workers)


def _on_cluster(a, cluster, run):
    """`run(pool, bar)` on the workers --ray names, under one progress bar: (the pool's model, run's result). The
    driver loads no model: the pool's model is the workers' identity and dtype, for cache keys."""
    from diet.api import cluster_pool

    bar = _ClusterBar()
    with cluster_pool(cluster, _spec(a), say=lambda m: print(m, file=sys.stderr)) as pool:
        try:
            out = run(pool, bar)
        finally:
            bar.close()
    return pool.model, out


class _ClusterBar:
    """One bar for a cluster run: units done / total, retries and what each worker does."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, p) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.total != p.total:
            self.close()
            self.bar = tqdm(total=p.total, desc="units", unit="unit", file=sys.stderr)
        self.bar.update(p.done - self.bar.n)
        self.bar.set_postfix_str(f"retries {p.retries} · " + ", ".join(f"{n}: {st}" for n, st in p.workers))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _method_args(p: argparse.ArgumentParser) -> None:
    """Knobs of the registry methods (diet.methods; see docs/methods.md)."""
    g = p.add_argument_group("method options (see `python -m diet methods` and docs/methods.md)")
    g.add_argument("--general", default="auto",
                   help="general text for task-agnostic baselines and task-fusion: auto (WikiText-2 when the Hub "
                        "answers, else the shipped self-generated corpus), wikitext2, c4, generated, or a text file")
    g.add_argument("--calibration", default="default", choices=["default", "general", "tasks"],
                   help="data of wanda-sp/flap/minitron/task-agnostic: default = general text as their papers; "
                        "tasks = all task statistics pooled")
    g.add_argument("--tau", type=float, default=0.9, help="task-fusion: exclusive-unit quantile (default 0.9)")
    g.add_argument("--alpha", type=float, default=0.5, help="task-fusion: general-score weight (default 0.5)")
    g.add_argument("--fusion-norm", default="rank", choices=["rank", "zscore"], help="task-fusion normalisation")
    g.add_argument("--single-task", default=None, help="single-task: the task whose mask is used")
    g.add_argument("--random-seed", type=int, default=0, help="random: seed of the random mask (default 0)")
    g.add_argument("--no-flap-bias", action="store_true", help="flap: skip its bias compensation")
    g.add_argument("--pool-weight", default="tokens", choices=["tokens", "tasks"],
                   help="pooled: tokens = the tasks' texts pooled, every token counts once (default); tasks = the "
                        "mean of each task's score, every task counts once")
    g.add_argument("--compensation", default="none",
                   help="after removal: none (default; flap keeps its own bias), bias (the removed units' mean "
                        "contribution as an output bias), lstsq (least-squares refit of the output projection from "
                        "the kept units, layer by layer; plain weights, exports everywhere). sweep: comma-separated")
    for flag, kind, text in (("--ridge", float, "damping relative to the mean diagonal of E[x xᵀ] (default 0.01)"),
                             ("--compensation-samples", int, "calibration texts per task for the refit (default 32)")):
        g.add_argument(flag, type=kind, default=None, help="lstsq: " + text)  # None: CompensationSettings' default


def _method_settings(a):
    from diet.settings import MethodSettings

    return MethodSettings(method=a.method, calibration=a.calibration, tau=a.tau, alpha=a.alpha,
                          fusion_norm=a.fusion_norm, single_task=a.single_task, seed=a.random_seed,
                          flap_bias=not a.no_flap_bias, pool_weight=a.pool_weight)


def _compensations(a) -> tuple[str, ...]:
    from diet.settings import COMPENSATIONS

    names = tuple(x.strip() for x in a.compensation.split(",") if x.strip()) or ("none",)
    for n in names:
        if n not in COMPENSATIONS:
            raise DietError(f"unknown compensation {n!r}: use one of {', '.join(COMPENSATIONS)}")
    return names


def _lstsq_settings(a):
    """The lstsq knobs from the flags (None = the CompensationSettings default)."""
    from diet.settings import CompensationSettings

    given = {"ridge": a.ridge, "samples": a.compensation_samples}
    return CompensationSettings(method="lstsq", **{k: v for k, v in given.items() if v is not None})


def _export_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export")
    g.add_argument("--export-mode", default=None, choices=["uniform", "padded", "heterogeneous", "gguf", "vllm"],
                   help="uniform: same width in every layer, a smaller stock model; padded: per-layer masks padded "
                        "with zeros to the widest layer, stock config; heterogeneous: per-layer widths, loads with "
                        "trust_remote_code=True or after `import diet`; gguf: one model.gguf llama.cpp/Ollama run "
                        "(per-layer widths as llama.cpp's deci architecture); vllm: a folder vLLM serves as "
                        "DeciLMForCausalLM with exact per-layer widths (default: uniform when every layer keeps the "
                        "same count, else padded)")
    g.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q8_0-f16down"],
                   help="gguf tensor type: f32/f16/bf16 keep any width; q8_0 needs widths divisible by 32 "
                        "(--round-to 32); q8_0-f16down keeps ffn_down in f16, any width (default: f32)")
    g.add_argument("--round-to", type=int, default=1, choices=[1, 32, 64, 128, 256],
                   help="round each layer's kept MLP channels to a multiple of N by the mask's own ranking (for "
                        "quantized GGUF types and tensor parallelism; any export mode) (default: 1 = exact)")
    g.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    g.add_argument("--speed-repeats", type=int, default=3,
                   help="timed forward passes per model (dense vs pruned, batch 1 and 8) for the model card: the "
                        "dense model is timed, then pruned in place and timed again, so it costs no memory; 0 skips "
                        "the measurement (default: 3)")
    g.add_argument("--speed-interleaved", action="store_true",
                   help="time dense and pruned in alternation (robust to a changing machine load) instead: a dense "
                        "twin stays in memory next to the pruned model, about 1.5-1.8x the weights' bytes at 25%% "
                        "sparsity instead of 1x (default: off)")
    g.add_argument("--eval-limit", type=int, default=None,
                   help="also evaluate dense and pruned on the mask's tasks (first N items: a preview) for the "
                        "model card: the dense model is scored before it is pruned in place, so it costs no memory "
                        "(default: no evaluation)")
    g.add_argument("--card-samples", type=int, default=3,
                   help="sample generations in the model card: the dense and the pruned model's greedy answers to "
                        "the first items of the mask's tasks (0: none; default: 3)")


def _export_options(a) -> dict:
    """export_model keyword arguments from the export flags."""
    from diet.measure import SpeedSettings

    if a.speed_repeats < 0:
        raise DietError(f"--speed-repeats must be 0 or more, got {a.speed_repeats}")
    if a.eval_limit is not None and a.eval_limit < 1:
        raise DietError(f"--eval-limit must be at least 1, got {a.eval_limit}")
    eval_settings = None
    if a.eval_limit is not None:
        from diet.evaluate import EvalSettings

        eval_settings = EvalSettings(limit=a.eval_limit)
    speed = SpeedSettings(repeats=a.speed_repeats, interleaved=a.speed_interleaved) if a.speed_repeats else None
    return {"mode": a.export_mode, "overwrite": a.overwrite, "eval_settings": eval_settings,
            "outtype": a.outtype, "round_to": a.round_to, "speed": speed, "in_place": True,
            "say": lambda m: print(m, file=sys.stderr)}


def _sample_prompts(a, tasks) -> list[str]:
    """--card-samples prompts for the model card, from the tasks' first items."""
    from diet.api import sample_prompts

    if a.card_samples < 0:
        raise DietError(f"--card-samples must be 0 or more, got {a.card_samples}")
    return sample_prompts(tasks, a.card_samples)


def _disp_args(p: argparse.ArgumentParser) -> None:
    """DISP options; None means the default of diet.disp.DispSettings / diet.disp.LearnSettings (no torch
    import just to print --help)."""
    g = p.add_argument_group("DISP (--method disp / disp-learned)")
    g.add_argument("--positions", default=None,
                   help="disp: comma-separated index sets that are pruned, the others keep full width (default: all "
                        "of attn_in,attn_out,mlp_in,mlp_mid,mlp_out)")
    g.add_argument("--lam", type=float, default=None, help="disp-learned: λ of the budget penalty (paper: 16)")
    g.add_argument("--lr", type=float, default=None, help="disp-learned: hypernetwork AdamW lr (paper: 1e-3)")
    g.add_argument("--steps", type=int, default=None,
                   help="disp-learned: training steps (paper: 10000; a few hundred on a CPU)")
    g.add_argument("--tokens-per-step", type=int, default=None,
                   help="disp-learned: tokens per step (paper: 2048)")
    g.add_argument("--seq-len", type=int, default=None,
                   help="disp-learned: tokens per training sequence (default: --tokens-per-step)")
    g.add_argument("--hn-seed", type=int, default=None, help="disp-learned: seed of the hypernetwork (default 0)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m diet", description="DIET Explorer: task-aware, training-free "
                                 "structured pruning of LLMs (profile once, vote, prune exactly).")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("tasks", help="list the available tasks", description="List the offline suite and hub tasks.")
    sub.add_parser("methods", help="list the pruning methods", description="List the methods `prune --method` "
                   "and `sweep` accept: DIET, its variants and the baselines (see docs/methods.md).")

    p = sub.add_parser("profile", help="profile tasks (cached: a second run does no forward pass)",
                       description="Record per-channel activation statistics of every MLP layer for each task, "
                                   "and cache them on disk.")
    _model_args(p)
    _profile_args(p)
    _ray_args(p)

    p = sub.add_parser("prune", help="profile (cached), vote, prune and write a model folder",
                       description="Build one mask per task at the target sparsity, merge them by DIET's vote, "
                                   "physically remove the pruned channels and write a loadable model folder with "
                                   "mask.json, mask.safetensors and summary.json.")
    _model_args(p)
    _profile_args(p)
    p.add_argument("--sparsity", type=_fraction, required=True,
                   help="fraction of MLP channels removed, e.g. 0.2 (the total-parameter fraction is reported too)")
    p.add_argument("--threshold", type=int, default=None,
                   help="keep a channel if at least K task masks keep it (widths then differ per layer and the "
                        "model is saved zero-padded); default: exact budget, same count in every layer")
    p.add_argument("--score", default="mean_abs", choices=["mean_abs", "rms"],
                   help="channel score: mean |x| (our default) or RMS")
    p.add_argument("--allocation", default="layer", choices=["layer", "global"],
                   help="layer: same kept count per layer (default); global: rank across layers")
    p.add_argument("--min-keep", type=float, default=0.05, help="global allocation: minimum kept fraction per layer")
    p.add_argument("--method", default="diet", choices=[*METHOD_NAMES, "disp", "disp-learned"],
                   help="diet: MLP channels voted per task (default); the registry's baselines and variants "
                        "(`python -m diet methods` lists them); disp: DISP-LLM's five index sets per layer, "
                        "chosen training-free from activations and voted like DIET (--sparsity = fraction of block "
                        "parameters removed); disp-learned: DISP index sets learned by the paper's hypernetwork on "
                        "the tasks' calibration texts (see docs/disp.md)")
    _method_args(p)
    _disp_args(p)
    _export_args(p)
    p.add_argument("--report", default=None, metavar="FILE.html",
                   help="also write the HTML report the app's Export page downloads: headline, settings table and "
                        "every mask figure; with --method disp, every position's figures as the DISP page shows "
                        "them (refused if the file exists, unless --overwrite)")

    p = sub.add_parser("export", aliases=["apply-mask"], help="re-apply a saved mask to its base model and export",
                       description="Apply a mask saved earlier (mask.json or mask.safetensors, e.g. from an export "
                                   "folder: a few KB instead of a checkpoint) to --model and write a model folder. "
                                   "The mask is checked against the model (layers, widths, identity).")
    _model_args(p)
    p.add_argument("--mask", required=True, help="mask.json or mask.safetensors (or a folder holding them)")
    _export_args(p)

    p = sub.add_parser("sweep", help="methods x sparsities x tasks: a results table and a plot (resumable)",
                       description="Prune with each method at each sparsity (masks from cached statistics), "
                                   "evaluate every pruned model on the tasks and write results.csv (tidy: one row "
                                   "per method x sparsity x task), means.csv, plot.html and plot.png. Finished cells "
                                   "are cached: re-running resumes.")
    _model_args(p)
    _profile_args(p)
    p.add_argument("--methods", default="diet,task-agnostic,wanda-sp,random",
                   help=f"comma-separated methods from: {', '.join(METHOD_NAMES)} (default: %(default)s)")
    p.add_argument("--sparsities", default="0.1,0.2,0.3,0.4,0.5", help="comma-separated (default: %(default)s)")
    p.add_argument("--eval-tasks", type=_tasks_arg, default=None, help="evaluation tasks (default: --tasks)")
    p.add_argument("--limit", type=int, default=None, help="first N evaluation items per task (a PREVIEW)")
    p.add_argument("--eval-batch-size", type=int, default=16, help="requests per forward pass (default: 16)")
    p.add_argument("--score", default="mean_abs", choices=["mean_abs", "rms"], help="DIET's score (mean |x|)")
    p.add_argument("--allocation", default="layer", choices=["layer", "global"], help="per-layer or global widths")
    p.add_argument("--min-keep", type=float, default=0.05, help="global allocation: minimum kept fraction per layer")
    p.add_argument("--method", default="diet", help=argparse.SUPPRESS)  # method knobs below read a.method
    _method_args(p)
    p.add_argument("--out", required=True, help="folder for results.csv, means.csv, plot.html, plot.png")
    _ray_args(p)

    p = sub.add_parser("eval", help="zero-shot multiple-choice accuracy (lm-eval scoring)",
                       description="Evaluate a model (embedded default, hub id or folder) on tasks; prints a table "
                                   "of acc and acc_norm per task.")
    _model_args(p)
    p.add_argument("--tasks", required=True, type=_tasks_arg, help="comma-separated task names or task files")
    p.add_argument("--limit", type=int, default=None, help="first N evaluation items per task only (a PREVIEW)")
    p.add_argument("--batch-size", type=int, default=16, help="requests per forward pass (default: 16)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    _ray_args(p)
    p.add_argument("--compare", default=None, metavar="DIR_OR_MASK",
                   help="also evaluate a pruned model (a model folder, or a mask applied to --model) and list the "
                        "items the two answered differently")
    p.add_argument("--items", default=None, metavar="FILE.csv",
                   help="with --compare: write the changed items (question, choices, answers, scores) to this CSV")

    p = sub.add_parser("generate", help="what the model says to a prompt (streamed; dense vs pruned with --compare)",
                       description="Answer a prompt, streaming the text; greedy unless --temperature > 0. "
                                   "--compare answers again with a pruned model, one model after the other.")
    _model_args(p)
    p.add_argument("--prompt", required=True, help="the prompt (wrapped in the model's chat template unless --raw)")
    p.add_argument("--compare", default=None, metavar="DIR_OR_MASK",
                   help="a pruned model folder, a mask (mask.json / mask.safetensors) applied to --model, or an "
                        "exported .gguf (run through llama.cpp)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated at most (default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling: seed (default: 0)")
    p.add_argument("--raw", action="store_true", help="continue the prompt as raw text (no chat template)")
    p.add_argument("--json", action="store_true", help="print the answers as one JSON object, no streaming")
    return ap


def _spec(a) -> ModelSpec:
    return ModelSpec(name=a.model, revision=a.revision, dtype=a.dtype, device=a.device, device_map=a.device_map,
                     offload_folder=a.offload_folder, quantization=a.quantization,
                     trust_remote_code=a.trust_remote_code)


def _work(a):
    """The largest forward pass this command makes, for the memory check before loading."""
    from diet.memory import Workload

    if getattr(a, "max_length", None):  # profiling: --batch-size texts of up to --max-length tokens
        return Workload(batch=a.batch_size, tokens=a.max_length)
    return Workload(batch=getattr(a, "batch_size", 8) or 8, tokens=256)


def _profile(a):
    from tqdm import tqdm

    from diet.api import estimate_seconds, profile_tasks
    from diet.models import load_model
    from diet.tasks import get_task

    settings = ProfileSettings(samples=a.samples, seed=a.seed, max_length=a.max_length, batch_size=a.batch_size,
                               unit=a.unit)
    tasks = [get_task(t) for t in a.tasks]  # validate every task before loading a model
    cluster = _cluster(a) if hasattr(a, "ray") else None
    if cluster is not None:
        from diet.api import profile_on_cluster

        model, stats = _on_cluster(a, cluster, lambda pool, bar: profile_on_cluster(pool, tasks, settings,
                                                                                    progress=bar))
        return model, stats, settings
    lm = load_model(_spec(a), say=lambda m: print(m, file=sys.stderr), work=_work(a))
    eta = estimate_seconds(lm, tasks, settings)
    if eta:
        print(f"profiling {len(tasks)} task(s) x {settings.samples} samples: about {eta:.0f} s", file=sys.stderr)
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, desc=name, unit="text", file=sys.stderr))
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return lm, profile_tasks(lm, tasks, settings, progress=progress), settings


def cmd_tasks(a) -> None:
    from diet.tasks import list_tasks

    for t in list_tasks():
        print(f"{t.name:16s} {t.source:8s} {t.description}")


def cmd_methods(a) -> None:
    from diet.methods import list_methods

    for m in list_methods():
        print(f"{m['name']:14s} {m['kind']:13s} {m['description']}")


def cmd_profile(a) -> None:
    _, stats, _ = _profile(a)
    for name, s in stats.items():
        print(f"{name}: {int(s.meta['texts'])} texts, {int(s.count.sum())} tokens, "
              f"{s.shape.layers} layers x {s.shape.widths[0]} channels")


def _cmd_prune_disp(a) -> None:
    from tqdm import tqdm

    from diet.disp import DispSettings, LearnSettings, prune_disp
    from diet.folders import check_out_dir
    from diet.models import load_model
    from diet.tasks import get_task

    if a.export_mode is not None:
        raise DietError("--export-mode does not apply to DISP: its folder is always the DISP export "
                        "(per-layer index sets; loads with trust_remote_code=True)")
    check_out_dir(Path(a.out), a.overwrite)
    report_path = _check_report_path(a.report, a.overwrite)
    if report_path is not None and a.method != "disp":
        raise DietError("--report with DISP needs --method disp (the training-free index sets the DISP page shows)")
    profile = ProfileSettings(samples=a.samples, seed=a.seed, max_length=a.max_length, batch_size=a.batch_size)
    positions = {"positions": tuple(x.strip() for x in a.positions.split(",") if x.strip())} if a.positions else {}
    disp = DispSettings(sparsity=a.sparsity, score=a.score, merge="threshold" if a.threshold is not None else "budget",
                        threshold=a.threshold, allocation=a.allocation, min_keep=a.min_keep, **positions)
    given = {"lam": a.lam, "lr": a.lr, "steps": a.steps, "tokens_per_step": a.tokens_per_step, "seed": a.hn_seed,
             "seq_len": a.seq_len or a.tokens_per_step}
    learn = LearnSettings(p=1.0 - a.sparsity, **{k: v for k, v in given.items() if v is not None})
    tasks = [get_task(t) for t in a.tasks]
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    lm = load_model(_spec(a), say=say)
    bar = None

    def progress(name, done, total):  # profiling: one bar per task
        nonlocal bar
        if bar is None or bar.desc != name:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=name, unit="text", file=sys.stderr)
        bar.update(done - bar.n)

    def learn_progress(step, steps, rec):
        nonlocal bar
        bar = bar or tqdm(total=steps, desc="hypernetwork", unit="step", file=sys.stderr)
        bar.update(step - bar.n)
        bar.set_postfix(lm_loss=f"{rec['lm_loss']:.3f}", p=f"{rec['ratio']:.3f}")

    if report_path is not None:  # the statistics are cached here, so prune_disp reads them without a forward pass
        from diet.cache import atomic_write_bytes
        from diet.disp import build_disp_masks, profile_disp
        from diet.report import disp_report

        result = build_disp_masks(profile_disp(lm, tasks, profile, progress), disp)
        atomic_write_bytes(report_path, disp_report(lm.spec.name, result, profile_disp(lm, tasks, profile)
                                                    ).encode("utf-8"))
        say(f"wrote the report {report_path}")
    folder, s = prune_disp(lm, tasks, a.out, method=a.method, profile=profile, disp=disp, learn=learn,
                           overwrite=a.overwrite, say=say,
                           progress=learn_progress if a.method == "disp-learned" else progress)
    if bar is not None:
        bar.close()
    print(f"{a.method}: kept {s['block_kept_fraction']:.1%} of block parameters (p) = removed "
          f"{s['param_sparsity']:.1%} of all parameters ({s['params_total']:,} -> {s['params_after']:,}); "
          f"wrote {folder} (DISP export: load with trust_remote_code=True)")


def cmd_prune(a) -> None:
    if a.method in ("disp", "disp-learned"):
        return _cmd_prune_disp(a)
    from diet.folders import check_out_dir
    from diet.pipeline import prune

    out = Path(a.out)
    check_out_dir(out, a.overwrite)  # refuse before spending minutes on profiling
    report_path = _check_report_path(a.report, a.overwrite)
    options = _export_options(a)
    merge = "threshold" if a.threshold is not None else "budget"
    mask_settings = MaskSettings(sparsity=a.sparsity, score=a.score, merge=merge, threshold=a.threshold,
                                 allocation=a.allocation, min_keep=a.min_keep)
    if a.threshold is not None:
        mask_settings.resolved_threshold(len(a.tasks))
    method_settings = _method_settings(a)
    comp = _compensations(a)
    if len(comp) != 1:
        raise DietError("prune takes one --compensation (none, bias or lstsq); sweep takes a list")
    t0 = time.perf_counter()
    lm, stats, settings = _profile(a)

    def report(result) -> None:  # before export: the model is pruned in place there, the figures need only statistics
        if report_path is not None:
            _write_report(report_path, lm.spec.name, result, stats)

    options["sample_prompts"] = _sample_prompts(a, a.tasks)
    result, folder, summary = prune(lm, stats, out, mask_settings, method_settings, settings, general=a.general,
                                    compensation=comp[0], lstsq=_lstsq_settings(a), started=t0,
                                    before_export=report, **options)
    from diet.adapters import shares_words

    what = "MLP channels" if a.unit == "mlp" else "attention KV groups"
    print(f"{result.method}: pruned {summary['unit_sparsity']:.1%} of {what} = {summary['param_sparsity']:.1%} of all "
          f"params ({result.summary['params_total']:,} -> {_size_words(summary)}); wrote {folder} "
          f"({summary['export_mode']}); dense {shares_words(summary['param_shares'])}")
    _print_warnings(summary)


def _check_report_path(report: str | None, overwrite: bool) -> Path | None:
    """The --report file, checked before any work: an .html path in an existing folder, new unless --overwrite."""
    if report is None:
        return None
    path = Path(report)
    if path.suffix.lower() not in (".html", ".htm"):
        raise DietError(f"--report {report}: give an .html file name")
    if path.is_dir() or (path.exists() and not overwrite):
        raise DietError(f"{path} exists; choose another file name or pass --overwrite")
    if not path.parent.is_dir():
        raise DietError(f"--report {report}: the folder {path.parent} does not exist")
    return path


def _write_report(path: Path, model_name: str, result, stats: dict) -> None:
    from diet.cache import atomic_write_bytes
    from diet.report import report

    atomic_write_bytes(path, report(model_name, result, stats).encode("utf-8"))
    print(f"wrote the report {path}", file=sys.stderr)


def _print_warnings(sizes: dict) -> None:
    """The export's warnings again under its last line, where a user looks (the run still succeeded: exit 0)."""
    for line in sizes.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)


def _size_words(summary: dict) -> str:
    """"116,834,112" or "116,834,112 logical, 118,498,176 stored" when the file holds more (padding)."""
    logical, stored = summary["params_after"], summary.get("params_stored", summary["params_after"])
    return f"{logical:,}" if stored == logical else f"{logical:,} logical, {stored:,} stored"


def cmd_sweep(a) -> None:
    from diet.cache import atomic_write_bytes
    from diet.models import load_model
    from diet.sweep import SweepSettings, figure, mean_table, run_sweep, save_png, table

    try:
        sparsities = tuple(float(x) for x in a.sparsities.split(",") if x.strip())
    except ValueError:
        raise DietError(f"--sparsities must be comma-separated numbers, got {a.sparsities!r}") from None
    sweep = SweepSettings(methods=tuple(_tasks_arg(a.methods)), sparsities=sparsities, tasks=tuple(a.tasks),
                          eval_tasks=tuple(a.eval_tasks) if a.eval_tasks else None, limit=a.limit,
                          general=a.general, batch_size=a.eval_batch_size, compensations=_compensations(a))
    profile = ProfileSettings(samples=a.samples, seed=a.seed, max_length=a.max_length, batch_size=a.batch_size,
                              unit=a.unit)
    mask = MaskSettings(score=a.score, allocation=a.allocation, min_keep=a.min_keep)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    cluster = _cluster(a)
    if cluster is not None:
        from diet.sweep import sweep_on_cluster

        _, rows = _on_cluster(a, cluster, lambda pool, bar: sweep_on_cluster(
            pool, sweep, profile, mask, _method_settings(a), say=say, lstsq=_lstsq_settings(a), progress=bar))
    else:
        lm = load_model(_spec(a), say=say)
        rows = run_sweep(lm, sweep, profile, mask, _method_settings(a), say=say, lstsq=_lstsq_settings(a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.csv", table(rows).to_csv(index=False).encode())
    means = mean_table(rows)
    atomic_write_bytes(out / "means.csv", means.to_csv().encode())
    atomic_write_bytes(out / "plot.html", figure(rows).to_html(include_plotlyjs="cdn").encode())
    save_png(rows, out / "plot.png")
    print(means.round(4).to_string())
    print(f"wrote {out}/results.csv, means.csv, plot.html, plot.png", file=sys.stderr)


def cmd_eval(a) -> None:
    from diet.evaluate import EvalSettings, evaluate_tasks, format_table
    from diet.models import load_model
    from diet.tasks import get_task

    tasks = [get_task(t) for t in a.tasks]
    if a.limit is not None and a.limit < 1:
        raise DietError(f"--limit must be at least 1, got {a.limit}")
    if a.items and not a.compare:
        raise DietError("--items lists what pruning changed: it needs --compare DIR_OR_MASK")
    if a.items and not a.items.endswith(".csv"):
        raise DietError(f"--items writes a CSV file: give a name ending in .csv, not {a.items!r}")
    kind = _compare_kind(a.compare) if a.compare else None
    if kind == "gguf":
        raise DietError("eval --compare takes a model folder or a mask; a GGUF file is scored by "
                        "bench/gguf_exactness.py")
    if a.ray is not None and a.compare:
        raise DietError("--compare evaluates the pruned model in this process: drop --ray, or run eval --ray "
                        "without --compare")
    settings = EvalSettings(limit=a.limit, batch_size=a.batch_size)
    cluster = _cluster(a)
    if cluster is not None:  # one unit per task; each result is cached under the dense model's comparison key
        from diet.api import evaluate_on_cluster

        lm, results = _on_cluster(a, cluster, lambda pool, bar: evaluate_on_cluster(pool, tasks, settings,
                                                                                    progress=bar))
    else:
        lm = load_model(_spec(a), say=lambda m: print(m, file=sys.stderr), work=_work(a))
        results = evaluate_tasks(lm.model, lm.tokenizer, tasks, settings)
    print(format_table(results))
    out = {"model": lm.spec.name, "model_identity": lm.identity, "results": [r.to_dict() for r in results]}
    if a.compare:
        from diet.api import changed_items
        from diet.changed import summary_lines, write_csv

        model, tokenizer = _compare_model(a, kind, lm)
        pruned = evaluate_tasks(model, tokenizer, tasks, settings)
        print(f"\n{a.compare}:")
        print(format_table(pruned))
        changes = changed_items(tasks, results, pruned)
        print("\nitems the two models answered differently:")
        print("\n".join(summary_lines(changes)))
        out.update(compare=a.compare, compare_results=[r.to_dict() for r in pruned],
                   changed=[{"task": c.task, "dense_only": c.broken, "pruned_only": c.fixed} for c in changes])
        if a.items:
            write_csv(Path(a.items), changes)
            print(f"wrote {a.items}", file=sys.stderr)
    if a.json:
        from diet.cache import atomic_write_json

        atomic_write_json(Path(a.json), out)


def _compare_kind(target: str) -> str:
    """What --compare names: "gguf" (a .gguf file, or a folder whose model is one), "folder" (a model folder),
    "mask" (mask.json / mask.safetensors, or a folder holding only a mask)."""
    p = Path(target)
    if not p.exists():
        raise DietError(f"--compare: nothing at {target}")
    if p.is_file():
        if p.suffix == ".gguf":
            return "gguf"
        if p.suffix in (".json", ".safetensors"):
            return "mask"
        raise DietError(f"--compare: {target} is neither a model folder, a mask file nor a .gguf")
    if (p / "config.json").is_file():
        return "folder"
    if any(p.glob("*.gguf")):
        return "gguf"
    if (p / "mask.json").is_file() or (p / "mask.safetensors").is_file():
        return "mask"
    raise DietError(f"--compare: {target} holds no config.json, .gguf or mask file")


def _compare_model(a, kind: str, lm):
    """(model, tokenizer) of the pruned model --compare names. A mask cuts `lm.model` itself (one model in
    memory); a folder is loaded after `lm`'s weights are let go."""
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if kind == "mask":
        from diet.api import prune_copy
        from diet.export.maskfile import check_mask, read_mask

        result, source = read_mask(a.compare if not Path(a.compare).is_dir() else Path(a.compare) / "mask.json")
        check_mask(result, source, lm, say)
        return prune_copy(lm, result, in_place=True), lm.tokenizer
    from dataclasses import replace

    from diet.models import load_model

    lm.model.to("meta")  # the dense weights are no longer needed: never hold two models
    other = load_model(replace(_spec(a), name=a.compare), say=say)
    return other.model, other.tokenizer


def _print_stream(label: str):
    """An `on_update` that prints each answer's new text as it arrives (a terminal's streaming view)."""
    shown = [0]
    print(f"--- {label} ---", flush=True)

    def update(g) -> None:
        sys.stdout.write(g.text[shown[0]:])
        sys.stdout.flush()
        shown[0] = len(g.text)

    return update


def _stats_line(g) -> str:
    return (f"[{g.engine}: {g.new_tokens} tokens, time to first token {g.ttft:.2f} s, "
            f"{g.tokens_per_second:.1f} tokens/s, finish: {g.finish}]")


def cmd_generate(a) -> None:
    from diet.generate import GenerateSettings

    settings = GenerateSettings(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                                seed=a.seed, chat=not a.raw)
    settings.check()
    if not a.prompt.strip():
        raise DietError("the prompt is empty: type something for the model to answer")
    kind = _compare_kind(a.compare) if a.compare else None
    answers = []

    def one(label: str, run) -> None:
        update = None if a.json else _print_stream(label)
        g = run(update)
        if not a.json:
            print("\n" + _stats_line(g) if g.text else _stats_line(g), flush=True)
        if g.note:
            print(f"note ({label}): {g.note}", file=sys.stderr)
        answers.append(g)

    if a.model.endswith(".gguf") or (Path(a.model).is_dir() and _compare_kind(a.model) == "gguf"):
        from diet.api import generate_gguf

        if a.compare:
            raise DietError("--compare needs a transformers --model (the dense side); a GGUF --model answers alone")
        one("gguf", lambda up: generate_gguf(a.model, a.prompt, settings, "gguf", up))
    else:
        from diet.api import generate
        from diet.models import load_model

        lm = load_model(_spec(a), say=lambda m: print(m, file=sys.stderr))
        dense = "dense" if a.compare else lm.spec.name
        one(dense, lambda up: generate(lm, a.prompt, settings, dense, on_update=up))
        if kind == "gguf":
            from diet.api import generate_gguf

            lm = None  # llama.cpp runs in its own process: free the dense model first
            one("gguf (llama.cpp)", lambda up: generate_gguf(a.compare, a.prompt, settings, "pruned", up))
        elif kind:
            model, tokenizer = _compare_model(a, kind, lm)
            one("pruned", lambda up: generate(lm, a.prompt, settings, "pruned", model, up, tokenizer=tokenizer))
    if a.compare:
        print("mode: one model after the other (dense, then pruned)", file=sys.stderr)
    if a.json:
        print(json.dumps({"prompt": a.prompt, "settings": asdict(settings),
                          "answers": [g.to_dict() for g in answers]}, indent=1))


def cmd_export(a) -> None:
    from diet.export import apply_mask
    from diet.export.maskfile import read_mask
    from diet.folders import check_out_dir
    from diet.models import load_model
    from diet.pipeline import written_sizes

    check_out_dir(Path(a.out), a.overwrite)  # refuse, and read the mask, before loading a model
    result, _ = read_mask(a.mask)
    options = _export_options(a)
    options["sample_prompts"] = _sample_prompts(a, result.tasks)
    lm = load_model(_spec(a), say=options["say"])
    folder = apply_mask(lm, a.mask, a.out, **options)
    written = json.loads((folder / "diet_settings.json").read_text())
    kept, total = sum(written["kept_per_layer"]), sum(result.shape.widths)
    sizes = written_sizes(written, {"params_after": 0, "params_total": 1, "units_total": total})
    print(f"applied {a.mask} ({kept:,} of {total:,} channels kept; tasks: {', '.join(result.tasks)}) "
          f"to {lm.spec.name}: {_size_words(sizes)} parameters; wrote {folder} ({written['mode']})")
    _print_warnings(sizes)


COMMANDS = {"tasks": cmd_tasks, "methods": cmd_methods, "profile": cmd_profile, "prune": cmd_prune,
            "sweep": cmd_sweep, "eval": cmd_eval, "export": cmd_export, "apply-mask": cmd_export,
            "generate": cmd_generate}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command. SIGTERM (a scheduler, `kill`, a closed terminal) ends it like Ctrl-C: the staged output
    folder and every temporary file are removed on the way out, so nothing half-written is left behind.

    Why two `try`s: a SIGTERM that lands while the handler is being put back (the command already done) raised its
    KeyboardInterrupt inside the `finally`, past every `except`, and ended the run with a traceback and exit 1 (seen
    in tests/test_pipeline.py's SIGTERM test, 1 run in 15). The outer `except` catches exactly that one; once the
    previous handler is back, a signal acts as it did before the command started."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        try:
            return _run(args)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except KeyboardInterrupt:  # the signal arrived after the command, while the handler was being put back
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        return 130


def _run(args: argparse.Namespace) -> int:
    """The command itself: a user's mistake is one `error:` line (exit 2), an interruption one line (exit 130)."""
    try:
        COMMANDS[args.command](args)
    except DietError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was left behind", file=sys.stderr)
        return 130
    return 0
