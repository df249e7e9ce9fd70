"""Real-size behaviour on tiny models: dtype follows the checkpoint, pruning in place (no second copy) equals the
copy-based path, device-map/offload profiling equals the plain run, and the memory check refuses before loading."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import diet.memory as memory
from diet.api import build_mask, stats_key
from diet.cli import main
from diet.errors import DietError
from diet.export import export_model
from diet.export.cut import build_export_model, prune_for_export, shared_copy
from diet.measure import SpeedSettings
from diet.models import LoadedModel, load_model
from diet.profile import profile_texts
from diet.prune import prune_units
from diet.settings import MaskSettings, ModelSpec, ProfileSettings
from tests.test_prune import IDS
from tests.tiny import COMMON, tiny_model, tiny_tokenizer

TEXTS = ["one text", "a second, longer text to pad against", "three", "the fourth text of the set", "5"]


def save_tiny(folder, dtype=torch.float32, family="llama", drop_dtype=False):
    """A tiny random checkpoint in `dtype`, with a tokenizer: what a user's local folder looks like."""
    model = tiny_model(family).to(dtype)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    if drop_dtype:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.pop("dtype", None)
        cfg.pop("torch_dtype", None)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def tiny_result(lm, sparsity=0.25, threshold=None):
    stats = {n: profile_texts(lm.model, lm.tokenizer, TEXTS[i:] + TEXTS[:i], ProfileSettings(batch_size=2))
             for i, n in enumerate(["a", "b", "c"])}
    merge = "threshold" if threshold else "budget"
    return build_mask(stats, MaskSettings(sparsity=sparsity, merge=merge, threshold=threshold))


# ------------------------------------------------------------------------------------------------ dtype


def test_dtype_auto_picks_the_checkpoints_dtype(tmp_path):
    bf16 = load_model(ModelSpec(name=str(save_tiny(tmp_path / "bf16", torch.bfloat16))), say=lambda m: None)
    fp32 = load_model(ModelSpec(name=str(save_tiny(tmp_path / "fp32", torch.float32))), say=lambda m: None)
    assert bf16.spec.dtype == "bfloat16" and next(bf16.model.parameters()).dtype == torch.bfloat16
    assert fp32.spec.dtype == "float32" and next(fp32.model.parameters()).dtype == torch.float32
    explicit = load_model(ModelSpec(name=str(tmp_path / "bf16"), dtype="float32"), say=lambda m: None)
    assert next(explicit.model.parameters()).dtype == torch.float32  # the user's choice wins


def test_auto_resolves_before_the_cache_key(tmp_path):
    """An fp32 checkpoint loaded with "auto" gets the same statistics key as with an explicit float32, so
    statistics cached before "auto" existed stay valid."""
    folder = str(save_tiny(tmp_path / "m"))
    auto = load_model(ModelSpec(name=folder), say=lambda m: None)
    explicit = load_model(ModelSpec(name=folder, dtype="float32"), say=lambda m: None)
    settings = ProfileSettings()
    assert auto.spec.dtype == "float32"
    assert stats_key(auto, TEXTS, settings) == stats_key(explicit, TEXTS, settings)


def test_auto_on_a_config_without_dtype_loads_fp32_with_a_note(tmp_path):
    folder = save_tiny(tmp_path / "m", torch.bfloat16, drop_dtype=True)
    notes = []
    lm = load_model(ModelSpec(name=str(folder)), say=notes.append)
    assert lm.spec.dtype == "float32" and next(lm.model.parameters()).dtype == torch.float32
    assert any("names no dtype" in n and "float32" in n for n in notes)


def test_an_unknown_dtype_lists_the_valid_ones(capsys):
    with pytest.raises(DietError, match="auto, float32, bfloat16, float16"):
        ModelSpec(dtype="fp8")
    with pytest.raises(SystemExit) as e:
        main(["profile", "--tasks", "arithmetic", "--dtype", "fp8"])
    assert e.value.code == 2
    assert "auto, float32, bfloat16, float16" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ in place


@pytest.mark.parametrize("mode", ["uniform", "padded", "heterogeneous"])
def test_in_place_pruning_equals_the_copy_based_path(mode):
    dense = tiny_model("llama")
    lm = LoadedModel(dense, tiny_tokenizer(), ModelSpec(name="tiny"), "", "tiny:0")
    result = tiny_result(lm, threshold=None if mode == "uniform" else 2)
    keep = result.keep()
    reference = prune_units(copy.deepcopy(dense), keep)  # today's copy-based slicing: deepcopy, then slice
    model, _ = prune_for_export(lm, result, mode, in_place=True)
    assert lm.model is model and lm.pruned
    if mode != "heterogeneous":
        assert model is dense  # cut in place: no second model object
    with torch.no_grad():
        want, got = reference(IDS).logits, model(IDS).logits
    assert (got - want).abs().max() <= 1e-5
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    with pytest.raises(DietError, match="pruned in place"):
        profile_texts(lm.model, lm.tokenizer, TEXTS, ProfileSettings())


def test_copy_export_leaves_the_dense_model_and_shares_untouched_tensors():
    dense = tiny_model("llama")
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    keep = [np.arange(0, 48, 2)] * 3
    pruned = build_export_model(dense, keep, "uniform")
    assert pruned is not dense
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert pruned.model.embed_tokens.weight.data_ptr() == dense.model.embed_tokens.weight.data_ptr()
    assert pruned.model.layers[0].mlp.down_proj.weight.shape[1] == 24
    twin = shared_copy(dense)
    assert twin is not dense and twin.model.layers[0] is not dense.model.layers[0]


def test_in_place_export_of_a_bf16_checkpoint_stays_bf16_sharded(tmp_path):
    folder = save_tiny(tmp_path / "bf16", torch.bfloat16)
    lm = load_model(ModelSpec(name=str(folder)), say=lambda m: None)
    result = tiny_result(lm)
    with torch.no_grad():
        masked = copy.deepcopy(lm.model)
        from diet.prune import zero_units

        zero_units(masked, result.keep())
        want = masked(IDS).logits.float()
    out = export_model(lm, result, tmp_path / "out", in_place=True, max_shard_size="20KB",
                       speed=SpeedSettings(batch_sizes=(1,), seq_len=8, repeats=1, warmup=0))
    files = sorted(p.name for p in out.glob("model*.safetensors*"))
    assert "model.safetensors.index.json" in files and len(files) > 2  # shards + index
    header = memory.read_safetensors_header(out / next(f for f in files if f.endswith(".safetensors")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    card = (out / "README.md").read_text()
    assert "Weights dtype: bfloat16" in card and "pruned in place" in card  # sequential timing, said so
    assert json.loads((out / "diet_settings.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        got = reloaded(IDS).logits.float()
    assert torch.equal(got, lm.model(IDS).logits.float())  # the folder holds exactly the in-memory pruned model
    assert (got - want).abs().max() <= 0.1 * want.abs().max()  # bf16: sliced vs masked differ by rounding only


def test_release_gives_back_the_file_pages_of_replaced_weights(tmp_path):
    folder = tmp_path / "m"
    big = AutoModelForCausalLM.from_config(LlamaConfig(**{**COMMON, "hidden_size": 64, "intermediate_size": 512}))
    big.save_pretrained(folder)  # 64 x 512 fp32 down_proj: 128 KiB, whole pages to give back
    tiny_tokenizer().save_pretrained(folder)
    lm = load_model(ModelSpec(name=str(folder)), say=lambda m: None)
    releaser = memory.PageReleaser()
    assert releaser.mappings, "transformers no longer maps the safetensors file: revisit PageReleaser"
    w = lm.model.model.layers[0].mlp.down_proj.weight.detach()
    want = w.clone()
    releaser.release(w)
    assert releaser.released > 0
    assert torch.equal(w, want)  # a released page is read back from the file: the values never change


# ------------------------------------------------------------------------------------------------ device map


def test_offloaded_profile_equals_the_plain_profile(tmp_path):
    folder = save_tiny(tmp_path / "m")
    plain = load_model(ModelSpec(name=str(folder)), say=lambda m: None)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    spec = ModelSpec(name=str(folder), device_map=json.dumps(device_map), offload_folder=str(tmp_path / "off"))
    offloaded = load_model(spec, say=lambda m: None)
    assert offloaded.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # really on disk
    settings = ProfileSettings(batch_size=2)
    a = profile_texts(plain.model, plain.tokenizer, TEXTS, settings)
    b = profile_texts(offloaded.model, offloaded.tokenizer, TEXTS, settings)
    assert a.count.tolist() == b.count.tolist()
    for name, x in a.tensors().items():
        np.testing.assert_allclose(b.tensors()[name], x, rtol=1e-6, atol=0, err_msg=name)
    with pytest.raises(DietError, match="offloaded"):
        prune_units(offloaded.model, [np.arange(24)] * 3)


# ------------------------------------------------------------------------------------------------ memory check


def test_estimate_reads_sizes_from_the_headers(tmp_path):
    folder = save_tiny(tmp_path / "m", torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())  # tied embeddings: stored once
    est = memory.estimate(folder, "bfloat16", work=memory.Workload(batch=2, tokens=10))
    assert est.params == params and est.weight_bytes == 2 * params
    assert est.activation_bytes == 2 * 4 * 2 * 10 * 128  # vocab (128) is wider than the MLP (48)
    assert memory.estimate(folder, "float32").weight_bytes == 4 * params


def test_a_model_that_cannot_fit_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    folder = save_tiny(tmp_path / "m", torch.bfloat16)
    monkeypatch.setattr(memory, "free_ram", lambda: 1000)

    def never(*a, **k):
        raise AssertionError("the model was loaded before the memory check")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(DietError) as e:
        load_model(ModelSpec(name=str(folder), device="cpu"), say=lambda m: None)
    msg = str(e.value)
    est = memory.estimate(folder, "bfloat16")
    assert f"needs about {est.total / 1e9:.1f} GB" in msg and "0.0 GB of free RAM" in msg
    assert "--device-map auto" in msg and "--quantization 4bit" in msg and "\n" not in msg
    capsys.readouterr()  # drop what saving the tiny model printed (its shard progress bar)
    assert main(["profile", "--model", str(folder), "--tasks", "arithmetic", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "needs about" in err[0]


# ------------------------------------------------------------------------------------------------ out of memory


def test_cuda_out_of_memory_in_evaluation_halves_the_batch_and_says_so(monkeypatch):
    import diet.evaluate as E

    model, tok = tiny_model("llama"), tiny_tokenizer()
    requests = [(f"context number {i}", f" answer {j}") for i in range(6) for j in range(2)]
    want = E.loglikelihoods(model, tok, requests, batch_size=4)
    real, sizes = E._score_batch, []

    def flaky(m, batch, conts, keep_arg):  # the first pass of 4 contexts "runs out of GPU memory"
        sizes.append(len(batch))
        if len(sizes) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(m, batch, conts, keep_arg)

    monkeypatch.setattr(E, "_score_batch", flaky)
    said = []
    got = E.loglikelihoods(model, tok, requests, batch_size=4, say=said.append)
    assert sizes == [4, 2, 2, 2]  # halved once, and the rest of the run keeps the smaller batch
    assert said == ["CUDA out of memory at batch 4: retrying with batch 2"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(E, "_score_batch", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")))
    with pytest.raises(DietError, match="even at batch 1"):
        E.loglikelihoods(model, tok, requests, batch_size=2, say=said.append)


# ------------------------------------------------------------------------------------------------ bitsandbytes


def test_bitsandbytes_profiling_works_on_cpu_and_is_compared_with_fp(tmp_path):
    """bitsandbytes 0.50 runs 8-bit and 4-bit layers on the CPU: profiling works there, and its masks are compared
    with the fp32 ones (Jaccard of the 20% masks). Both must beat chance (two random 80% masks: 0.8²/(1-0.2²)), and
    4-bit, the coarser grid, must move more channels across the cut than 8-bit."""
    from diet import masks as M

    folder = tmp_path / "m"
    torch.manual_seed(0)  # 4-bit blocks are 64 wide: the tiny 32-wide model is too narrow for them
    AutoModelForCausalLM.from_config(LlamaConfig(**{**COMMON, "hidden_size": 128, "intermediate_size": 256})
                                     ).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)

    def merged_mask(lm):
        return tiny_result(lm, sparsity=0.2).mask

    fp = merged_mask(load_model(ModelSpec(name=str(folder)), say=lambda m: None))
    jaccard = {}
    for q in ("8bit", "4bit"):
        lm = load_model(ModelSpec(name=str(folder), quantization=q, device="cpu"), say=lambda m: None)
        assert type(lm.model.model.layers[0].mlp.down_proj).__name__ in ("Linear8bitLt", "Linear4bit")
        jaccard[q] = float(M.jaccard_matrix(np.stack([fp, merged_mask(lm)]))[0, 1])
        with pytest.raises(DietError, match="quantized"):
            prune_units(lm.model, [np.arange(200)] * 3)
    assert jaccard["8bit"] > 0.8**2 / (1 - 0.2**2)
    assert 0.8**2 / (1 - 0.2**2) < jaccard["4bit"] < jaccard["8bit"]  # measured: 0.667 < 0.892 < 0.997
