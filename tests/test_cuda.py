"""The GPU path: the same exactness on CUDA, and CUDA statistics equal CPU statistics.

These run only where a CUDA GPU is present (a GPU machine is lent to some sessions; CI has none). The CPU versions
of the same checks run everywhere (test_prune.py, test_profile_cache.py).
"""

import copy

import numpy as np
import pytest
import torch

from diet.profile import profile_texts
from diet.prune import prune_units, unit_widths, zero_units
from diet.settings import ProfileSettings
from tests.test_prune import IDS, random_keep
from tests.tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (checked on a lent GPU)")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi3"])
def test_sliced_equals_masked_on_cuda(family):
    dense = tiny_model(family).cuda()
    keep = random_keep(unit_widths(dense), seed=3)
    masked = zero_units(copy.deepcopy(dense), keep)
    pruned = prune_units(copy.deepcopy(dense), keep)
    with torch.no_grad():
        ref, out = masked(IDS.cuda()).logits, pruned(IDS.cuda()).logits
    assert (out - ref).abs().max() <= 1e-4  # TF32/cuBLAS summation order differs from CPU slightly
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


def test_cuda_statistics_equal_cpu_statistics():
    texts = ["one text", "a second, longer text to pad against", "three"]
    model, tok = tiny_model("llama"), tiny_tokenizer()
    cpu = profile_texts(model, tok, texts, ProfileSettings(batch_size=2))
    gpu = profile_texts(model.cuda(), tok, texts, ProfileSettings(batch_size=2))
    assert cpu.count.tolist() == gpu.count.tolist()
    np.testing.assert_allclose(gpu.abs_sum, cpu.abs_sum, rtol=1e-3, atol=1e-4)


def test_in_place_bf16_export_on_cuda_reloads_identically(tmp_path):
    """The real-size path on a GPU: a bf16 checkpoint loads as bf16 ("auto"), is pruned in place (no second
    copy) and exported in bf16; the folder reloads to exactly the in-memory pruned model."""
    import json

    from transformers import AutoModelForCausalLM

    from diet.export import export_model
    from diet.models import load_model
    from diet.settings import ModelSpec
    from tests.test_memory import save_tiny, tiny_result

    lm = load_model(ModelSpec(name=str(save_tiny(tmp_path / "m", torch.bfloat16)), device="cuda"), say=lambda m: None)
    assert lm.spec.dtype == "bfloat16" and next(lm.model.parameters()).is_cuda
    out = export_model(lm, tiny_result(lm), tmp_path / "out", in_place=True)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        assert torch.equal(reloaded(IDS.cuda()).logits, lm.model(IDS.cuda()).logits)


def test_device_map_auto_statistics_equal_single_device_statistics(tmp_path):
    import json

    from diet.models import load_model
    from diet.settings import ModelSpec
    from tests.test_memory import TEXTS, save_tiny

    folder = save_tiny(tmp_path / "m")
    plain = load_model(ModelSpec(name=str(folder), device="cuda"), say=lambda m: None)
    spread = load_model(ModelSpec(name=str(folder), device_map=json.dumps({"model.embed_tokens": 0,
                        "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.layers.2": 0,
                        "model.norm": 0, "lm_head": 0})), say=lambda m: None)
    a = profile_texts(plain.model, plain.tokenizer, TEXTS, ProfileSettings(batch_size=2))
    b = profile_texts(spread.model, spread.tokenizer, TEXTS, ProfileSettings(batch_size=2))
    assert a.count.tolist() == b.count.tolist()
    np.testing.assert_allclose(b.abs_sum, a.abs_sum, rtol=1e-4, atol=1e-5)  # layer 1 ran on the CPU


def test_gpu_check_tiny_shapes_on_cuda(tmp_path):
    from bench.gpu_check import main as gpu_check

    assert gpu_check(["--shape", "tiny", "--device", "cuda", "--json", str(tmp_path / "rows.json")]) == 0
