"""Mask math on hand-made numbers: every expectation below was computed by hand."""

import numpy as np
import pytest

from diet import masks as M
from diet.errors import DietError
from diet.settings import MaskSettings
from diet.shape import ModelShape


def test_topk_rows_keeps_largest_and_breaks_ties_by_lower_index():
    keys = np.array([[3.0, 1.0, 3.0, 2.0, 3.0],
                     [0.0, 0.0, 0.0, 0.0, 5.0]])
    got = M.topk_rows(keys, 2)
    assert got.tolist() == [[True, False, True, False, False],  # three 3.0s: indices 0 and 2 win
                            [True, False, False, False, True]]  # 5.0, then the first of the tied zeros
    assert M.topk_rows(keys, np.array([1, 3])).sum(1).tolist() == [1, 3]


def test_keep_count_rounds_and_keeps_at_least_one():
    assert M.keep_count(1536, 0.25) == 1152
    assert M.keep_count(10, 0.2) == 8
    assert M.keep_count(3, 0.99) == 1


def test_task_mask_per_layer_keeps_same_count_everywhere():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [4.0, 1.0, 2.0, 3.0]])
    m = M.task_mask(scores, MaskSettings(sparsity=0.5))
    assert m.tolist() == [[False, True, True, False], [True, False, False, True]]


def three_tasks():
    # 3 tasks, 1 layer, 4 channels; per task keep 2 of 4
    scores = np.array([[[4.0, 3.0, 2.0, 1.0]],    # task A keeps 0, 1
                       [[4.0, 1.0, 3.0, 2.0]],    # task B keeps 0, 2
                       [[1.0, 4.0, 3.0, 2.0]]])   # task C keeps 1, 2
    return scores


def test_votes_and_thresholds_k1_majority_kT():
    scores = three_tasks()
    s = MaskSettings(sparsity=0.5, merge="threshold")
    tm, _ = M.build_masks(scores, s)
    v = M.votes(tm)
    assert v.tolist() == [[2, 2, 2, 0]]
    assert M.build_masks(scores, MaskSettings(sparsity=0.5, merge="threshold", threshold=1))[1].tolist() == \
        [[True, True, True, False]]  # union
    assert M.build_masks(scores, s)[1].tolist() == [[True, True, True, False]]  # majority of 3 = 2
    assert M.build_masks(scores, MaskSettings(sparsity=0.5, merge="threshold", threshold=3))[1].tolist() == \
        [[False, False, False, False]]  # intersection is empty here


def test_threshold_above_task_count_is_refused():
    with pytest.raises(DietError, match="above the number of tasks"):
        M.build_masks(three_tasks(), MaskSettings(sparsity=0.5, merge="threshold", threshold=4))


def test_exact_budget_breaks_vote_ties_by_mean_normalised_score():
    # votes tie at 2 for channels 0, 1, 2; normalised scores (each task's layer mean is 2.5):
    # ch0: (4 + 4 + 1)/3/2.5 = 1.2, ch1: (3+1+4)/3/2.5 = 1.067, ch2: (2+3+3)/3/2.5 = 1.067 -> ch0 first,
    # then ch1 vs ch2 tie exactly -> lower index (1) wins.
    _, merged = M.build_masks(three_tasks(), MaskSettings(sparsity=0.5, merge="budget"))
    assert merged.tolist() == [[True, True, False, False]]


def test_exact_budget_hits_target_exactly_on_random_data():
    rng = np.random.default_rng(0)
    scores = rng.random((5, 7, 101))
    for s in (0.0, 0.1, 0.33, 0.5, 0.9):
        _, merged = M.build_masks(scores, MaskSettings(sparsity=s))
        assert (merged.sum(1) == M.keep_count(101, s)).all()


def test_global_allocation_total_and_floor():
    # layer 0 has much larger normalised spread; the floor keeps >= 1 (25% of 4) in layer 1
    scores = np.array([[[10.0, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0]]])
    s = MaskSettings(sparsity=0.5, allocation="global", min_keep=0.25)
    tm, merged = M.build_masks(scores, s)
    assert merged.sum() == 4  # 2 of 4 in two layers = 4 in total
    assert merged[1].sum() >= 1
    # layer 0 normalised: 10/2.575 = 3.88 beats every 1.0 of layer 1, so it is kept first
    assert merged[0, 0]
    with pytest.raises(DietError, match="min_keep"):
        M.build_masks(scores, MaskSettings(sparsity=0.9, allocation="global", min_keep=0.5))


def test_jaccard_chance_and_histogram():
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[1, 0, 1, 0]], dtype=bool)
    j = M.jaccard_matrix(np.stack([a, b]))
    assert j[0, 1] == pytest.approx(1 / 3) and j[0, 0] == 1.0
    assert M.chance_jaccard(a, b) == pytest.approx(2 / (2 * 4 - 2))  # k/(2n-k) with k=2, n=4
    v = M.votes(np.stack([a, b]))
    assert M.votes_histogram(v, 2).tolist() == [1, 2, 1]
    assert M.jaccard_per_layer(a, b).tolist() == pytest.approx([1 / 3])


def test_intersections_count_exact_memberships():
    a = np.array([[1, 1, 0, 0, 1]], dtype=bool)
    b = np.array([[1, 0, 1, 0, 1]], dtype=bool)
    c = np.array([[1, 0, 0, 0, 0]], dtype=bool)
    got = M.intersections(np.stack([a, b, c]))
    assert got == {(0, 1, 2): 1, (0,): 1, (1,): 1, (0, 1): 1}


def test_independence_expectations():
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[1, 0, 1, 0]], dtype=bool)
    e = M.independence_expectations(np.stack([a, b]))
    assert e["kept_by_all"] == 1 and e["kept_by_all_expected"] == pytest.approx(4 * 0.5 * 0.5)
    assert e["kept_by_one"] == 2 and e["kept_by_one_expected"] == pytest.approx(2 * 4 * 0.5 * 0.5)


def test_param_summary_two_denominators():
    mask = np.zeros((2, 10), dtype=bool)
    mask[:, :8] = True
    shape = ModelShape(family="llama", unit="mlp", widths=(10, 10), params_per_unit=(30, 30), total_params=2000)
    s = M.param_summary(mask, shape)
    assert s["unit_sparsity"] == pytest.approx(0.2)
    assert s["params_removed"] == 2 * 2 * 30 and s["param_sparsity"] == pytest.approx(120 / 2000)
    assert s["uniform"]


@pytest.mark.parametrize("bad", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(score="x"), dict(threshold=0),
                                 dict(allocation="x"), dict(merge="x")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(DietError):
        MaskSettings(**bad)


def _random_scores(rng, T: int, L: int, n: int) -> np.ndarray:
    """Random scores with many exact ties (values from a small set) and, sometimes, whole rows of one value."""
    s = rng.integers(1, 6, size=(T, L, n)).astype(np.float64) if rng.random() < 0.5 else rng.gamma(2.0, 1.0, (T, L, n))
    if rng.random() < 0.3:
        s[:, 0] = 2.0
    return s


def test_ranked_masks_equal_the_partition_ones_on_random_cases():
    # RankedScores (what a slider move uses) against the plain path, ties and global allocation included
    rng = np.random.default_rng(7)
    for case in range(150):
        T, L, n = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(2, 60))
        scores = _random_scores(rng, T, L, n)
        ranked = M.RankedScores.of(scores)
        settings = MaskSettings(sparsity=float(rng.choice([0.0, 0.1, 0.33, 0.5, 0.9])),
                                merge=str(rng.choice(["budget", "threshold"])),
                                allocation=str(rng.choice(["layer", "global"])), min_keep=0.05)
        want = M.build_masks(scores, settings)
        got = M.build_masks(None, settings, ranked)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"task masks, case {case}")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"merged mask, case {case}")
        assert (M.desc_ranks(M.normalise(scores[0])) < 3).tolist() == M.topk_rows(M.normalise(scores[0]),
                                                                                  min(3, n)).tolist() or n < 3


def test_jaccard_matrix_counts_match_a_plain_count():
    rng = np.random.default_rng(3)
    for _ in range(30):
        tm = rng.random((int(rng.integers(1, 7)), 3, int(rng.integers(1, 100)))) < rng.random()
        J = M.jaccard_matrix(tm)
        flat = tm.reshape(tm.shape[0], -1)
        for a in range(len(flat)):
            for b in range(len(flat)):
                union = (flat[a] | flat[b]).sum()
                want = np.float32((flat[a] & flat[b]).sum()) / np.float32(union) if union else 1.0
                assert J[a, b] == want and J.dtype == np.float32


def test_intersections_count_each_exact_combination():
    rng = np.random.default_rng(5)
    for T in (1, 3, 8, 9, 12):
        tm = rng.random((T, 2, 37)) < 0.6
        got = M.intersections(tm)
        cols = [tuple(int(t) for t in np.nonzero(tm[:, i, j])[0]) for i in range(2) for j in range(37)]
        want = {c: cols.count(c) for c in set(cols) if c}
        assert got == want
