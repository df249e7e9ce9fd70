"""End to end on the real embedded SmolLM2-135M: profile two tasks, prune 25%, reload with plain transformers."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "diet", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """A fresh statistics cache (so the first profile really runs) sharing the converted model folder."""
    from diet.models import ensure_embedded
    from diet.settings import cache_root

    models = ensure_embedded("smollm2-135m").parent
    root = tmp_path_factory.mktemp("diet_cache")
    (root / "models").symlink_to(models)
    assert models.parent == cache_root()
    return {"DIET_CACHE": str(root)}


def test_profile_prune_reload(cache_env, tmp_path):
    from transformers import AutoModelForCausalLM

    from diet.models import count_parameters, load_model

    r = run_cli("profile", "--model", "smollm2-135m", "--tasks", "arithmetic,sentiment", "--samples", "6",
                env=cache_env)
    assert r.returncode == 0, r.stderr
    assert "arithmetic: 6 texts" in r.stdout and "30 layers x 1536 channels" in r.stdout
    out = tmp_path / "pruned"
    r = run_cli("prune", "--tasks", "arithmetic,sentiment", "--samples", "6", "--sparsity", "0.25",
                "--out", str(out), env=cache_env)
    assert r.returncode == 0, r.stderr
    assert "about" not in r.stderr, "the statistics were cached: prune must not profile again"
    summary = json.loads((out / "summary.json").read_text())
    mask = json.loads((out / "mask.json").read_text())
    assert summary["export_mode"] == "uniform" and summary["kept_per_layer"] == [1152] * 30
    assert [len(k) for k in mask["keep"]] == [1152] * 30 and mask["tasks"] == ["arithmetic", "sentiment"]

    dense = load_model("smollm2-135m", say=lambda m: None).model
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.intermediate_size == 1152
    expected = count_parameters(dense) - 30 * 384 * 3 * 576  # 384 channels x (gate row + up row + down column)
    assert count_parameters(reloaded) == expected == summary["params_after"]


def test_cli_errors_are_one_line_without_traceback(cache_env, tmp_path):
    cases = [
        (["prune", "--tasks", "arithmetic", "--sparsity", "1.5", "--out", str(tmp_path / "x")], "sparsity"),
        (["profile", "--model", "/no/such/folder", "--tasks", "arithmetic"], "no such folder"),
        (["profile", "--tasks", "no_such_task"], "no_such_task"),
        (["prune", "--tasks", "arithmetic,sentiment", "--sparsity", "0.2", "--threshold", "3",
          "--out", str(tmp_path / "y")], "above the number of tasks"),
    ]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    cases.append((["prune", "--tasks", "arithmetic", "--sparsity", "0.2", "--out", str(tmp_path / "full")],
                  "not empty"))
    for args, needle in cases:
        r = run_cli(*args, env=cache_env)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
