"""DISP structure: sliced (index_select / index_add) == masked dense; accounting; training-free index sets."""

import copy

import numpy as np
import pytest
import torch

from diet import disp as D
from diet.adapters import block_parts
from diet.cache import ArtifactCache
from diet.disp import modeling_disp as MD
from diet.errors import DietError
from diet.masks import topk_rows
from diet.profile import Stats
from diet.settings import ProfileSettings
from tests.tiny import VOCAB, tiny_model, tiny_tokenizer

IDS = torch.randint(3, VOCAB, (2, 13), generator=torch.Generator().manual_seed(0))
FAMS = ("llama", "qwen2", "gemma2", "gemma3_text", "mistral")


def random_sets(shape, seed, low=0.3):
    """Random index sets whose sizes differ per layer *and* per position."""
    rng = np.random.default_rng(seed)
    return {pos: [np.sort(rng.choice(w, size=int(rng.integers(max(1, int(low * w)), w)), replace=False))
                  for w in shape.widths[pos]] for pos in D.POSITIONS}


@pytest.mark.parametrize("family", FAMS)
def test_sliced_equals_masked_dense(family):
    dense = tiny_model(family)
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=3)
    sizes = {(pos, len(k)) for pos in D.POSITIONS for k in sets[pos]}
    assert len({n for _, n in sizes}) > 5, "sizes must differ per layer and per position"
    masked = D.zero_disp(copy.deepcopy(dense), sets)
    sliced = D.slice_disp(copy.deepcopy(dense), sets)
    with torch.no_grad():
        ref, out, orig = masked(IDS).logits, sliced(IDS).logits, dense(IDS).logits
    assert (ref - orig).abs().max() > 1e-3, "masking must change the output, or the test proves nothing"
    assert (out - ref).abs().max() <= 1e-5
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in dense.parameters())
    got = D.index_sets_of(sliced)
    assert all(np.array_equal(got[pos][i], sets[pos][i]) for pos in D.POSITIONS for i in range(shape.layers))


@pytest.mark.parametrize("family", ("llama", "gemma2"))
def test_each_position_alone_matters_and_stays_exact(family):
    """Pruning one position at a time: catches a set wired to the wrong projection (others kept whole)."""
    dense = tiny_model(family)
    shape = D.disp_shape(dense)
    rand = random_sets(shape, seed=5)
    for pos in D.POSITIONS:
        sets = {p: (rand[p] if p == pos else [np.arange(w) for w in shape.widths[p]]) for p in D.POSITIONS}
        masked = D.zero_disp(copy.deepcopy(dense), sets)
        sliced = D.slice_disp(copy.deepcopy(dense), sets)
        with torch.no_grad():
            ref, out = masked(IDS).logits, sliced(IDS).logits
            assert (ref - dense(IDS).logits).abs().max() > 1e-4, pos
        assert (out - ref).abs().max() <= 1e-5, pos


def test_gemma_post_norm_sees_the_full_width():
    """Normalising the narrow block output over its own width (the wrong way) must give a different model."""
    dense = tiny_model("gemma2")
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=7)
    sliced = D.slice_disp(copy.deepcopy(dense), sets)
    with torch.no_grad():
        right = sliced(IDS).logits
        layer = D.disp_layers(sliced)[0]
        norm = layer.post_attention_layernorm
        narrow_w = norm.weight.data[layer.disp_attn_out].clone()
        wrong = type(norm)(int(layer.disp_attn_out.numel()), eps=norm.eps)
        wrong.weight.data.copy_(narrow_w)
        orig = MD._disp_scatter_add
        MD._disp_scatter_add = lambda r, o, idx, post: (r.index_add(-1, idx, wrong(o)) if post is norm
                                                        else orig(r, o, idx, post))
        try:
            bad = sliced(IDS).logits
        finally:
            MD._disp_scatter_add = orig
    assert (bad - right).abs().max() > 1e-4


def test_keeping_everything_reproduces_the_model_and_generation_works():
    dense = tiny_model("llama")
    shape = D.disp_shape(dense)
    full = {pos: [np.arange(w) for w in shape.widths[pos]] for pos in D.POSITIONS}
    sliced = D.disp_copy(dense, full)
    with torch.no_grad():
        assert (sliced(IDS).logits - dense(IDS).logits).abs().max() <= 1e-6
    sets = random_sets(shape, seed=2)
    masked, sliced = D.zero_disp(copy.deepcopy(dense), sets), D.disp_copy(dense, sets)
    a = masked.generate(IDS[:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0)
    b = sliced.generate(IDS[:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0)  # KV cache path
    assert torch.equal(a, b)


def test_parameter_count_matches_the_sliced_model_and_a_hand_count():
    dense = tiny_model("llama")  # hidden 32, MLP 48, 4 q heads x 8, 2 kv heads x 8, 3 layers, no biases
    shape = D.disp_shape(dense)
    assert shape.qkv_out == (32 + 16 + 16,) * 3 and shape.o_in == (32,) * 3
    sets = random_sets(shape, seed=4)
    c = D.counts_of(sets)
    hand = sum(c["attn_in"][i] * 64 + c["attn_out"][i] * 32 + 2 * c["mlp_in"][i] * c["mlp_mid"][i]
               + c["mlp_mid"][i] * c["mlp_out"][i] for i in range(3))
    s = D.param_summary(shape, c)
    assert s["block_params"] == 3 * (32 * 64 + 32 * 32 + 3 * 32 * 48)
    assert s["block_params_kept"] == hand
    assert s["block_kept_fraction"] == pytest.approx(hand / s["block_params"])
    sliced = D.disp_copy(dense, sets)
    assert sum(p.numel() for p in sliced.parameters()) == s["params_after"]


@pytest.mark.parametrize("bad", ["missing", "empty", "dup", "range", "layers"])
def test_bad_index_sets_are_refused_clearly(bad):
    dense = tiny_model("llama")
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=1)
    if bad == "missing":
        del sets["mlp_mid"]
    elif bad == "empty":
        sets["attn_out"][1] = np.array([], dtype=int)
    elif bad == "dup":
        sets["mlp_in"][0] = np.array([0, 0, 3])
    elif bad == "range":
        sets["mlp_mid"][2] = np.array([0, 48])
    else:
        sets["attn_in"] = sets["attn_in"][:2]
    with pytest.raises(DietError):
        D.slice_disp(dense, sets)


def test_unsupported_family_and_double_slicing_are_refused():
    with pytest.raises(DietError, match="DISP supports"):
        D.disp_shape(tiny_model("phi3"))
    dense = tiny_model("llama")
    sliced = D.disp_copy(dense, random_sets(D.disp_shape(dense), seed=0))
    with pytest.raises(DietError, match="already"):
        D.slice_disp(sliced, random_sets(D.disp_shape(dense), seed=0))


# ---------------------------------------------------------------- statistics and training-free index sets

TEXTS = ["the cat sat on the mat", "2 + 2 = 4", "Paris is in France", "hello world", "abc def ghi",
         "one two three four five"]


def test_position_statistics_equal_a_manual_computation():
    """Σ|x| at each position == the same sums computed from the layer's own modules over real tokens only."""
    model, tok = tiny_model("gemma2"), tiny_tokenizer()
    settings = ProfileSettings(samples=6, max_length=32, batch_size=4)
    stats = D.profile_positions(model, tok, TEXTS, settings)
    captured = {}
    layer = D.disp_layers(model)[1]
    p = block_parts(layer)
    hooks = [p.norm_attn.register_forward_hook(lambda m, a, o: captured.setdefault("attn_in", []).append(o)),
             p.post_attn.register_forward_hook(lambda m, a, o: captured.setdefault("attn_out", []).append(o)),
             p.down.register_forward_pre_hook(lambda m, a: captured.setdefault("mlp_mid", []).append(a[0])),
             p.post_mlp.register_forward_hook(lambda m, a, o: captured.setdefault("mlp_out", []).append(o))]
    expect = {k: torch.zeros(stats[k].abs_sum.shape[-1]) for k in ("attn_in", "attn_out", "mlp_mid", "mlp_out")}
    with torch.no_grad():
        for t in TEXTS:  # one text at a time: no padding at all
            captured.clear()
            model.base_model(input_ids=tok([t], return_tensors="pt")["input_ids"])
            for k in expect:
                expect[k] += captured[k][0][0].abs().sum(0)
    for h in hooks:
        h.remove()
    for k, v in expect.items():
        np.testing.assert_allclose(stats[k].abs_sum.sum(0)[1], v.numpy(), rtol=1e-4, atol=1e-4)
    n_tokens = sum(len(tok(t)["input_ids"]) for t in TEXTS)
    assert stats["mlp_in"].count.sum() == n_tokens


def fake_stats(shape, n_tasks, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for t in range(n_tasks):
        per = {}
        for pos in D.POSITIONS:
            w = shape.widths[pos][0]
            a = rng.random((2, shape.layers, w)).astype(np.float32)
            per[pos] = Stats(a, a * a, a, np.array([1.0, 1.0]), meta={"shape": shape.to_dict()})
        out[f"task{t}"] = per
    return out


@pytest.mark.parametrize("sparsity", [0.2, 0.5])
def test_budget_merge_meets_the_block_parameter_target(sparsity):
    shape = D.disp_shape(tiny_model("llama"))
    res = D.build_disp_masks(fake_stats(shape, 3), D.DispSettings(sparsity=sparsity))
    p = res.summary["block_kept_fraction"]
    assert abs(p - (1 - sparsity)) < 0.03  # rounding to whole dims on a 32-wide toy model
    for pos in D.POSITIONS:
        assert res.masks[pos].shape == (3, shape.widths[pos][0])
        assert res.task_masks[pos].shape == (3, 3, shape.widths[pos][0])
        assert len(set(res.masks[pos].sum(1))) == 1  # layer allocation: same count per layer


def test_only_chosen_positions_are_pruned_and_vote_agrees_with_diet():
    shape = D.disp_shape(tiny_model("llama"))
    stats = fake_stats(shape, 3, seed=1)
    res = D.build_disp_masks(stats, D.DispSettings(sparsity=0.3, positions=("mlp_mid",)))
    for pos in ("attn_in", "attn_out", "mlp_in", "mlp_out"):
        assert res.masks[pos].all()
    # the mid position's mask is exactly what DIET's own mask code gives at that kept count
    from diet.masks import build_masks

    k = int(res.masks["mlp_mid"].sum(1)[0])
    ms = D.DispSettings().mask_settings(k / 48)
    scores = np.stack([stats[t]["mlp_mid"].mean_abs() for t in stats])
    np.testing.assert_array_equal(res.masks["mlp_mid"], build_masks(scores, ms)[1])


def test_single_task_mask_keeps_the_highest_scores():
    shape = D.disp_shape(tiny_model("llama"))
    stats = fake_stats(shape, 1, seed=2)
    res = D.build_disp_masks(stats, D.DispSettings(sparsity=0.4))
    for pos in D.POSITIONS:
        mean = stats["task0"][pos].mean_abs()
        k = int(res.masks[pos].sum(1)[0])
        np.testing.assert_array_equal(res.masks[pos], topk_rows(mean, k))


def test_sparsity_out_of_reach_is_refused():
    shape = D.disp_shape(tiny_model("llama"))
    with pytest.raises(DietError, match="cannot be reached"):
        D.build_disp_masks(fake_stats(shape, 1), D.DispSettings(sparsity=0.8, positions=("attn_out",)))
    with pytest.raises(DietError):
        D.DispSettings(positions=("nope",))


def test_profile_disp_caches_and_index_sets_prune_exactly(tmp_path):
    from diet.models import LoadedModel
    from diet.settings import ModelSpec
    from diet.tasks import MCItem, Task

    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    lm = LoadedModel(model, tok, ModelSpec(), "tiny", "tiny-qwen2")
    tasks = [Task(name=f"t{i}", description="", source="test", metric="acc", calibration=tuple(TEXTS[i::2]),
                  evaluation=(MCItem("q", ("a", "b"), 0),)) for i in range(2)]
    settings = ProfileSettings(samples=3, max_length=32, batch_size=2)
    cache = ArtifactCache(tmp_path)
    assert not any(D.is_disp_profiled(lm, t, settings, cache) for t in tasks)
    first = D.profile_disp(lm, tasks, settings, cache=cache)
    assert all(D.is_disp_profiled(lm, t, settings, cache) for t in tasks)
    assert not D.is_disp_profiled(lm, tasks[0], ProfileSettings(samples=2, max_length=32, batch_size=2), cache)
    calls = []
    handle = D.disp_layers(model)[0].input_layernorm.register_forward_hook(lambda *a: calls.append(1))
    second = D.profile_disp(lm, tasks, settings, cache=cache)
    handle.remove()
    assert not calls, "the second profile must come from the cache"
    for t in first:
        for pos in D.POSITIONS:
            np.testing.assert_array_equal(first[t][pos].abs_sum, second[t][pos].abs_sum)
    res = D.build_disp_masks(second, D.DispSettings(sparsity=0.4))
    sets = res.index_sets()
    with torch.no_grad():
        ref = D.zero_disp(copy.deepcopy(model), sets)(IDS).logits
        out = D.disp_copy(model, sets)(IDS).logits
    assert (out - ref).abs().max() <= 1e-5


# ---------------------------------------------------------------- export (own config + modelling file)


def _lm(model):
    from diet.models import LoadedModel
    from diet.settings import ModelSpec

    return LoadedModel(model, tiny_tokenizer(), ModelSpec(), "tiny", "tiny-model")


@pytest.mark.parametrize("family", ("llama", "qwen2", "gemma2"))
def test_export_reloads_equal_to_the_in_memory_model(family, tmp_path):
    from diet.disp import export_disp, load_disp

    dense = tiny_model(family)
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=8)
    sliced = D.disp_copy(dense, sets)
    folder = export_disp(_lm(dense), sliced, tmp_path / "out", D.param_summary(shape, D.counts_of(sets)))
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_disp.py", "disp.json"} <= names
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in folder.rglob("*"))
    reloaded = load_disp(folder)
    assert type(reloaded).__name__.startswith("Disp")  # the folder's own code without diet: the fresh-interpreter test
    got = D.index_sets_of(reloaded)
    assert all(np.array_equal(got[p][i], sets[p][i]) for p in D.POSITIONS for i in range(shape.layers))
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, sliced(IDS).logits)
    import json

    record = json.loads((folder / "disp.json").read_text())
    assert record["index_sets"]["mlp_mid"][1] == sets["mlp_mid"][1].tolist()


def test_export_loads_without_remote_code_where_diet_disp_is_imported(tmp_path):
    """`import diet.disp` registers the DISP classes: the folder loads with plain from_pretrained, our own classes."""
    from transformers import AutoModelForCausalLM

    dense = tiny_model("llama")
    sets = random_sets(D.disp_shape(dense), seed=3)
    sliced = D.disp_copy(dense, sets)
    folder = D.export_disp(_lm(dense), sliced, tmp_path / "out", D.param_summary(D.disp_shape(dense),
                                                                                 D.counts_of(sets)))
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(reloaded) is MD.CLASSES["llama"][1]
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, sliced(IDS).logits)


def test_export_loads_where_diet_is_not_importable(tmp_path):
    """A user without DIET: a fresh interpreter outside the repo, trust_remote_code=True, same logits."""
    import subprocess
    import sys

    from diet.disp import export_disp

    dense = tiny_model("gemma2")
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=9)
    sliced = D.disp_copy(dense, sets)
    folder = export_disp(_lm(dense), sliced, tmp_path / "out", D.param_summary(shape, D.counts_of(sets)))
    with torch.no_grad():
        torch.save(sliced(IDS).logits, tmp_path / "expected.pt")
    torch.save(IDS, tmp_path / "ids.pt")
    code = ("import sys, torch\n"
            "sys.modules['diet'] = None  # installed here (editable): importing it now fails, as if absent\n"
            "try:\n    import diet\n    sys.exit('diet must not be importable here')\nexcept ImportError:\n    pass\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()\n"
            f"ids, exp = torch.load({str(tmp_path / 'ids.pt')!r}), torch.load({str(tmp_path / 'expected.pt')!r})\n"
            "with torch.no_grad():\n    d = (m(ids).logits - exp).abs().max().item()\n"
            "print('maxdiff', d)\nsys.exit(0 if d <= 1e-6 else 1)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_export_refuses_a_non_empty_folder_and_writes_nothing(tmp_path):
    from diet.disp import export_disp

    dense = tiny_model("llama")
    shape = D.disp_shape(dense)
    sets = random_sets(shape, seed=1)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DietError, match="not empty"):
        export_disp(_lm(dense), D.disp_copy(dense, sets), out, {})
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]


# ---------------------------------------------------------------- CLI




@pytest.mark.parametrize("method", ["disp", "disp-learned"])
def test_cli_prune_disp_writes_a_folder_equal_to_its_index_sets(method, tiny_folder, tmp_path, capsys):
    import json

    from diet.cli import main
    from diet.disp import load_disp

    out = tmp_path / "out"
    extra = ["--steps", "3", "--tokens-per-step", "64", "--seq-len", "32"] if method == "disp-learned" else []
    rc = main(["prune", "--method", method, "--model", str(tiny_folder), "--device", "cpu", "--tasks",
               "arithmetic,capitals", "--samples", "8", "--sparsity", "0.4", "--out", str(out), *extra])
    assert rc == 0, capsys.readouterr().err
    assert "of block parameters" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    if method == "disp":
        assert abs(summary["block_kept_fraction"] - 0.6) < 0.03
    sets = {pos: [np.array(k) for k in v] for pos, v in json.loads((out / "disp.json").read_text())
            ["index_sets"].items()}
    dense = tiny_model("llama")
    with torch.no_grad():
        ref = D.zero_disp(copy.deepcopy(dense), sets)(IDS).logits
        got = load_disp(out)(IDS).logits
    assert (got - ref).abs().max() <= 1e-5


def test_cli_refuses_export_mode_for_disp(tiny_folder, tmp_path, capsys):
    from diet.cli import main

    rc = main(["prune", "--method", "disp", "--model", str(tiny_folder), "--tasks", "arithmetic", "--sparsity",
               "0.3", "--export-mode", "uniform", "--out", str(tmp_path / "o")])
    assert rc == 2 and "error: --export-mode does not apply to DISP" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_per_position_masks_feed_diets_views():
    """The app's heatmap and overlap views take DISP's per-position arrays as they take DIET's."""
    from diet import viz

    shape = D.disp_shape(tiny_model("llama"))
    res = D.build_disp_masks(fake_stats(shape, 3, seed=4), D.DispSettings(sparsity=0.3))
    for pos in D.POSITIONS:
        fig = viz.kept_overview(res.masks[pos], title=D.POSITION_LABELS[pos])
        assert np.allclose(np.asarray(fig.data[0].z).mean(), res.masks[pos].mean())
        viz.votes_map(res.votes[pos], 3)
        viz.jaccard_matrix(np.asarray(res.summary["jaccard"][pos]), list(res.tasks))
