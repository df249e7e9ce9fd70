"""A crashing third-party engine costs one measurement (or one test), never the run (issue: llama.cpp's AMX crash).

- `diet.isolate.run_isolated` turns a child's death into one line (the signal named), a timeout into another.
- An export whose llama.cpp speed measurement crashes is still written complete and valid; the settings, the card and
  the command line say why the speed is missing; the command exits 0 (a forced SIGSEGV in the measuring child).
- The test run itself survives a segfaulting test: pytest, as configured for this repo, reports it as one failure
  and runs the rest.
- Repacking (llama.cpp's extra buffer types, the AMX path) is off where llama.cpp reports AMX, and a file loaded
  without it gives the same logits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diet.isolate import EngineFailure, describe_exit, run_isolated
from tests import crashers

ROOT = Path(__file__).resolve().parents[1]


def test_run_isolated_returns_the_result_from_another_process():
    out = run_isolated(crashers.echo, 1, "a", k=[2])
    assert out["args"] == [1, "a"] and out["kwargs"] == {"k": [2]} and out["pid"] != os.getpid()


@pytest.mark.parametrize("fn,reason", [
    (crashers.segfault, "crashed (SIGSEGV)"),
    (crashers.oom_killed, "was killed (SIGKILL: out of memory?)"),
    (crashers.raises, "failed: ValueError: bad tensor"),
])
def test_run_isolated_says_how_the_child_ended(fn, reason):
    with pytest.raises(EngineFailure) as e:
        run_isolated(fn, timeout_s=60)
    assert e.value.reason == reason


def test_run_isolated_kills_a_child_past_its_timeout():
    with pytest.raises(EngineFailure, match=r"^timed out after 2 s$"):
        run_isolated(crashers.sleeps, timeout_s=2)


def test_describe_exit_names_signals_and_codes():
    assert describe_exit(-int(signal.SIGBUS)) == "crashed (SIGBUS)"
    assert describe_exit(-int(signal.SIGTERM)) == "was killed (SIGTERM)"
    assert describe_exit(3) == "exited with code 3 before giving a result"


def _crash_the_measurement(monkeypatch) -> None:
    """The export's llama.cpp speed measurement, replaced by a function that segfaults in the measuring child."""
    import diet.measure

    monkeypatch.setattr(diet.measure, "gguf_speed", crashers.segfault)


def test_export_is_kept_whole_when_the_speed_measurement_crashes(tmp_path, monkeypatch):
    from diet.export import export_model
    from diet.measure import SpeedSettings
    from tests.test_export import make_lm, make_result
    from tests.test_gguf import EMBEDDED, tiny

    _crash_the_measurement(monkeypatch)
    notes: list[str] = []
    model = tiny("llama")
    out = export_model(make_lm(model, name=EMBEDDED), make_result(model, [20, 44, 31]), tmp_path / "g", mode="gguf",
                       speed=SpeedSettings(batch_sizes=(1,), seq_len=8, repeats=1), say=notes.append)
    assert {"model.gguf", "README.md", "diet_settings.json", "mask.json"} <= {p.name for p in out.iterdir()}
    settings = json.loads((out / "diet_settings.json").read_text())
    assert "engine_speed" not in settings
    [line] = settings["warnings"]
    assert line.startswith("llama.cpp crashed (SIGSEGV) while measuring speed; the file is written and valid")
    assert "--no-repack" in line and "\n" not in line
    assert f"warning: {line}" in notes
    assert f"Serving-engine speed: not measured ({line})." in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]  # nothing staged left beside it
    from diet.export.gguf.writer import check_file

    assert check_file(out / "model.gguf") > 0


def test_check_file_refuses_a_truncated_gguf(tmp_path):
    from diet.errors import DietError
    from diet.export import export_model
    from diet.export.gguf.writer import check_file
    from tests.test_export import make_lm, make_result
    from tests.test_gguf import EMBEDDED, tiny

    model = tiny("llama")
    out = export_model(make_lm(model, name=EMBEDDED), make_result(model, [20, 44, 31]), tmp_path / "g", mode="gguf")
    data = (out / "model.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 1000])
    with pytest.raises(DietError, match=r"cut.gguf is not a valid GGUF file: "):
        check_file(tmp_path / "cut.gguf")


@pytest.mark.integration
def test_prune_to_gguf_exits_0_when_llama_cpp_crashes(tmp_path, cache_dir, monkeypatch, capsys):
    """The issue's command (Q8_0, --round-to 32, speed measured by default) with the measuring child forced to
    segfault: exit 0, the folder complete with model.gguf, one warning line that names the signal."""
    from diet.cli import main

    _crash_the_measurement(monkeypatch)
    out = tmp_path / "X"
    rc = main(["prune", "--tasks", "arithmetic,capitals", "--samples", "16", "--sparsity", "0.25", "--export-mode",
               "gguf", "--outtype", "q8_0", "--round-to", "32", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0
    assert (out / "model.gguf").is_file() and (out / "summary.json").is_file()
    warnings = [line for line in err.splitlines() if line.startswith("warning: llama.cpp crashed (SIGSEGV)")]
    assert warnings and warnings[-1].endswith("(the folder's README.md)")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [warnings[-1].removeprefix("warning: ")]


def test_a_segfaulting_test_fails_alone_and_the_run_goes_on(tmp_path):
    """pytest with this repo's configuration (pyproject.toml) on a file whose middle test segfaults: that test fails,
    the two others pass, and the process ends with pytest's own exit code 1 (not a signal)."""
    (tmp_path / "test_crashy.py").write_text(textwrap.dedent("""
        import os, signal

        def test_before():
            assert True

        def test_crash():
            os.kill(os.getpid(), signal.SIGSEGV)

        def test_after():
            assert True
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                          str(tmp_path), "-p", "no:cacheprovider", "-q", str(tmp_path / "test_crashy.py")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "test_crashy.py::test_crash" in run.stdout and "crashed" in run.stdout
    assert "1 failed, 2 passed" in run.stdout


def test_repacking_is_off_where_llama_cpp_reports_amx(monkeypatch):
    from diet.errors import DietError
    from diet.llamacpp import REPACK_ENV, repack_enabled

    amx = "CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    plain = "CPU : SSE3 = 1 | AVX512 = 1 | REPACK = 1 |"
    monkeypatch.delenv(REPACK_ENV, raising=False)
    assert repack_enabled(amx) is False and repack_enabled(plain) is True
    monkeypatch.setenv(REPACK_ENV, "on")
    assert repack_enabled(amx) is True
    monkeypatch.setenv(REPACK_ENV, "off")
    assert repack_enabled(plain) is False
    monkeypatch.setenv(REPACK_ENV, "maybe")
    with pytest.raises(DietError, match="DIET_LLAMA_REPACK='maybe': use auto, on or off"):
        repack_enabled(plain)


@pytest.mark.parametrize("outtype,round_to", [("q8_0", 32)])
def test_a_quantized_file_gives_the_same_logits_without_repacking(tmp_path, monkeypatch, outtype, round_to):
    """The AMX-safe load (no extra buffer types) computes what the default load computes, and the parameter really
    reaches llama.cpp (the loaded model reports it)."""
    from diet.llamacpp import REPACK_ENV
    from tests.test_gguf import IDS, cpp_logprobs, export_tiny, open_gguf

    out, _ = export_tiny(tmp_path, "llama", [48, 48, 48], outtype=outtype, round_to=round_to)
    results = {}
    for choice in ("on", "off"):
        monkeypatch.setenv(REPACK_ENV, choice)
        llm = open_gguf(out / "model.gguf")
        assert bool(llm.model_params.use_extra_bufts) is (choice == "on")
        results[choice] = cpp_logprobs(llm, IDS)
        llm.close()
    assert np.abs(results["on"] - results["off"]).max() < 1e-3
    assert (results["on"].argmax(-1) == results["off"].argmax(-1)).all()
