"""The GPU check: DIET's whole path on random-weight models in the real shapes of Llama-3.1-8B and Gemma-2-9B.

Why random weights: a GPU machine has no Hub access, and speed, memory and exactness depend on the shapes, not on
the values. Each model is built in bfloat16 directly on the GPU (no download, no CPU copy) and used with the real
tokenizer of the embedded model (its ids fit any of these vocabularies). Then, per model:

1. profile 7 offline tasks x 100 samples; time ÷ a plain forward pass over the very same batches (hook overhead);
2. evaluate 2 offline tasks: items/s of our scorer ÷ lm-eval's `HFLM.loglikelihood` on the same GPU and requests;
3. masked == sliced: logits of the masked model (pruned channels zeroed) vs the model pruned in place. Slicing
   removes exact zeros from every sum, so in exact arithmetic the two are identical; in bf16 they differ only by
   how the GEMM kernels block and order the remaining sums. The tolerance is therefore bf16's own noise, measured
   on the same inputs: |sliced - masked| must stay within 2x |masked in bf16 - masked in fp32| (and argmax agree
   on >= 99% of positions);
4. prune in place and export (`diet.export.export_model(..., in_place=True)`): peak GPU memory ÷ weight bytes;
5. reload the export with plain transformers: logits equal to the in-memory pruned model's.

Prints one table. About 5-8 minutes on one H100/H200-class GPU for both models.

    python bench/gpu_check.py                  # both real shapes on cuda
    python bench/gpu_check.py --shape tiny     # the same path on CPU, tiny shapes (what the test suite runs)
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "llama3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                        max_position_embeddings=8192, tie_word_embeddings=False),
    "gemma2-9b": dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                      final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=256,
                      sliding_window=4096, max_position_embeddings=8192, tie_word_embeddings=True),
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True),
    "tiny-gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=49152,
                        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=16,
                        sliding_window=64, tie_word_embeddings=True),
}
SETS = {"real": ("llama3.1-8b", "gemma2-9b"), "tiny": ("tiny-llama", "tiny-gemma2")}
PROFILE_TASKS = ("arithmetic", "capitals", "facts", "morphology", "sentiment", "physical", "reading")
EVAL_TASKS = ("capitals", "sentiment")


def build(shape: str, device: str, tokenizer):
    """A random bf16 model of `shape`, created directly on `device`, wrapped as a LoadedModel."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from diet.models import LoadedModel
    from diet.settings import ModelSpec

    cfg = dict(SHAPES[shape])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    spec = ModelSpec(name=f"random-{shape}", dtype="bfloat16", device=device)
    return LoadedModel(model, tokenizer, spec, path="", identity=f"random:{shape}:seed0")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_step(lm, samples: int, device: str) -> tuple[dict, float]:
    """(statistics per task, profiling time ÷ plain forward time over the same batches)."""
    from diet.profile import HalfSums, choose_texts, profile_texts, run_batches
    from diet.settings import ProfileSettings
    from diet.tasks import get_task

    class Plain(HalfSums):  # the same loop and batches, no hooks: the cost of the forward passes alone
        def __init__(self):
            import torch

            self.handles, self.count = [], torch.zeros(2, dtype=torch.float64)

    settings = ProfileSettings(samples=samples)
    stats, t_profile, t_plain = {}, 0.0, 0.0
    for name in PROFILE_TASKS:
        texts = choose_texts(get_task(name).calibration, settings)
        _sync(device)
        t0 = time.perf_counter()
        run_batches(lm.model, lm.tokenizer, texts, settings, Plain())
        _sync(device)
        t1 = time.perf_counter()
        stats[name] = profile_texts(lm.model, lm.tokenizer, texts, settings)
        _sync(device)
        t_plain, t_profile = t_plain + (t1 - t0), t_profile + (time.perf_counter() - t1)
    return stats, t_profile / t_plain


def eval_step(lm, limit: int, device: str) -> dict:
    """Items/s of our scorer and of lm-eval's HFLM.loglikelihood on the same requests and GPU."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from diet.evaluate import EvalSettings, loglikelihoods
    from diet.tasks import get_task

    items = [it for t in EVAL_TASKS for it in get_task(t).evaluation[:limit]]
    requests = [r for it in items for r in it.requests()]
    _sync(device)
    t0 = time.perf_counter()
    ours = loglikelihoods(lm.model, lm.tokenizer, requests, EvalSettings().batch_size)
    _sync(device)
    t_ours = time.perf_counter() - t0
    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=EvalSettings().batch_size,
                max_length=EvalSettings().max_length, device=device)
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    _sync(device)
    t0 = time.perf_counter()
    theirs = [ll for ll, _ in hflm.loglikelihood(instances, disable_tqdm=True)]
    _sync(device)
    t_theirs = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    return {"items": len(items), "ours_items_per_s": len(items) / t_ours,
            "lm_eval_items_per_s": len(items) / t_theirs, "speed_ratio": t_theirs / t_ours, "loglik_max_diff": diff}


def _ids(lm, device: str):
    from diet.tasks import get_task

    texts = [it.calibration_text() for it in get_task("reading").evaluation[:4]]
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def prune_step(lm, stats: dict, device: str, out: Path) -> dict:
    """masked vs sliced within bf16's own noise, in-place prune + export (peak GPU memory), reload."""
    import torch
    from transformers import AutoModelForCausalLM

    from diet.api import build_mask
    from diet.export import export_model
    from diet.prune import zero_units
    from diet.settings import MaskSettings

    result = build_mask(stats, MaskSettings(sparsity=0.25))
    ids, mask = _ids(lm, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    with torch.inference_mode():
        zero_units(lm.model, result.keep())  # the masked model (in place: the export below cuts these channels)
        masked = lm.model(input_ids=ids, attention_mask=mask).logits.float()
        ref32 = copy.deepcopy(lm.model).float()
        noise = (ref32(input_ids=ids, attention_mask=mask).logits.float() - masked).abs().max().item()
        del ref32
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    export_model(lm, result, out, in_place=True)
    export_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / weight_bytes if device.startswith("cuda") else float("nan")
    with torch.inference_mode():
        sliced = lm.model(input_ids=ids, attention_mask=mask).logits.float()
        diff = (sliced - masked).abs().max().item()
        agree = (sliced.argmax(-1) == masked.argmax(-1))[mask.bool()].float().mean().item()
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).to(device).eval()
        reload_diff = (reloaded(input_ids=ids, attention_mask=mask).logits.float() - sliced).abs().max().item()
    config = json.loads((out / "config.json").read_text())
    ok = diff <= max(2 * noise, 1e-3) and agree >= 0.99 and reload_diff == 0.0 and config.get("dtype") == "bfloat16"
    return {"sliced_vs_masked": diff, "bf16_noise": noise, "argmax_agree": agree, "export_peak_ratio": peak,
            "export_seconds": export_s, "export_gb": sum(p.stat().st_size for p in out.glob("model*.safetensors"))
            / 1e9, "export_dtype": config.get("dtype"), "reload_diff": reload_diff, "ok": ok}


def check(shape: str, device: str, samples: int, limit: int, tokenizer) -> dict:
    t0 = time.perf_counter()
    lm = build(shape, device, tokenizer)
    params = sum(p.numel() for p in lm.model.parameters())
    stats, overhead = profile_step(lm, samples, device)
    row = {"shape": shape, "params_b": params / 1e9, "profile_overhead": overhead, **eval_step(lm, limit, device)}
    out = Path(tempfile.mkdtemp(prefix=f"gpu-check-{shape}-")) / "export"
    try:
        row.update(prune_step(lm, stats, device, out))
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    row["seconds"] = time.perf_counter() - t0
    return row


def table(rows: list[dict], device_name: str) -> str:
    lines = [f"GPU check on {device_name}",
             "| shape | params | profile ÷ plain forward | eval items/s ours / lm-eval (×) | sliced vs masked max|Δ| "
             "(bf16 noise) | argmax agree | export peak ÷ weights | export | reload max|Δ| | time | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['params_b']:.2f}B | {r['profile_overhead']:.2f}× | "
                     f"{r['ours_items_per_s']:.1f} / {r['lm_eval_items_per_s']:.1f} ({r['speed_ratio']:.2f}×) | "
                     f"{r['sliced_vs_masked']:.3g} ({r['bf16_noise']:.3g}) | {r['argmax_agree']:.3f} | "
                     f"{r['export_peak_ratio']:.2f} | {r['export_gb']:.2f} GB {r['export_dtype']} | "
                     f"{r['reload_diff']:.3g} | {r['seconds']:.0f} s | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="real", choices=[*SETS, *SHAPES],
                    help="real: Llama-3.1-8B and Gemma-2-9B shapes on cuda; tiny: tiny shapes on CPU; or one shape")
    ap.add_argument("--device", default=None, help="default: cuda for real shapes, cpu for tiny ones")
    ap.add_argument("--samples", type=int, default=None, help="profiling texts per task (default 100; tiny: 8)")
    ap.add_argument("--limit", type=int, default=None, help="evaluation items per task (default 100; tiny: 4)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from diet.models import ensure_embedded

    shapes = SETS.get(a.shape, (a.shape,))
    tiny = all(s.startswith("tiny") for s in shapes)
    device = a.device or ("cpu" if tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run --shape tiny for the CPU path", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded(say=lambda m: print(m, file=sys.stderr)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    samples, limit = a.samples or (8 if tiny else 100), a.limit or (4 if tiny else 100)
    rows = [check(s, device, samples, limit, tokenizer) for s in shapes]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(table(rows, name))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
