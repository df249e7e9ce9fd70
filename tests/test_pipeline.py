"""The one DIET pipeline (diet.pipeline): the CLI's prune and the app's Export write the same folder, and a folder
appears complete, summary.json included, or not at all — also when the run is killed (SIGTERM) at any moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from diet.api import profile_tasks
from diet.cli import main
from diet.models import load_model
from diet.settings import ModelSpec, ProfileSettings

TASKS = ["arithmetic", "capitals"]
ROOT = Path(__file__).resolve().parents[1]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_and_app_write_the_same_folder(tiny_folder, tmp_path, capsys):
    """Same model, tasks and settings (DIET's defaults at 20%): `python -m diet prune` and the Export page write
    the same files with the same bytes (weights, mask, settings, card); summary.json differs only in the seconds the
    run took, and the card's load snippet in the folder's own path."""
    from tests.test_app import EXPORT, finish_jobs, ok, open_page

    cli, app = tmp_path / "cli", tmp_path / "app"
    rc = main(["prune", "--model", str(tiny_folder), "--device", "cpu", "--tasks", ",".join(TASKS), "--samples", "8",
               "--sparsity", "0.2", "--speed-repeats", "0", "--out", str(cli)])
    assert rc == 0, capsys.readouterr().err
    ps = ProfileSettings(samples=8)
    lm = load_model(ModelSpec(name=str(tiny_folder), device="cpu"), say=lambda m: None)
    stats = profile_tasks(lm, TASKS, ps)  # cached by the CLI run: no forward pass
    at = open_page(EXPORT, lm, stats=stats, profile_settings=ps)
    at.checkbox(key="export_speed").uncheck().run()  # the CLI ran with --speed-repeats 0
    at.text_input(key="out_dir").set_value(str(app)).run()
    at.button(key="btn_export").click().run()
    finish_jobs(at)
    ok(at)
    a, b = files(cli), files(app)
    assert sorted(a) == sorted(b) and "summary.json" in a
    summaries = [json.loads(x.pop("summary.json")) for x in (a, b)]
    assert summaries[0].pop("seconds") >= 0 and summaries[1].pop("seconds") >= 0
    assert summaries[0] == summaries[1]
    # the model card's "how to load" snippet names the folder itself: the one place the two may differ
    for x, folder in ((a, cli), (b, app)):
        x["README.md"] = x["README.md"].replace(str(folder).encode(), b"<out>")
    for name in a:
        assert a[name] == b[name], name


def run_until(tiny_folder: Path, out: Path, moment) -> tuple[int, list[str] | None]:
    """Start `python -m diet prune`, send SIGTERM the first time `moment()` is true (polled every millisecond);
    returns (exit code, the output folder's files seen the moment it was first seen, or None)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "diet", "prune", "--model", str(tiny_folder), "--device", "cpu",
                             "--tasks", ",".join(TASKS), "--samples", "8", "--sparsity", "0.25",
                             "--speed-repeats", "0", "--out", str(out)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = None
    try:
        while proc.poll() is None:
            fire = moment()  # asked before the listing: a folder that appears between the two is still listed
            if seen is None and out.exists():
                seen = sorted(p.name for p in out.iterdir())
            if fire:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.001)
        proc.wait(120)
    finally:
        proc.kill()
    if seen is None and out.exists():  # the command finished between two polls: the first look comes now
        seen = sorted(p.name for p in out.iterdir())
    return proc.returncode, seen


def test_sigterm_at_any_moment_leaves_no_folder_or_a_complete_one(tiny_folder, tmp_path):
    """Killed while the folder is staged: no output folder and no staging leftovers (exit 130). Killed the moment
    the output folder appears (when the CLI used to write summary.json, after the rename): the folder is already
    complete, summary.json included — a watcher listing it at once sees every file."""
    staged = tmp_path / "staged"
    rc, seen = run_until(tiny_folder, staged, lambda: any(p.name.startswith(".staged.partial-")
                                                          for p in tmp_path.iterdir()))
    assert rc == 130 and seen is None and not staged.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".staged")]  # the staging folder went too

    done = tmp_path / "done"
    rc, seen = run_until(tiny_folder, done, done.exists)
    assert seen is not None and "summary.json" in seen and {"README.md", "config.json", "mask.json"} <= set(seen)
    assert sorted(p.name for p in done.iterdir()) == seen and json.loads((done / "summary.json").read_text())
    # 130: the signal arrived while the command still ran; 0 or -SIGTERM: after it had finished (the handler is the
    # command's, restored when it returns). Either way the folder is whole.
    assert rc in (0, 130, -signal.SIGTERM)
