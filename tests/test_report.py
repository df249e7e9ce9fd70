"""The HTML report: `python -m diet prune --report` writes what the app's Export page downloads (diet.report.report),
opening with the headline and a readable settings table; bad report paths are refused before any work."""

from __future__ import annotations

import re

import pytest

from diet.api import build_mask, profile_tasks
from diet.cli import main
from diet.models import load_model
from diet.report import report
from diet.settings import MaskSettings, ModelSpec, ProfileSettings

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalised(page: str) -> str:
    """Without what differs between two renderings of the same report: the time stamp and plotly's div ids."""
    return UUID.sub("ID", re.sub(r"Generated [^<]* UTC", "Generated", page))


def test_cli_report_is_the_apps_report(tiny_folder, tmp_path, capsys):
    page_path = tmp_path / "report.html"
    rc = main(["prune", "--model", str(tiny_folder), "--device", "cpu", "--tasks", "arithmetic,capitals,sentiment",
               "--samples", "8", "--sparsity", "0.25", "--speed-repeats", "0", "--out", str(tmp_path / "out"),
               "--report", str(page_path)])
    assert rc == 0, capsys.readouterr().err
    lm = load_model(ModelSpec(name=str(tiny_folder), device="cpu"), say=lambda m: None)
    stats = profile_tasks(lm, ["arithmetic", "capitals", "sentiment"], ProfileSettings(samples=8))  # cached: same
    want = report(lm.spec.name, build_mask(stats, MaskSettings(sparsity=0.25)), stats)
    got = page_path.read_text(encoding="utf-8")
    assert normalised(got) == normalised(want)
    assert got.index("Removed 25.0% of the MLP channels") < got.index("<h2>Settings") < got.index("<h2>Votes")
    assert "<td>Merge</td><td>exact budget" in got and "{'sparsity'" not in got


@pytest.mark.parametrize("name,why", [("report.txt", "give an .html file name"), ("exists.html", "exists;"),
                                      ("nowhere/report.html", "does not exist")])
def test_bad_report_paths_are_refused_before_any_work(name, why, tiny_folder, tmp_path, capsys):
    (tmp_path / "exists.html").write_text("someone's file")
    out = tmp_path / "out"
    rc = main(["prune", "--model", str(tiny_folder), "--device", "cpu", "--tasks", "arithmetic", "--samples", "4",
               "--sparsity", "0.25", "--out", str(out), "--report", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert rc == 2 and why in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and (tmp_path / "exists.html").read_text() == "someone's file"
    assert not (tmp_path / "cache" / "artifacts").exists()  # refused before profiling


def test_cli_disp_report_is_the_disp_pages_figures(tiny_folder, tmp_path, capsys):
    """`prune --method disp --report` writes every position's figures and captions as the DISP page shows them
    (both come from diet.disp.views)."""
    from diet.disp import POSITION_SHORT, POSITIONS, DispSettings, build_disp_masks, profile_disp
    from diet.report import disp_report

    page_path = tmp_path / "disp.html"
    rc = main(["prune", "--method", "disp", "--model", str(tiny_folder), "--device", "cpu", "--tasks",
               "arithmetic,capitals", "--samples", "8", "--sparsity", "0.25", "--out", str(tmp_path / "out"),
               "--report", str(page_path)])
    assert rc == 0, capsys.readouterr().err
    lm = load_model(ModelSpec(name=str(tiny_folder), device="cpu"), say=lambda m: None)
    stats = profile_disp(lm, ["arithmetic", "capitals"], ProfileSettings(samples=8))  # cached: the same statistics
    want = disp_report(lm.spec.name, build_disp_masks(stats, DispSettings(sparsity=0.25)), stats)
    got = page_path.read_text(encoding="utf-8")
    assert normalised(got) == normalised(want)
    for pos in POSITIONS:
        assert f"<h2>{POSITION_SHORT[pos]}: which" in got and f"<h2>{POSITION_SHORT[pos]}: overlap" in got
    assert (tmp_path / "out" / "summary.json").is_file()
