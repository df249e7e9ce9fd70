"""Sweep: the right cells, numbers equal to pruning and evaluating by hand, and resumable from the cache."""

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
    assert cells(SWEEP) == [("diet", "", 0.25), ("diet", "", 0.5), ("random", "", 0.25), ("random", "", 0.5),
                            ("single-task", "arithmetic", 0.25), ("single-task", "arithmetic", 0.5),
                            ("single-task", "capitals", 0.25), ("single-task", "capitals", 0.5)]
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
