"""Where Q8_0 loses accuracy in llama.cpp: per-tensor sensitivity of SmolLM2-135M (dense, and DIET's voted mask
rounded to 32), scored on every item of the chosen tasks, paired against the f32 file of the same model.

    flock /tmp/diet-torch.lock .venv/bin/python bench/gguf_q8.py                       # arithmetic, capitals
    flock /tmp/diet-torch.lock .venv/bin/python bench/gguf_q8.py --tasks facts,sentiment --variants f32,q8_0
    flock /tmp/diet-torch.lock .venv/bin/python bench/gguf_q8.py --models pruned --samples 20 \
        --variants q8_0,q8_0-sorted,q8_0-fit-sorted                            # the test's mask, block-friendly

Files: `f32`, `q8_0` (ours: every matrix Q8_0) and `q8_0-f16down` (ours: ffn_down kept in f16) come from
diet.export.gguf.writer; `lq8*` come from llama.cpp's own quantizer (llama_model_quantize, what `llama-quantize` runs)
on the f32 file: `lq8` every matrix Q8_0, `lq8-embf16` the (tied) token embedding in f16, `lq8-attnf16` /
`lq8-downf16` / `lq8-upgatef16` those matrices in f16; `fakeq8` is an f32 file of weights rounded through Q8_0 and
back (the weights' share of the loss: llama.cpp's Q8_0 matmul also rounds its input to 8 bits in blocks of 32, an f32
file does not).
First it checks that our Q8_0 bytes equal llama.cpp's for every tensor. Per variant and task: accuracy, items won /
lost against f32, the standard error of the paired difference, and the mean |Δ log-likelihood| per request (a
continuous measure of the same damage). About 1 minute per file and 2 tasks on 2 cores.

Block-friendly variants (diet.export.gguf.quant; off in the export by default, docs/export.md has the figures):
`q8_0-sorted` sorts each layer's MLP channels by the largest |weight| of their ffn_down column (exact: gate/up rows
and down columns move together), `q8_0-fit` picks each block's Q8_0 scale by least squared error instead of
llama.cpp's largest-|value| ÷ 127 (same format, different bytes), `q8_0-fit-sorted` both.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_gguf import cpp_scores, open_gguf  # noqa: E402  (the tests' llama.cpp settings: fp32 KV cache, every logit)

OURS = ("f32", "q8_0", "q8_0-f16down", "fakeq8", "q8_0-sorted", "q8_0-fit", "q8_0-fit-sorted")
VARIANT_SETTINGS = {"q8_0-sorted": {"sort_channels": True}, "q8_0-fit": {"q8_scales": "fit"},
                    "q8_0-fit-sorted": {"sort_channels": True, "q8_scales": "fit"}}  # written as q8_0 with these
LLAMA_CPP = {"lq8": [], "lq8-embf16": [("token_embd", "F16")], "lq8-attnf16": [("attn_", "F16")],
             "lq8-downf16": [("ffn_down", "F16")], "lq8-upgatef16": [("ffn_(up|gate)", "F16")]}


def fake_q8(model):
    """A copy whose matrices are rounded through Q8_0 and back (gguf's quantizer, llama.cpp's rounding)."""
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                a = p.detach().float().numpy()
                p.copy_(torch.from_numpy(dequantize(quantize(a, Q.Q8_0), Q.Q8_0).reshape(a.shape)))
    return m


def llama_quantize(src: Path, dst: Path, overrides: list[tuple[str, str]]) -> None:
    """llama.cpp's quantizer, Q8_0 with per-tensor type overrides (regex, type)."""
    import llama_cpp as L

    p = L.llama_model_quantize_default_params()
    p.nthread, p.ftype = 2, L.LLAMA_FTYPE_MOSTLY_Q8_0
    arr = (L.llama_model_tensor_override * (len(overrides) + 1))()
    for i, (pattern, kind) in enumerate(overrides):
        arr[i].pattern, arr[i].type = pattern.encode(), getattr(L, f"GGML_TYPE_{kind}")
    arr[len(overrides)].pattern = None
    p.tt_overrides = ctypes.cast(arr, type(p.tt_overrides))
    if L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) != 0:
        raise SystemExit(f"llama_model_quantize failed on {src}")


def same_bytes(a: Path, b: Path) -> tuple[int, int]:
    """(tensors, tensors whose type or bytes differ) between two GGUF files."""
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    differ = sum(n not in tb or ta[n].tensor_type != tb[n].tensor_type
                 or not np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8))
                 for n in ta)
    return len(ta), differ + len(set(tb) - set(ta))


def write_files(lm, model, folder: Path, variants: list[str]) -> dict[str, Path]:
    from diet.export.gguf.writer import GGUFSettings, tokenizer_fields, write_gguf

    fields, files = tokenizer_fields(lm), {}
    for v in ["f32", *[v for v in variants if v in OURS and v != "f32"]]:
        m, outtype = (fake_q8(model), "f32") if v == "fakeq8" else (model, "q8_0" if v in VARIANT_SETTINGS else v)
        files[v] = folder / f"{v}.gguf"
        write_gguf(m, fields, files[v], GGUFSettings(outtype=outtype, **VARIANT_SETTINGS.get(v, {})))
    for v in variants:
        if v in LLAMA_CPP:
            files[v] = folder / f"{v}.gguf"
            llama_quantize(files["f32"], files[v], LLAMA_CPP[v])
    return files


def scores(llm, tokenizer, task) -> tuple[np.ndarray, list[list[float]]]:
    """Per item: 1 if right, and the log-likelihood of each choice (the evaluator's requests and metric; the
    tests' own llama.cpp scoring loop)."""
    hits, lls = cpp_scores(llm, tokenizer, task, None)
    return np.array(hits), lls


def paired(h: np.ndarray, ref: np.ndarray, ll, ll_ref) -> dict:
    d = h - ref
    n = len(d)
    return {"accuracy": float(h.mean()), "delta_points": float(100 * d.mean()), "won": int((d > 0).sum()),
            "lost": int((d < 0).sum()), "se_points": float(100 * d.std(ddof=1) / np.sqrt(n)),
            "mean_abs_dll": float(np.mean([abs(a - b) for x, y in zip(ll, ll_ref) for a, b in zip(x, y)]))}


def line(row: dict) -> str:
    out = f"acc {100 * row['accuracy']:6.2f}"
    if "won" in row:
        out += (f"  Δ {row['delta_points']:+.2f} (won {row['won']}, lost {row['lost']}, SE {row['se_points']:.2f})"
                f"  mean|Δll| {row['mean_abs_dll']:.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="arithmetic,capitals")
    ap.add_argument("--models", default="pruned,dense")
    ap.add_argument("--variants", default="q8_0,q8_0-f16down,fakeq8,lq8,lq8-embf16,lq8-attnf16,lq8-downf16,"
                                          "lq8-upgatef16")
    ap.add_argument("--samples", type=int, default=100, help="calibration texts per task behind the mask (the "
                    "integration test's: 20)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from bench.gguf_exactness import masks
    from diet.api import prune_copy, rounded
    from diet.models import load_model
    from diet.tasks import get_task

    lm = load_model("smollm2-135m", say=lambda m: None)
    voted, _ = masks(lm, a.samples)
    variants = [v for v in a.variants.split(",") if v != "f32"]
    report: dict = {"kept_per_layer": rounded(voted, 32).summary["kept_per_layer"], "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for which in a.models.split(","):
            model = lm.model if which == "dense" else prune_copy(lm, rounded(voted, 32))
            folder = Path(tmp) / which
            folder.mkdir()
            files = write_files(lm, model, folder, variants)
            if "q8_0" in files and "lq8" in files:
                n, differ = same_bytes(files["q8_0"], files["lq8"])
                print(f"{which}: our q8_0 vs llama.cpp's quantizer: {differ} of {n} tensors differ")
            out = report["models"][which] = {"bytes": {v: p.stat().st_size for v, p in files.items()}, "tasks": {}}
            for name in a.tasks.split(","):
                task = get_task(name)
                res = {}
                for v in ["f32", *variants]:
                    t0 = time.perf_counter()
                    res[v] = scores(open_gguf(files[v]), lm.tokenizer, task)
                    row = (paired(res[v][0], res["f32"][0], res[v][1], res["f32"][1]) if v != "f32"
                           else {"accuracy": float(res[v][0].mean())})
                    out["tasks"].setdefault(name, {})[v] = row
                    size = files[v].stat().st_size / 1e6
                    print(f"{which} {name} ({len(task.evaluation)} items) {v:14s} {size:5.0f} MB  {line(row)}  "
                          f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
