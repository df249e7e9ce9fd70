"""Every method on hand-made statistics, against masks computed by hand (sparsity 0.5: keep 2 of 4 per layer)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from diet.errors import DietError
from diet.methods import (
    METHODS,
    MethodInputs,
    fused_scores,
    list_methods,
    pool,
    run_method,
    unit_scores,
    weight_stats,
)
from diet.profile import Stats, profile_texts
from diet.settings import MaskSettings, MethodSettings, ProfileSettings
from diet.shape import ModelShape
from tests.tiny import tiny_model, tiny_tokenizer

SHAPE = ModelShape(family="llama", unit="mlp", widths=(4, 4), stat_widths=(4, 4), params_per_unit=(10, 10),
                   total_params=1000)
HALF = MaskSettings(sparsity=0.5)


def make_stats(mean_abs=None, mean_sq=None, mean=None, seq_l2=None, n=10.0, seqs=5.0, shape=SHAPE) -> Stats:
    """Stats whose means are exactly the given (L, I) arrays (everything in half 0, N tokens, S sequences)."""
    def put(a, scale):
        a = np.zeros((2, 4)) if a is None else np.asarray(a, dtype=np.float64)
        out = np.zeros((2, *a.shape), dtype=np.float64)
        out[0] = a * scale
        return out

    return Stats(put(mean_abs, n), put(mean_sq, n), put(mean, n), np.array([n, 0.0]), {"shape": shape.to_dict()},
                 put(None if seq_l2 is None else np.square(seq_l2), seqs), np.array([seqs, 0.0]))


def kept(mask) -> list[list[int]]:
    return [np.nonzero(row)[0].tolist() for row in mask]


# three tasks; per-task top-2: A {0,1} {2,3}, B {0,2} {2,3}, C {0,2} {0,1}
TASKS = {
    "A": make_stats(mean_abs=[[4, 3, 2, 1], [1, 2, 3, 4]]),
    "B": make_stats(mean_abs=[[4, 1, 3, 2], [1, 2, 4, 3]]),
    "C": make_stats(mean_abs=[[5, 1, 3, 2], [4, 3, 2, 1]]),
}
# votes: layer 0 [3, 1, 2, 0], layer 1 [1, 1, 2, 2]


def run(name, inputs=None, settings=HALF, **ms):
    return run_method(name, inputs or MethodInputs(TASKS, shape=SHAPE), settings, MethodSettings(**ms))


def test_diet_votes_with_exact_budget_and_threshold():
    r = run("diet")
    assert kept(r.mask) == [[0, 2], [2, 3]]
    assert kept(r.task_masks[2]) == [[0, 2], [0, 1]]
    assert r.votes.tolist() == [[3, 1, 2, 0], [1, 1, 2, 2]]
    r = run("diet", settings=MaskSettings(sparsity=0.5, merge="threshold", threshold=3))
    assert kept(r.mask) == [[0], []]
    assert r.summary["method"] == "diet" and r.tasks == ["A", "B", "C"]


def test_union_and_intersection():
    assert kept(run("union").mask) == [[0, 1, 2], [0, 1, 2, 3]]
    assert kept(run("intersection").mask) == [[0], []]


def test_single_task_needs_a_named_task_when_several():
    assert kept(run("single-task", single_task="B").mask) == [[0, 2], [2, 3]]
    with pytest.raises(DietError, match="say which"):
        run("single-task")
    with pytest.raises(DietError, match="not among"):
        run("single-task", single_task="Z")


def test_diet_global_gives_adaptive_widths():
    # normalised by layer mean: layer 0 [8,7,6,1]/5.5, layer 1 [1,1,1,5]/2; floor 1 per layer (min_keep 0.25),
    # then the two best of the rest are both in layer 0
    one = {"T": make_stats(mean_abs=[[8, 7, 6, 1], [1, 1, 1, 5]])}
    r = run("diet-global", MethodInputs(one, shape=SHAPE), MaskSettings(sparsity=0.5, min_keep=0.25))
    assert kept(r.mask) == [[0, 1, 2], [3]]
    assert kept(run("diet", MethodInputs(one, shape=SHAPE)).mask) == [[0, 1], [0, 3]]


GENERAL = make_stats(mean_abs=[[1, 2, 3, 4], [4, 3, 2, 1]], mean_sq=[[1, 4, 9, 16], [16, 9, 4, 1]],
                     mean=[[1, 0, 0, 0], [0, 0, 0, 0]], seq_l2=[[1, 3, 2, 0.5], [2, 1, 1, 3]])


def test_task_agnostic_on_general_text_or_pooled_tasks():
    inputs = MethodInputs(TASKS, general=GENERAL, shape=SHAPE)
    assert kept(run("task-agnostic", inputs).mask) == [[2, 3], [0, 1]]
    # pooled tasks (equal token counts): layer 0 sums [13, 5, 8, 5], layer 1 [6, 7, 9, 8]
    assert kept(run("task-agnostic", inputs, calibration="tasks").mask) == [[0, 2], [2, 3]]
    with pytest.raises(DietError, match="general text"):
        run("task-agnostic")


def test_wanda_sp_weights_rms_by_mean_abs_column():
    # rms general [1,2,3,4] and [4,3,2,1]; mean |W| column [5,1,1,1] and [1,1,1,5] -> [5,2,3,4], [4,3,2,5]
    w = {"out_l1mean": np.array([[5.0, 1, 1, 1], [1, 1, 1, 5]])}
    r = run("wanda-sp", MethodInputs({}, general=GENERAL, weights=w, shape=SHAPE))
    assert kept(r.mask) == [[0, 3], [0, 3]]


def test_flap_zscore_global_threshold_and_bias():
    # layer 0: var [1,1,4,.25] x ||W||^2 [4,4,1,4] = [4,4,4,1] -> z [.58,.58,.58,-1.73]
    # layer 1: var [1,2,1.5,9] x 1 -> z [-.73,-.42,-.57,1.72]; floor 1 per layer, then the best two of the rest
    general = make_stats(mean_sq=[[2, 1, 4, 0.25], [1, 2, 1.5, 9]], mean=[[1, 0, 0, 0], [0, 0, 0, 0]])
    w = {"out_l2": np.array([[2.0, 2, 1, 2], [1, 1, 1, 1]])}
    inputs = MethodInputs({}, general=general, weights=w, shape=SHAPE)
    r = run("flap", inputs, MaskSettings(sparsity=0.5, min_keep=0.25))
    assert kept(r.mask) == [[0, 1, 2], [3]]
    assert np.array_equal(r.compensation, [[1, 0, 0, 0], [0, 0, 0, 0]]) and r.summary["bias_compensation"]
    assert run("flap", inputs, MaskSettings(sparsity=0.5, min_keep=0.25), flap_bias=False).compensation is None


def test_minitron_uses_per_sequence_l2():
    r = run("minitron", MethodInputs({}, general=GENERAL, shape=SHAPE))
    assert kept(r.mask) == [[1, 2], [0, 3]]


def test_magnitude_reads_weights_only():
    w = {"magnitude": np.array([[3.0, 1, 2, 0], [0, 1, 2, 3]])}
    assert kept(run("magnitude", MethodInputs({}, weights=w, shape=SHAPE)).mask) == [[0, 2], [2, 3]]


def test_random_is_seeded_exact_and_unbiased():
    inputs = MethodInputs({}, shape=SHAPE)
    a, b = run("random", inputs, seed=1).mask, run("random", inputs, seed=1).mask
    assert np.array_equal(a, b) and a.sum(1).tolist() == [2, 2]
    freq = np.mean([run("random", inputs, seed=s).mask for s in range(400)], axis=0)
    assert np.abs(freq - 0.5).max() < 0.1  # every unit kept about half the time
    assert len({run("random", inputs, seed=s).mask.tobytes() for s in range(20)}) > 1


FUSION_TASK = make_stats(mean_sq=[[4, 1, 1, 9]] * 2)  # task RMS [2, 1, 1, 3]
FUSION_GENERAL = make_stats(mean_sq=[[1, 1, 1, 1]] * 2)  # general RMS [1, 1, 1, 1]
FUSION_W = {"out_l2": np.array([[1.0, 4, 2, 1]] * 2)}


def test_task_fusion_by_hand():
    # S_G = [1,4,2,1] -> ranks [0,1,2/3,1/3]; S_T = [2,4,2,3] -> ranks [0,1,1/3,2/3]
    # ratio T/G = [2,1,1,3]: median 1.5 -> exclusive {0, 3}
    ms = MethodSettings(method="task-fusion", tau=0.5, alpha=0.9)
    fused = fused_scores(FUSION_TASK, FUSION_GENERAL, FUSION_W["out_l2"], SHAPE, ms)
    assert np.allclose(fused[0], [0, 1, 0.9 * 2 / 3 + 0.1 / 3, 2 / 3])
    inputs = MethodInputs({"t": FUSION_TASK}, general=FUSION_GENERAL, weights=FUSION_W, shape=SHAPE)
    assert kept(run("task-fusion", inputs, tau=0.5, alpha=0.9).mask) == [[1, 3]] * 2  # exclusivity keeps 3
    assert kept(run("task-fusion", inputs, tau=1.0, alpha=0.9).mask) == [[1, 2]] * 2  # all shared: general wins
    assert kept(run("task-fusion", inputs, tau=1.0, alpha=0.0).mask) == [[1, 3]] * 2  # task score alone


def test_task_fusion_zscore_and_merge_over_tasks():
    inputs = MethodInputs({"t": FUSION_TASK, "u": FUSION_TASK, "g": FUSION_GENERAL}, general=FUSION_GENERAL,
                          weights=FUSION_W, shape=SHAPE)
    r = run("task-fusion", inputs, tau=0.5, alpha=0.9, fusion_norm="zscore")
    assert r.tasks == ["t", "u", "g"] and r.task_masks.shape == (3, 2, 4)
    # z-scores: S_G [-.82,1.63,0,-.82], S_T [-.90,1.51,-.90,.30]; t/u fused [-.90,1.62,-.09,.30] keep {1,3};
    # g (ratio 1 everywhere, nothing exclusive): fused = z(S_G) -> {1,2}; votes [0,3,1,2] -> {1,3}
    assert kept(r.task_masks[0]) == [[1, 3]] * 2 and kept(r.task_masks[2]) == [[1, 2]] * 2
    assert kept(r.mask) == [[1, 3]] * 2


def test_methods_pool_head_channels_into_groups():
    # 2 KV groups of 2 channels each: mean over a group's channels (RMS for Minitron)
    shape = replace(SHAPE, unit="heads", widths=(2,), stat_widths=(4,), params_per_unit=(100,))
    assert pool(np.array([[1.0, 3, 2, 1]]), shape).tolist() == [[2.0, 1.5]]
    assert np.allclose(pool(np.array([[1.0, 3, 2, 1]]), shape, "rms"), [[np.sqrt(5), np.sqrt(2.5)]])
    s = make_stats(mean_abs=[[1, 3, 2, 1]], seq_l2=[[1, 1, 3, 0]], shape=shape)
    assert unit_scores(s).tolist() == [[2.0, 1.5]]
    inputs = MethodInputs({"t": s}, general=s, shape=shape)
    assert kept(run("diet", inputs).mask) == [[0]]
    assert kept(run("minitron", inputs).mask) == [[1]]  # rms [1, sqrt(4.5)]
    assert run("diet", inputs).summary["unit_sparsity"] == 0.5


def test_registry_lists_every_method_and_refuses_unknown_names():
    names = [m["name"] for m in list_methods()]
    assert set(names) == set(METHODS) and {"diet", "flap", "minitron", "wanda-sp", "task-fusion"} <= set(names)
    assert all(m["description"] for m in list_methods())
    with pytest.raises(DietError, match="unknown method"):
        run("sparsegpt")
    with pytest.raises(DietError, match="weight norms"):
        run("magnitude")


def test_weight_stats_on_a_tiny_model():
    model = tiny_model("llama")
    w = weight_stats(model, "mlp")
    mlp = model.model.layers[1].mlp
    assert w["out_l2"].shape == (3, 48)
    assert np.allclose(w["out_l2"][1], mlp.down_proj.weight.norm(dim=0).detach().numpy(), atol=1e-6)
    assert np.allclose(w["out_l1mean"][1], mlp.down_proj.weight.abs().mean(0).detach().numpy(), atol=1e-6)
    own = (mlp.gate_proj.weight[5].pow(2).sum() + mlp.up_proj.weight[5].pow(2).sum()
           + mlp.down_proj.weight[:, 5].pow(2).sum()).sqrt().item()
    assert w["magnitude"][1, 5] == pytest.approx(own, rel=1e-5)
    heads = weight_stats(model, "heads")
    a = model.model.layers[0].self_attn  # group 1 = query heads 2, 3 (rows 16..31), kv head 1 (rows 8..15)
    own = (a.q_proj.weight[16:].pow(2).sum() + a.o_proj.weight[:, 16:].pow(2).sum()
           + a.k_proj.weight[8:].pow(2).sum() + a.v_proj.weight[8:].pow(2).sum()).sqrt().item()
    assert heads["magnitude"].shape == (3, 2) and heads["magnitude"][0, 1] == pytest.approx(own, rel=1e-5)


def test_per_sequence_sums_match_a_direct_computation():
    """Minitron's statistic from profiling == mean |x| per text, squared, summed per half — computed directly."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    texts = ["hello there", "a b", "the quick brown fox", "zz"]
    stats = profile_texts(model, tok, texts, ProfileSettings(batch_size=3))
    want = np.zeros((2, 3, 48))
    for i, text in enumerate(texts):  # one text at a time: no padding involved
        seen = []
        hooks = [layer.mlp.down_proj.register_forward_pre_hook(
                 lambda m, a, seen=seen: seen.append(a[0][0].abs().mean(0))) for layer in model.model.layers]
        with torch.no_grad():
            model.model(**tok([text], return_tensors="pt"))
        for h in hooks:
            h.remove()
        want[i % 2] += np.stack([s.numpy() for s in seen]) ** 2
    assert np.allclose(stats.seq_sq_sum, want, rtol=1e-4, atol=1e-7)
    assert stats.seqs.tolist() == [2.0, 2.0]


# ---------------------------------------------------------------- general calibration text

WIKITEXT_ROWS = [  # the schema of Salesforce/wikitext (wikitext-2-raw-v1): one "text" line per row
    {"text": ""}, {"text": " = Valkyria Chronicles III = \n"}, {"text": ""},
    {"text": " Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game developed by "
             "Sega and Media.Vision for the PlayStation Portable . Released in January 2011 in Japan , it is the "
             "third game in the Valkyria series . \n"},
    {"text": " Short line . \n"},
    {"text": " The game began development in 2010 , carrying over a large portion of the work done on Valkyria "
             "Chronicles II . While it retained the standard features of the series , it also underwent multiple "
             "adjustments , such as making the game more forgiving for series newcomers . \n"},
]


def test_general_text_from_wikitext_fixture(monkeypatch):
    from diet import general, hub_tasks

    calls = []
    monkeypatch.setattr(hub_tasks, "load_dataset", lambda *a: calls.append(a) or WIKITEXT_ROWS)
    task = general.general_task("wikitext2")
    assert calls[0][:3] == ("Salesforce/wikitext", "wikitext-2-raw-v1", "train")
    assert task.source == "general:wikitext2" and len(task.calibration) == 2  # heading and short line dropped
    assert task.calibration[0].startswith("Senjō no Valkyria 3 : Unrecorded") and "  " not in task.calibration[0]
    assert general.general_texts("auto")[0] == "wikitext2"


def test_general_text_falls_back_offline_and_reads_files(monkeypatch, tmp_path):
    from diet import general, hub_tasks

    def offline(*a):
        raise ConnectionError("cannot connect to huggingface.co:443")

    monkeypatch.setattr(hub_tasks, "load_dataset", offline)
    said = []
    used, texts = general.general_texts("auto", say=said.append)
    assert used == "generated" and len(texts) >= 100 and "unavailable" in said[0]
    with pytest.raises(DietError, match="needs the Hugging Face Hub"):
        general.general_texts("c4")
    f = tmp_path / "mine.txt"
    f.write_text("First paragraph\nstill first.\n\nSecond one.\n\n\n", encoding="utf-8")
    used, texts = general.general_texts(str(f))
    assert used.startswith("file:") and texts == ["First paragraph still first.", "Second one."]
    with pytest.raises(DietError, match="unknown general text source"):
        general.general_texts("wikitext-103")


def test_shipped_generated_corpus_is_varied():
    from diet.general import generated_texts

    texts = generated_texts()
    assert len(texts) >= 100 and len(set(texts)) == len(texts) and min(map(len, texts)) >= 100


def test_pooled_by_tokens_or_by_tasks():
    # equal token counts: the pooled sums are layer 0 [13, 5, 8, 5], layer 1 [6, 7, 9, 8]
    assert kept(run("pooled").mask) == [[0, 2], [2, 3]]
    # unequal counts: A (10 tokens) needs 0 and 2, B (100 tokens) needs 1 and 3
    a = make_stats(mean_abs=[[4, 0, 3, 0], [4, 0, 3, 0]], n=10.0)
    b = make_stats(mean_abs=[[0, 4, 0, 3.5], [0, 4, 0, 3.5]], n=100.0)
    inputs = MethodInputs({"A": a, "B": b}, shape=SHAPE)
    assert kept(run("pooled", inputs).mask) == [[1, 3]] * 2  # sums [40, 400, 30, 350]: B's tokens dominate
    assert kept(run("pooled", inputs, pool_weight="tasks").mask) == [[0, 1]] * 2  # means [2, 2, 1.5, 1.75]
    with pytest.raises(DietError, match="pool weight"):
        run("pooled", pool_weight="texts")


def test_diet_weighted_keeps_what_one_task_needs_strongly():
    # A and B keep {0, 1}; C needs channel 3 a lot. Vote: [2, 2, 1, 1] -> {0, 1}. Normalised sums:
    # A, B [2, 1.8, .2, 0] each, C [0, 0, .04, 3.96] -> [4, 3.6, .44, 3.96] -> {0, 3}
    t = {"A": make_stats(mean_abs=[[10, 9, 1, 0]] * 2), "B": make_stats(mean_abs=[[10, 9, 1, 0]] * 2),
         "C": make_stats(mean_abs=[[0, 0, 1, 100]] * 2)}
    inputs = MethodInputs(t, shape=SHAPE)
    assert kept(run("diet", inputs).mask) == [[0, 1]] * 2
    r = run("diet-weighted", inputs)
    assert kept(r.mask) == [[0, 3]] * 2 and r.tasks == ["A", "B", "C"] and r.task_masks.shape == (3, 2, 4)


def test_who_loses_by_hand():
    from diet.methods import who_loses

    vote = run("diet").mask  # [[0, 2], [2, 3]]
    w = who_loses(MethodInputs(TASKS, shape=SHAPE), HALF, {"vote": vote, "all": np.ones((2, 4), bool)})
    # A's own top-2: {0, 1}, {2, 3}; the vote keeps 0 of layer 0 and both of layer 1
    assert w["topk"]["vote"][0] == 0.75 and w["layer_topk"]["vote"][0].tolist() == [0.5, 1.0]
    # A's normalised scores [1.6, 1.2, .8, .4] and [.4, .8, 1.2, 1.6]: kept mass (2.4 + 2.8) / 8
    assert w["mass"]["vote"][0] == pytest.approx(0.65)
    assert w["topk"]["all"] == [1.0, 1.0, 1.0] and w["mass"]["all"] == pytest.approx([1.0, 1.0, 1.0])


def test_bias_compensation_for_any_method_and_lstsq_drops_it():
    t = {"A": make_stats(mean_abs=[[4, 3, 2, 1]] * 2, mean=[[1, 2, 3, 4]] * 2),
         "B": make_stats(mean_abs=[[4, 3, 2, 1]] * 2, mean=[[3, 2, 1, 0]] * 2)}
    inputs = MethodInputs(t, shape=SHAPE)
    r = run_method("diet", inputs, HALF, MethodSettings(), compensation="bias")
    assert np.allclose(r.compensation, [[2, 2, 2, 2]] * 2) and r.summary["compensation"] == "bias"
    assert run_method("diet", inputs, HALF, MethodSettings()).compensation is None
    general = make_stats(mean_sq=[[2, 1, 4, 0.25]] * 2, mean=[[9, 0, 0, 0]] * 2)
    flap_in = MethodInputs(t, general=general, weights={"out_l2": np.ones((2, 4))}, shape=SHAPE)
    assert run_method("flap", flap_in, HALF, MethodSettings()).compensation[0, 0] == 9  # FLAP's own, on general
    assert run_method("flap", flap_in, HALF, MethodSettings(), compensation="lstsq").compensation is None
    with pytest.raises(DietError, match="unknown compensation"):
        run_method("diet", inputs, HALF, MethodSettings(), compensation="obs")


def test_mask_digest_is_the_pruned_models_content_key():
    """MaskResult.digest keys cached evaluations: equal masks meet, another mask or compensation does not."""
    a = run("diet")
    same = run("diet")
    assert a.digest() == same.digest() and len(a.digest()) == 16
    flipped = replace(a, mask=~a.mask)
    assert flipped.digest() != a.digest()
    assert replace(a, summary={**a.summary, "compensation": "lstsq"}).digest() == a.digest() + "+lstsq"
