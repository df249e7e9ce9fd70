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
