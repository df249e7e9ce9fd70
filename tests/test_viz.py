"""diet.viz: every figure is checked on its data (what the browser receives), on small hand-made masks."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from diet import masks as M
from diet import viz
from diet.settings import MaskSettings


def arr(x) -> np.ndarray:
    """Decode a Plotly JSON array: base64 {"dtype", "bdata", "shape"} (numpy input) or a plain list."""
    if isinstance(x, dict) and "bdata" in x:
        a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
        if "shape" in x:
            a = a.reshape([int(s) for s in str(x["shape"]).split(",")])
        return a
    return np.asarray(x)


def spec(fig) -> dict:
    return json.loads(fig.to_json())


@pytest.fixture
def masks3():
    """Three task masks on 4 layers × 40 channels from random scores, plus the merged mask."""
    rng = np.random.default_rng(0)
    scores = rng.random((3, 4, 40)) + rng.random((1, 4, 40))
    tm, mask = M.build_masks(scores, MaskSettings(sparsity=0.3))
    return scores, tm, mask


def test_bin_mean_matches_a_loop():
    rng = np.random.default_rng(1)
    a = rng.random((3, 1000)) < 0.4
    edges = viz.bin_edges(1000, 300)
    assert len(edges) == 301 and edges[0] == 0 and edges[-1] == 1000
    expected = np.stack([[a[r, edges[b]:edges[b + 1]].mean() for b in range(300)] for r in range(3)])
    np.testing.assert_allclose(viz.bin_mean(a, edges), expected, rtol=1e-6)
    assert len(viz.bin_edges(50, 300)) == 51  # narrower than the limit: one column per channel


def test_kept_overview_full_resolution_and_binned(masks3):
    scores, _, mask = masks3
    d = spec(viz.kept_overview(mask))["data"][0]
    assert isinstance(d["z"], dict) and "bdata" in d["z"]  # numpy arrives as base64, not as a list
    np.testing.assert_array_equal(arr(d["z"]), mask.astype(np.float32))
    assert (d["zmin"], d["zmax"]) == (0.0, 1.0)
    d = spec(viz.kept_overview(mask, max_columns=8))["data"][0]
    z = arr(d["z"])
    assert z.shape == (4, 8)
    np.testing.assert_allclose(z, mask.reshape(4, 8, 5).mean(-1), rtol=1e-6)
    np.testing.assert_array_equal(arr(d["customdata"])[0], np.arange(8) * 5 + 4)  # last channel of each bin


def test_kept_overview_sorted_by_score_puts_the_kept_channels_first(masks3):
    scores, tm, _ = masks3
    norm = M.normalise(scores[0])
    z = arr(spec(viz.kept_overview(tm[0], order=viz.order_by(norm)))["data"][0]["z"])
    k = int(tm[0][0].sum())  # a task mask is its own top-k: sorted by its score, the first k are kept
    assert (z[:, :k] == 1).all() and (z[:, k:] == 0).all()


def test_layer_strip_rows_order_and_channel_index(masks3):
    scores, tm, mask = masks3
    rows = {"merged": mask[2], "a": tm[0, 2], "b": tm[1, 2]}
    sc = scores.mean(0)[2]
    data = spec(viz.layer_strip(2, rows, sc, sort=True))["data"]
    line, heat = data
    order = np.argsort(-sc, kind="stable")
    np.testing.assert_allclose(arr(line["y"]), sc[order].astype(np.float32))
    assert heat["y"] == ["merged", "a", "b"]
    np.testing.assert_array_equal(arr(heat["z"]), np.stack([r[order] for r in rows.values()]).astype(np.uint8))
    np.testing.assert_array_equal(arr(heat["customdata"])[1], order)  # hover names the real channel
    unsorted = spec(viz.layer_strip(2, rows, sc))["data"][1]
    np.testing.assert_array_equal(arr(unsorted["z"])[0], mask[2].astype(np.uint8))


def test_votes_map_discrete_fixed_range_and_sorting(masks3):
    _, tm, _ = masks3
    v = M.votes(tm)
    d = spec(viz.votes_map(v, 3))["data"][0]
    np.testing.assert_array_equal(arr(d["z"]), v)
    assert (d["zmin"], d["zmax"]) == (-0.5, 3.5)
    scale = d["colorscale"]
    assert len(scale) == 8 and scale[0][1] == scale[1][1] and scale[1][1] != scale[2][1]  # 4 flat colour steps
    np.testing.assert_array_equal(viz.sort_votes(v, 3), -np.sort(-v.astype(int), axis=1))
    zs = arr(spec(viz.votes_map(v, 3, sort=True))["data"][0]["z"])
    assert (np.diff(zs.astype(int), axis=1) <= 0).all()
    zb = arr(spec(viz.votes_map(v, 3, max_columns=8))["data"][0]["z"])
    np.testing.assert_array_equal(zb, np.rint(v.reshape(4, 8, 5).mean(-1)).astype(np.uint8))


def test_chance_and_pairwise_layer_jaccard_agree_with_masks_module(masks3):
    _, tm, _ = masks3
    C = viz.chance_matrix(tm)
    for a, b in itertools.combinations(range(3), 2):
        assert C[a, b] == pytest.approx(M.chance_jaccard(tm[a], tm[b]))
    k, n = tm[0].sum(-1)[0], tm.shape[-1]  # k-of-n masks: E[J] ≈ k / (2n − k)
    assert C[0, 1] == pytest.approx(k / (2 * n - k))
    pairs, J, Cl = viz.pairwise_layer_jaccard(tm)
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    for p, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(J[p], M.jaccard_per_layer(tm[a], tm[b]), rtol=1e-6)
    np.testing.assert_allclose(Cl[0], k / (2 * n - k), rtol=1e-6)


def test_jaccard_figures_carry_their_references(masks3):
    _, tm, _ = masks3
    J = M.jaccard_matrix(tm)
    d = spec(viz.jaccard_matrix(J, ["a", "b", "c"], viz.chance_matrix(tm)))["data"][0]
    np.testing.assert_allclose(arr(d["z"]), J, rtol=1e-6)
    np.testing.assert_allclose(arr(d["customdata"]), viz.chance_matrix(tm), rtol=1e-6)
    names = [t["name"] for t in spec(viz.jaccard_layers(tm, ["a", "b", "c"], 0.9))["data"]]
    assert names[:3] == ["a vs b", "a vs c", "b vs c"]
    assert {"mean of pairs", "chance (independent masks)", "split-half self-overlap (mean)"} <= set(names)
    refs = spec(viz.references(["a", "b"], {"a": 0.9, "b": 0.8}, [0.5, 0.6], 0.4))["data"]
    np.testing.assert_allclose(arr(refs[0]["y"]), [0.9, 0.8], rtol=1e-6)
    np.testing.assert_allclose(arr(refs[2]["y"]), [0.4, 0.4], rtol=1e-6)


def test_expected_intersections_by_hand():
    # layer 0: p = (0.5, 0.25) of n = 4; layer 1: p = (1.0, 0.5)
    tm = np.zeros((2, 2, 4), dtype=bool)
    tm[0, 0, :2] = True
    tm[1, 0, :1] = True
    tm[0, 1, :] = True
    tm[1, 1, :2] = True
    exp = viz.expected_intersections(tm, [(0,), (1,), (0, 1), ()])
    np.testing.assert_allclose(exp, [4 * 0.5 * 0.75 + 4 * 1.0 * 0.5, 4 * 0.5 * 0.25 + 0,
                                     4 * 0.5 * 0.25 + 4 * 1.0 * 0.5, 4 * 0.5 * 0.75 + 0])
    assert exp.sum() == pytest.approx(8)  # every channel falls in exactly one combination


def test_upset_bars_and_dot_matrix(masks3):
    _, tm, _ = masks3
    inter = M.intersections(tm)
    data = spec(viz.upset(inter, ["a", "b", "c"], max_bars=4))["data"]
    bars = data[0]
    combos = sorted(inter, key=lambda c: (-inter[c], len(c), c))[:4]
    np.testing.assert_array_equal(arr(bars["y"]), [inter[c] for c in combos])
    assert bars["customdata"] == [" & ".join("abc"[t] for t in c) for c in combos]
    dots = data[-1]  # filled dots: (column, task) for each member of each combination
    got = sorted(zip(arr(dots["x"]).tolist(), arr(dots["y"]).tolist()))
    assert got == sorted((i, t) for i, c in enumerate(combos) for t in c)


def test_kept_per_layer_params_and_results():
    kept = np.array([3, 4, 5])
    d = spec(viz.kept_per_layer(kept, [8, 8, 8]))["data"]
    np.testing.assert_array_equal(arr(d[0]["y"]), kept)
    assert len(d) == 2  # bars + width line; task lines only when given and different
    d = spec(viz.kept_per_layer(kept, [8, 8, 8], np.array([[3, 4, 5], [4, 4, 4]]), ["a", "b"]))["data"]
    assert [t["name"] for t in d[2:]] == ["a", "b"]
    np.testing.assert_array_equal(arr(d[3]["y"]), [4, 4, 4])
    acc = spec(viz.accuracy_bars(["t1", "t2"], [0.5, 0.75], [0.25, 0.5]))["data"]
    np.testing.assert_allclose(arr(acc[0]["y"]), [0.5, 0.75])
    np.testing.assert_allclose(arr(acc[1]["y"]), [0.25, 0.5])
    sw = spec(viz.sweep_curves([0.1, 0.5], {"t1": [0.6, 0.4], "average": [0.6, 0.4]}, {"t1": 0.7}))["data"]
    np.testing.assert_allclose(arr(sw[0]["y"]), [0.6, 0.4], rtol=1e-6)
    np.testing.assert_allclose(arr(sw[1]["y"]), [0.7, 0.7], rtol=1e-6)  # the dense reference line


def test_params_breakdown_parts_add_up():
    summary = {"params_removed": 250, "params_total": 1000, "unit_sparsity": 0.25}  # unit = 1000 params
    bars = spec(viz.params_breakdown(summary))["data"]
    values = [arr(b["x"])[0] if isinstance(b["x"], dict) else b["x"][0] for b in bars]
    assert values == [750, 250, 0]


def test_report_html_inlines_plotly_once_and_keeps_captions(masks3):
    _, tm, mask = masks3
    sections = [("Overview", viz.CAPTIONS["kept_overview"], viz.kept_overview(mask)),
                ("Votes", viz.CAPTIONS["votes_map"], viz.votes_map(M.votes(tm), 3)),
                ("Table", "", "<table><tr><td>1</td></tr></table>")]
    page = viz.report_html("Report <x>", sections, ["note & more"])
    assert page.count("<h2>") == 3 and "Report &lt;x&gt;" in page and "note &amp; more" in page
    assert page.count("plotly.js v") == 1  # the library is inlined once, for the first figure
    assert "Each row is a layer" in page and "<table>" in page
    assert len(page) > 1_000_000  # plotly.js itself is inside: the report opens offline


def test_who_loses_figure_carries_the_shares_and_the_per_layer_losses():
    from diet.methods import MethodInputs, run_method, who_loses
    from diet.settings import MaskSettings
    from tests.test_methods import SHAPE, TASKS

    half = MaskSettings(sparsity=0.5)
    inputs = MethodInputs(TASKS, shape=SHAPE)
    masks = {"vote": run_method("diet", inputs, half).mask, "random": run_method("random", inputs, half).mask}
    w = who_loses(inputs, half, masks)
    fig = viz.who_loses(w).to_dict()
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [b["name"] for b in bars] == ["vote: own top-k kept", "random: own top-k kept"]
    assert np.allclose(arr(bars[0]["y"]), w["topk"]["vote"]) and list(bars[0]["x"]) == ["A", "B", "C"]
    lost = [t for t in fig["data"] if t.get("yaxis") == "y2"]
    assert np.allclose(arr(lost[0]["y"]), 1 - w["layer_topk"]["vote"].mean(0))
    assert w["reading"].startswith("The vote mask keeps 50%–100% of each task's own top-k (random")


def test_unit_word_reaches_hover_and_axis():
    """DISP's residual positions name their elements "residual dim" (not "channel") in hover text and axis titles."""
    mask = np.ones((2, 8), dtype=bool)
    over = viz.kept_overview(mask, unit="residual dim")
    votes = viz.votes_map(np.ones((2, 8), dtype=np.uint8), 2, unit="residual dim")
    for fig in (over, votes):
        assert "residual dim" in fig.data[0].hovertemplate and "channel" not in fig.data[0].hovertemplate
        assert fig.layout.xaxis.title.text.startswith("residual dim")
    assert "channel" in viz.votes_map(np.ones((2, 8), dtype=np.uint8), 2).data[0].hovertemplate


def test_layer_overlap_counts_match_a_boolean_loop():
    rng = np.random.default_rng(3)
    for width in (1, 7, 64, 65, 200):  # widths that do and do not fill the last 64-bit word
        a, b = rng.random((3, 4, width)) < 0.5, rng.random((2, 4, width)) < 0.3
        got = M.layer_overlap_counts(a, b)
        assert got.shape == (3, 2, 4) and got.dtype == np.int64
        for i, j in itertools.product(range(3), range(2)):
            np.testing.assert_array_equal(got[i, j], (a[i] & b[j]).sum(-1))


VIZ_FIXTURE = Path(__file__).parent / "fixtures" / "viz_figures.json.gz"


def figure_calls() -> list[tuple[str, tuple, dict]]:
    """(figure function, args, kwargs) on random masks: ties, one layer, widths that bin or not, sorted or not."""
    calls = []

    def same(name: str, *args, **kwargs) -> None:
        calls.append((name, args, kwargs))

    rng = np.random.default_rng(4)
    for case in range(12):
        T, L, width = int(rng.integers(2, 8)), int(rng.integers(1, 6)), int(rng.integers(4, 700))
        scores = rng.random((T, L, width)) + rng.random((1, L, width))
        if case % 3 == 0:
            scores = np.round(scores * 3)  # many exact ties
        settings = MaskSettings(sparsity=float(rng.choice([0.0, 0.2, 0.5, 0.9])),
                                merge=str(rng.choice(["budget", "threshold"])))
        tm, mask = M.build_masks(scores, settings)
        names = [f"task{t}" for t in range(T)]
        v, norm = M.votes(tm), M.normalise(scores.mean(0))
        layer = int(rng.integers(0, L))
        rows = {"merged": mask[layer], **{n: tm[t, layer] for t, n in enumerate(names)}}
        inter = M.intersections(tm)
        combos = sorted(inter, key=lambda c: (-inter[c], len(c), c))[: viz.MAX_UPSET_BARS]
        same("kept_overview", mask, "title", viz.order_by(norm) if case % 2 else None, max_columns=300)
        same("kept_overview", mask, max_columns=int(rng.integers(3, 50)), unit="residual dim")
        same("layer_strip", layer, rows, norm[layer], sort=bool(case % 2), score_name="DIET score")
        same("votes_map", v, T, sort=bool(case % 2), max_columns=int(rng.choice([16, 2048])))
        same("jaccard_matrix", M.jaccard_matrix(tm), names, viz.chance_matrix(tm))
        same("jaccard_matrix", M.jaccard_matrix(tm), names)
        same("jaccard_layers", tm, names, float(rng.random()) if case % 2 else None)
        same("upset", inter, names, viz.expected_intersections(tm, combos) if case % 2 else None,
             max_bars=int(rng.integers(1, 30)))
        same("references", names, {n: float(rng.random()) for n in names[1:]}, rng.random(T).tolist(),
             float(rng.random()))
        same("kept_per_layer", M.kept_per_layer(mask), [width] * L, tm.sum(-1) if case % 2 else None, names)
        removed = int(rng.integers(0, 1000))
        same("params_breakdown", {"params_removed": removed, "params_total": 5000,
                                  "unit_sparsity": removed / 2000})
        kinds = ["vote", "pooled", "random"][: int(rng.integers(1, 4))]
        same("who_loses", {"tasks": names, "masks": kinds, "topk": {m: rng.random(T).tolist() for m in kinds},
                           "mass": {m: rng.random(T).tolist() for m in kinds},
                           "layer_topk": {m: rng.random((T, L)) for m in kinds}})
        same("accuracy_bars", names, rng.random(T).tolist(), rng.random(T).tolist(), "wanda-sp")
        x = np.sort(rng.random(int(rng.integers(1, 5)))).tolist()
        same("sweep_curves", x, {n: rng.random(len(x)).tolist() for n in [*names[:2], "average"]},
             {names[0]: float(rng.random())})
    return calls


def plain(x):
    """A figure's JSON as plain values: numpy arrays (plotly's base64 "bdata") decoded to lists, and without the
    plotly template (a property of the plotly version, not of our construction); NaN as "NaN" so that it equals
    itself."""
    if isinstance(x, dict) and "bdata" in x:
        return plain(arr(x).tolist())
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items() if k != "template"}
    if isinstance(x, list):
        return [plain(v) for v in x]
    return "NaN" if isinstance(x, float) and x != x else x


def test_figures_send_the_same_data_as_the_previous_construction():
    """Each figure is built in one validated construction from trace dicts. tests/fixtures/viz_figures.json.gz holds
    what the previous construction (go.Figure, add_trace, update_layout: diet/viz.py at 5616295, kept as
    tests/viz_previous.py until it generated this file, then removed) sent the browser for these random masks; each
    figure must send the same values (plotly orders keys differently; arrays are compared decoded)."""
    import gzip

    expected = json.loads(gzip.decompress(VIZ_FIXTURE.read_bytes()))
    calls = figure_calls()
    assert len(expected) == len(calls) == 12 * 14
    for (name, args, kwargs), (want_name, want) in zip(calls, expected, strict=True):
        assert name == want_name
        assert plain(json.loads(getattr(viz, name)(*args, **kwargs).to_json())) == want, name
