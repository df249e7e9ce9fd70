"""The second embedded model, Gemma-3-270m (base), on its real weights: what tiny random Gemmas cannot show.

Why real weights here: tied embeddings over a 262k vocabulary, GeGLU, (1 + w) norms, q/k norms and the sliding-window
pattern are all in the tiny Gemma-3 tests too, but only the real checkpoint shows that the converted model, its
tokenizer and our slicing agree end to end. Kept cheap (8 calibration texts per task, a few short prompts): the
model's forward pass is ~2x SmolLM2's (its LM head alone is 168 M of its 268 M parameters).

    flock /tmp/diet-torch.lock .venv/bin/pytest -q tests/test_gemma.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.integration

NAME = "gemma3-270m"
TASKS = "capitals,facts,reading"
PROMPTS = ["The capital of France is", "Question: What is 7 plus 5?\nAnswer:",
           "Read the passage. The river rose after three days of rain, and the bridge was closed.\nWhy?"]


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "diet", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=900)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A fresh statistics cache that shares the converted model folder and the assembled GGUF (install step)."""
    from diet.models import ensure_embedded
    from diet.settings import cache_root

    folder = ensure_embedded(NAME, say=lambda m: None)
    root = tmp_path_factory.mktemp("gemma_cache")
    (root / "models").mkdir()
    (root / "models" / NAME).symlink_to(folder)
    (root / "gguf").symlink_to(cache_root() / "gguf")
    return {"DIET_CACHE": str(root)}


@pytest.fixture(scope="module")
def dense():
    from diet.models import load_model

    return load_model(NAME, say=lambda m: None)


def logits(model, tokenizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**tokenizer(p, return_tensors="pt")).logits[0] for p in PROMPTS]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def masked(dense, keep, unit: str = "mlp"):
    """The masked-dense reference: a copy of the dense model with the dropped units zeroed."""
    import copy

    from diet.prune import zero_units

    return zero_units(copy.deepcopy(dense.model), keep, unit)


def test_prune_command_reloads_plain_and_equals_the_masked_dense_model(env, dense, tmp_path):
    """The issue's must-show command (8 calibration texts instead of 100, no speed timing: the same code path)."""
    from transformers import AutoModelForCausalLM

    from diet.models import count_parameters

    out = tmp_path / "X"
    r = run_cli("prune", "--model", NAME, "--tasks", TASKS, "--sparsity", "0.25", "--samples", "8",
                "--speed-repeats", "0", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    mask = json.loads((out / "mask.json").read_text())
    assert summary["export_mode"] == "uniform" and summary["kept_per_layer"] == [1536] * 18
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: a stock Gemma3ForCausalLM
    assert type(reloaded).__name__ == "Gemma3ForCausalLM" and reloaded.config.intermediate_size == 1536
    removed = 18 * 512 * 3 * 640  # 512 channels x (gate row + up row + down column) of width 640
    assert count_parameters(reloaded) == count_parameters(dense.model) - removed == summary["params_after"]
    ref = logits(masked(dense, mask["keep"]), dense.tokenizer)
    got = logits(reloaded, dense.tokenizer)
    assert max_diff(got, ref) <= 1e-5
    assert max_diff(got, logits(dense.model, dense.tokenizer)) > 1e-2  # the prune really changed the model


def test_per_layer_widths_padded_and_heterogeneous_equal_the_masked_dense_model(dense, tmp_path):
    """Per-layer MLP widths: the padded export reloads with plain transformers, the heterogeneous one after
    `import diet`; both compute the masked-dense model's logits within 1e-5."""
    from transformers import AutoModelForCausalLM

    import diet  # noqa: F401  registers the heterogeneous model class
    from diet.export import export_model
    from tests.test_export import make_result

    kept = [2048 - 64 * (i % 7) - 3 * i for i in range(18)]  # 18 different widths
    result = make_result(dense.model, kept)
    ref = logits(masked(dense, result.keep()), dense.tokenizer)
    for mode in ("padded", "heterogeneous"):
        export_model(dense, result, tmp_path / mode, mode=mode)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / mode)
        assert max_diff(logits(reloaded, dense.tokenizer), ref) <= 1e-5, mode
        widths = [layer.mlp.down_proj.in_features for layer in reloaded.model.layers]
        assert widths == ([max(kept)] * 18 if mode == "padded" else kept), mode
        del reloaded


def test_gemma_specific_bad_input_gets_one_line_each(env, tmp_path):
    """Per-layer widths to GGUF; a head mask that names query heads (Gemma-3-270m: 4 query heads share 1 KV head);
    head profiling, which has nothing to remove on this model. Each: exit 2, one line, no traceback, no output."""
    gguf_out, head_out = tmp_path / "g", tmp_path / "h"
    mask_dir = tmp_path / "m"
    r = run_cli("prune", "--model", NAME, "--tasks", TASKS, "--sparsity", "0.25", "--samples", "8",
                "--allocation", "global", "--export-mode", "gguf", "--out", str(gguf_out), env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "per-layer" in r.stderr and "gemma3" in r.stderr, r.stderr
    assert not gguf_out.exists()

    r = run_cli("prune", "--model", NAME, "--tasks", TASKS, "--sparsity", "0.25", "--samples", "8",
                "--speed-repeats", "0", "--export-mode", "padded", "--out", str(mask_dir), env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads((mask_dir / "mask.json").read_text())
    d.update(unit="heads", widths=[4] * 18, params_per_unit=[4 * 256 * 640] * 18, keep=[[0, 1, 2]] * 18)
    d["summary"] = {}
    (mask_dir / "mask.json").write_text(json.dumps(d))
    (mask_dir / "mask.safetensors").unlink()
    r = run_cli("export", "--model", NAME, "--mask", str(mask_dir / "mask.json"), "--out", str(head_out), env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "KV groups" in r.stderr and "shared by 4 query heads" in r.stderr, r.stderr
    assert not head_out.exists()

    r = run_cli("profile", "--model", NAME, "--tasks", "capitals", "--samples", "2", "--unit", "heads", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "one key/value head per layer" in r.stderr, r.stderr
