"""Sweep: the right cells, numbers equal to pruning and evaluating by hand, and resumable from the cache."""

from dataclasses import replace

import numpy as np
import pytest

from diet import evaluate as E
from diet.api import prune_copy
from diet.cache import ArtifactCache
from diet.errors import DietError
from diet.methods import MethodInputs, run_method, weight_stats
from diet.models import LoadedModel
from diet.settings import MaskSettings, ModelSpec, ProfileSettings
from diet.sweep import SweepSettings, cells, figure, mean_table, run_sweep, save_png, table
from tests.tiny import tiny_model, tiny_tokenizer

PROFILE = ProfileSettings(samples=8, max_length=64, batch_size=4)
SWEEP = SweepSettings(methods=("diet", "random", "single-task"), sparsities=(0.25, 0.5),
                      tasks=("arithmetic", "capitals"), limit=3, general="generated")


@pytest.fixture
def lm():
    return LoadedModel(tiny_model("llama"), tiny_tokenizer(), ModelSpec(name="tiny"), "", "tiny-llama-0")


def test_cells_expand_single_task_per_task():
    assert [c[:3] for c in cells(SWEEP)] == [
        ("diet", "", 0.25), ("diet", "", 0.5), ("random", "", 0.25), ("random", "", 0.5),
        ("single-task", "arithmetic", 0.25), ("single-task", "arithmetic", 0.5),
        ("single-task", "capitals", 0.25), ("single-task", "capitals", 0.5)]
    assert {c[3] for c in cells(SWEEP)} == {"none"}
    both = cells(replace(SWEEP, methods=("diet",), compensations=("none", "lstsq")))
    assert both == [("diet", "", 0.25, "none"), ("diet", "", 0.25, "lstsq"), ("diet", "", 0.5, "none"),
                    ("diet", "", 0.5, "lstsq")]
    with pytest.raises(DietError, match="unknown compensation"):
        SweepSettings(methods=("diet",), tasks=("arithmetic",), compensations=("obs",))
    with pytest.raises(DietError, match="unknown method"):
        SweepSettings(methods=("obs",), tasks=("arithmetic",))


def test_sweep_rows_equal_direct_evaluation_and_resume(lm, tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path)
    rows = run_sweep(lm, SWEEP, PROFILE, cache=cache)
    assert len(rows) == (1 + len(cells(SWEEP))) * 2  # dense + 8 pruned models, two evaluation tasks each
    df = table(rows)
    assert set(df["method"]) == {"dense", "diet", "random", "single-task"}
    assert (df[df["method"] != "dense"].groupby("sparsity")["unit_sparsity"].mean().round(3).to_dict()
            == {0.25: 0.25, 0.5: 0.5})

    # one cell by hand: the same mask, pruned and evaluated outside the sweep
    from diet.api import profile_tasks
    from diet.tasks import get_task

    tasks = [get_task("arithmetic"), get_task("capitals")]
    stats = profile_tasks(lm, tasks, PROFILE, cache=cache)
    result = run_method("diet", MethodInputs(stats, weights=weight_stats(lm.model)), MaskSettings(sparsity=0.5))
    want = E.evaluate_task(prune_copy(lm, result), lm.tokenizer, tasks[1], E.EvalSettings(limit=3))
    got = df[(df.method == "diet") & (df.sparsity == 0.5) & (df.task == "capitals")].iloc[0]
    assert got["acc"] == want.acc and got["acc_norm"] == want.acc_norm and got["n"] == 3 and got["preview"]

    # resumable: a second run evaluates nothing; losing one cell re-evaluates exactly that cell
    calls = []
    real = E.evaluate_task
    monkeypatch.setattr(E, "evaluate_task", lambda *a, **k: calls.append(a[2].name) or real(*a, **k))
    assert run_sweep(lm, SWEEP, PROFILE, cache=cache) == rows and calls == []
    victim = sorted((tmp_path / "sweep").glob("*.json"))[3]
    victim.unlink()
    again = run_sweep(lm, SWEEP, PROFILE, cache=cache)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert len(calls) == 1 and strip(again) == strip(rows)


def test_sweep_compensation_cells_equal_direct_pruning(lm, tmp_path):
    from diet.api import profile_tasks
    from diet.compensate import fit_texts
    from diet.settings import CompensationSettings
    from diet.tasks import get_task

    cache = ArtifactCache(tmp_path)
    sweep = replace(SWEEP, methods=("diet",), sparsities=(0.5,), compensations=("none", "bias", "lstsq"))
    knobs = CompensationSettings(method="lstsq", samples=8)
    df = table(run_sweep(lm, sweep, PROFILE, cache=cache, lstsq=knobs))
    assert sorted(set(df[df.method == "diet"]["compensation"])) == ["bias", "lstsq", "none"]
    assert "diet+lstsq" in mean_table(df.to_dict("records")).index
    tasks = [get_task("arithmetic"), get_task("capitals")]
    stats = profile_tasks(lm, tasks, PROFILE, cache=cache)
    inputs = MethodInputs(stats, weights=weight_stats(lm.model))
    for comp in ("bias", "lstsq"):
        result = run_method("diet", inputs, MaskSettings(sparsity=0.5), compensation=comp)
        model = prune_copy(lm, result, knobs if comp == "lstsq" else None, fit_texts(tasks, knobs))
        want = E.evaluate_task(model, lm.tokenizer, tasks[0], E.EvalSettings(limit=3))
        got = df[(df.compensation == comp) & (df.task == "arithmetic") & (df.method == "diet")].iloc[0]
        assert got["acc"] == want.acc and got["acc_norm"] == want.acc_norm


def test_mean_table_and_plots(tmp_path):
    rows = [{"method": m, "variant": "", "sparsity": s, "unit": "mlp", "unit_sparsity": s, "param_sparsity": s / 2,
             "task": t, "metric": "acc", "value": v, "acc": v, "acc_norm": v, "n": 3, "preview": True, "seconds": 0}
            for m, s, t, v in [("dense", 0.0, "a", 0.9), ("dense", 0.0, "b", 0.7), ("diet", 0.5, "a", 0.6),
                               ("diet", 0.5, "b", 0.4), ("random", 0.5, "a", 0.3), ("random", 0.5, "b", 0.1)]]
    means = mean_table(rows)
    assert np.isclose(means.loc["diet", 0.5], 0.5) and np.isclose(means.loc["dense", 0.0], 0.8)
    fig = figure(rows)
    assert [t.name for t in fig.data] == ["diet", "random"]
    assert save_png(rows, tmp_path / "plot.png") and (tmp_path / "plot.png").stat().st_size > 1000


# ---------------------------------------------------------------- ShortGPT (depth baseline)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_removed_layers_equal_identity_layers(family):
    """Deleting layers == the dense model with those layers replaced by the identity (their input passes on)."""
    import copy

    import torch

    from diet.shortgpt import remove_layers
    from tests.tiny import VOCAB

    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    dense = tiny_model(family)
    ref = copy.deepcopy(dense)
    handle = ref.model.layers[1].register_forward_hook(
        lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True)
    pruned = remove_layers(copy.deepcopy(dense), [1])
    with torch.no_grad():
        r, p, d = ref(ids).logits, pruned(ids).logits, dense(ids).logits
    handle.remove()
    assert (r - d).abs().max() > 1e-3 and (p - r).abs().max() <= 1e-5
    assert pruned.config.num_hidden_layers == 2 and [la.self_attn.layer_idx for la in pruned.model.layers] == [0, 1]
    if family == "gemma2":
        assert pruned.config.layer_types == [dense.config.layer_types[i] for i in (0, 2)]
    with torch.no_grad():  # generation with a KV cache still works on the renumbered layers
        out = pruned.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_block_influence_by_hand_and_layer_choice():
    import torch

    from diet.shortgpt import block_influence, layers_to_drop

    model, tok = tiny_model("llama"), tiny_tokenizer()
    texts = ["hello world", "a b c d e f g"]
    bi = block_influence(model, tok, texts, ProfileSettings(batch_size=2))
    cos, n = np.zeros(3), 0
    for text in texts:  # one text at a time (no padding): hidden states in and out of every layer
        ins, outs = [], []
        hooks = [la.register_forward_hook(lambda m, a, k, o, ins=ins, outs=outs: (
            ins.append(a[0] if a else k["hidden_states"]), outs.append(o)) and None, with_kwargs=True)
            for la in model.model.layers]
        with torch.no_grad():
            model.model(**tok([text], return_tensors="pt"))
        for h in hooks:
            h.remove()
        for i in range(3):
            cos[i] += torch.nn.functional.cosine_similarity(ins[i][0], outs[i][0], dim=-1).sum().item()
        n += ins[0].shape[1]
    assert np.allclose(bi, 1 - cos / n, atol=1e-6)
    assert layers_to_drop(np.array([0.3, 0.1, 0.5, 0.1]), 0.5) == [1, 3]
    with pytest.raises(DietError):
        layers_to_drop(np.array([0.3, 0.1]), 1.0)


def test_progress_counts_every_cell_and_should_stop_cancels_between_models(lm, tmp_path):
    """progress sees every (model, task) number, read or evaluated; a stop keeps finished cells for the resume."""
    from diet.profile import Cancelled

    small = replace(SWEEP, methods=("diet", "random"))
    total = (1 + len(cells(small))) * 2
    seen: list[tuple[int, int, int]] = []
    with pytest.raises(Cancelled, match="resume"):
        run_sweep(lm, small, PROFILE, cache=ArtifactCache(tmp_path), progress=lambda *a: seen.append(a),
                  should_stop=lambda: len(seen) >= 2)  # stop after the dense model and one pruned model
    assert seen == [(0, 2, total), (0, 4, total)]
    seen.clear()
    rows = run_sweep(lm, small, PROFILE, cache=ArtifactCache(tmp_path), progress=lambda *a: seen.append(a))
    assert seen[-1] == (4, total - 4, total) and len(rows) == total  # the two finished models were read back
    assert rows == run_sweep(lm, small, PROFILE, cache=ArtifactCache(tmp_path))
