"""llama.cpp vs transformers on SmolLM2-135M pruned by DIET: the full-suite figures behind tests/test_gguf.py.

    flock /tmp/diet-torch.lock .venv/bin/python bench/gguf_exactness.py --check deci   # then llama, then q8

deci:  voting threshold 2 of 3 tasks at 25% (per-layer widths), f32 GGUF (`deci` architecture): max |Δ log-prob|
       over every position and vocabulary entry of 50 suite prompts, top-1 agreement at the next token, tokenization
       of every suite text, and accuracy on two tasks (every item), llama.cpp logits vs the pruned torch model.
llama: the exact-budget mask at 25% (uniform widths), f32 GGUF in the `llama` architecture: the same.
q8:    the voted mask rounded to multiples of 32 (`--round-to 32`): accuracy of its Q8_0 file and of its
       q8_0-f16down file (ffn_down in f16) vs its f32 file, and the rounding's own cost (the unrounded mask's
       accuracy, torch). bench/gguf_q8.py breaks the Q8_0 loss down by tensor.
Each check runs in a few minutes on 2 cores; figures go to stdout and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_gguf import (  # noqa: E402  (the same helpers the tests use)
    compare_logprobs,
    cpp_accuracy,
    open_gguf,
    suite_prompts,
    suite_texts,
    torch_accuracy,
)

TASKS = ("arithmetic", "capitals", "facts")
EVAL = ("arithmetic", "capitals")


def masks(lm, samples: int):
    from diet.api import build_mask, profile_tasks
    from diet.settings import MaskSettings, ProfileSettings

    stats = profile_tasks(lm, list(TASKS), ProfileSettings(samples=samples))
    return (build_mask(stats, MaskSettings(sparsity=0.25, merge="threshold", threshold=2)),
            build_mask(stats, MaskSettings(sparsity=0.25)))


def write(lm, result, folder: Path, outtype: str = "f32") -> Path:
    from diet.api import prune_copy
    from diet.export.gguf.writer import GGUFSettings, tokenizer_fields, write_gguf

    path = folder / f"{outtype}-{len(set(result.summary['kept_per_layer']))}.gguf"
    info = write_gguf(prune_copy(lm, result), tokenizer_fields(lm), path, GGUFSettings(outtype=outtype))
    print(f"wrote {path.name}: {info['arch']}, {info['params_stored']:,} parameters, {info['bytes'] / 1e6:.0f} MB")
    return path


def exactness(lm, result, path: Path, limit: int | None) -> dict:
    from diet.api import prune_copy
    from diet.tasks import get_task

    pruned = prune_copy(lm, result)
    llm = open_gguf(path)
    t0 = time.perf_counter()
    worst, top1 = compare_logprobs(llm, pruned, lm.tokenizer, suite_prompts(50))
    out = {"kept_per_layer": result.summary["kept_per_layer"], "max_abs_logprob_diff": worst, "top1": top1,
           "accuracy": {}}
    print(f"50 prompts: max |Δ log-prob| {worst:.2e}, top-1 agreement {top1:.0%} ({time.perf_counter() - t0:.0f} s)")
    for name in EVAL:
        task = get_task(name)
        a, b = cpp_accuracy(llm, lm.tokenizer, task, limit), torch_accuracy(pruned, lm.tokenizer, task, limit)
        out["accuracy"][name] = {"llama_cpp": a, "transformers": b, "items": len(task.evaluation[:limit])}
        print(f"{name}: llama.cpp {100 * a:.2f}  transformers {100 * b:.2f}  (Δ {100 * (a - b):+.2f} points)")
    return out


def tokenization(lm, path: Path) -> dict:
    vocab = open_gguf(path, vocab_only=True)
    texts = suite_texts()
    same = sum(vocab.tokenize(s.encode(), add_bos=False, special=False) == lm.tokenizer.encode(
        s, add_special_tokens=False) for s in texts)
    print(f"tokenization: {same} of {len(texts)} suite texts identical")
    return {"texts": len(texts), "identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", required=True, choices=["deci", "llama", "q8"])
    ap.add_argument("--samples", type=int, default=100, help="calibration texts per task (default 100)")
    ap.add_argument("--limit", type=int, default=None, help="evaluation items per task (default: all)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from diet.api import rounded
    from diet.models import load_model
    from diet.tasks import get_task

    lm = load_model("smollm2-135m", say=lambda m: None)
    voted, uniform = masks(lm, a.samples)
    report: dict = {"check": a.check}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if a.check in ("deci", "llama"):
            result = voted if a.check == "deci" else uniform
            path = write(lm, result, folder)
            report.update(exactness(lm, result, path, a.limit))
            if a.check == "deci":
                report["tokenization"] = tokenization(lm, path)
        else:
            from diet.api import prune_copy

            r32 = rounded(voted, 32)
            report["kept_per_layer"] = r32.summary["kept_per_layer"]
            report["params"] = {"unrounded": voted.summary["params_after"], "rounded": r32.summary["params_after"]}
            llms = {t: open_gguf(write(lm, r32, folder, t)) for t in ("f32", "q8_0", "q8_0-f16down")}
            report["accuracy"] = {}
            for name in EVAL:
                task = get_task(name)
                acc = {t: cpp_accuracy(llm, lm.tokenizer, task, a.limit) for t, llm in llms.items()}
                unr = torch_accuracy(prune_copy(lm, voted), lm.tokenizer, task, a.limit)
                report["accuracy"][name] = {**acc, "unrounded_transformers": unr}
                print(f"{name}: f32 {100 * acc['f32']:.2f}, " + ", ".join(
                    f"{t} {100 * acc[t]:.2f} (Δ {100 * (acc[t] - acc['f32']):+.2f} points)"
                    for t in ("q8_0", "q8_0-f16down")) + f"; unrounded mask {100 * unr:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
