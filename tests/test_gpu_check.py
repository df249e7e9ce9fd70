"""bench/gpu_check.py, the script a lent GPU machine runs, checked end to end on tiny shapes on the CPU."""

from __future__ import annotations

import json


def test_gpu_check_tiny_path_runs_every_step_on_cpu(tmp_path, capsys):
    """bench/gpu_check.py's whole path (profile vs plain forward, ours vs lm-eval, masked vs sliced in bf16,
    in-place export, reload) on tiny shapes, so the script a GPU machine runs is known to work end to end."""
    from bench.gpu_check import main as gpu_check

    assert gpu_check(["--shape", "tiny", "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["shape"] for r in rows] == ["tiny-llama", "tiny-gemma2"]
    for r in rows:
        assert r["ok"] and r["export_dtype"] == "bfloat16" and r["reload_diff"] == 0.0
        assert r["sliced_vs_masked"] <= max(2 * r["bf16_noise"], 1e-3)
        assert r["profile_overhead"] > 0 and r["ours_items_per_s"] > 0 and r["lm_eval_items_per_s"] > 0
        assert r["loglik_max_diff"] < 0.5  # same requests, same bf16 model: lm-eval's numbers up to bf16 noise
    assert "| tiny-llama |" in capsys.readouterr().out
