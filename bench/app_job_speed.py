"""Is a job in the app as fast as the same job from the CLI? In-app seconds ÷ CLI seconds, model load excluded.

Two jobs on the embedded SmolLM2-135M, each timed both ways in one run:
1. profile 2 offline tasks × 100 calibration texts (the Model and tasks page's Profile button vs `diet profile`);
2. dense-vs-pruned evaluation of 2 tasks × 50 items (the Prune and evaluate page vs `diet eval` on the dense model
   and on the pruned folder `diet prune` writes, the same mask: DIET, sparsity 0.2, those 2 tasks × 100 texts).

In-app: `streamlit run app.py` as `make run` starts it (.streamlit/config.toml), on a free localhost port with a
private, empty DIET_CACHE; headless chromium (Playwright, system chromium) opens the page, waits until the model is
loaded, clicks, and the clock runs from the click until the page shows the result — everything the user waits for
(a MutationObserver in the page notes the moment the result's text appears: `tests/appdriver.watch`).
For the evaluation the app's own numbers are also printed: the seconds its scorer recorded per task (what
`diet eval` records too); the rest of its job is pruning the copy and the page's own runs. The side-by-side
forward-speed measurement is a separate button on that page (the CLI's `diet eval` times nothing): it is clicked
after the comparison and its seconds, click to metric, are printed apart — they are not part of the ratio.
Each side of a round starts once other processes leave the CPU (`--quiet-wait`), and every round prints the cores
other processes kept busy while each side was timed (the machine's busy time from /proc less this benchmark's own
process tree), its load average and peak memory ÷ weight bytes (the app server's, the largest CLI process's).
CLI: a fresh process per command with an equally empty cache; its seconds are the ones the engine records (the
statistics' `seconds`, the eval JSON's per-task `seconds`), so the model load is excluded there as well.

    .venv/bin/python bench/app_job_speed.py [--rounds 3]   # ~2.5 min a round on 2 cores; under the torch lock
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the browser driver lives in tests/

from tests.appdriver import (  # noqa: E402
    ROOT,
    app_server,
    choose_offline_tasks,
    launch,
    missing,
    nav,
    private_cache,
    seen,
    set_number,
    wait_idle,
    watch,
)

TASKS = ("arithmetic", "capitals")
SAMPLES = 100
ITEMS = 50
TARGET = 1.3


def cli(cache: Path, *args: str) -> None:
    env = {**os.environ, "DIET_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "diet", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


HZ = os.sysconf("SC_CLK_TCK")


def cpu_sample() -> tuple[float, int, int, dict]:
    """(now, the machine's busy CPU ticks, this benchmark's own ticks, those ticks by part: "server" (the app),
    "browser" (chromium), "driver" (this script, Playwright's driver, the reaped CLI children)) — its process tree,
    from /proc (a reaped child's ticks are in its parent's cutime)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(v) - v[3] - v[4]  # all but idle and iowait
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()  # the fields after the command name
        except OSError:
            continue
        procs[int(stat.parent.name)] = (int(f[1]), sum(int(x) for x in f[11:15]))  # ppid, utime+stime+cutime+cstime
    tree = {os.getpid()}
    while True:
        grown = {pid for pid, (ppid, _) in procs.items() if ppid in tree} - tree
        if not grown:
            break
        tree |= grown
    parts = {"server": 0, "browser": 0, "driver": 0}
    for pid in tree & procs.keys():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmd = b""
        parts["server" if b"streamlit" in cmd else "browser" if b"chromium" in cmd else "driver"] += procs[pid][1]
    return time.monotonic(), busy, sum(parts.values()), parts


def parts_cores(a: tuple, b: tuple) -> str:
    """Cores each part of this benchmark used on average between two `cpu_sample`s."""
    return ", ".join(f"{k} {(b[3][k] - a[3][k]) / HZ / max(b[0] - a[0], 1e-6):.2f}" for k in a[3])


def others_cores(a: tuple, b: tuple) -> float:
    """Cores that processes outside this benchmark kept busy on average between two `cpu_sample`s (a shared
    machine: other people's builds and tests slow one side of a round and not the other)."""
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / HZ / max(b[0] - a[0], 1e-6))


def wait_quiet(limit: float, threshold: float = 0.25, window: float = 3.0) -> float:
    """Wait (at most `limit` seconds) until other processes keep fewer than `threshold` cores busy over `window`
    seconds; returns the last reading. Why: on a shared machine someone's test run in the middle of one side of a
    round says nothing about the app; starting each round in a quiet moment makes the two sides comparable (the
    readings taken while timed are printed anyway)."""
    deadline = time.monotonic() + limit
    while True:
        a = cpu_sample()
        time.sleep(window)
        busy = others_cores(a, cpu_sample())
        if busy < threshold or time.monotonic() > deadline:
            return busy


def stats_seconds(cache: Path) -> float:
    """Seconds the profiler recorded (forward passes, tokenization) for every statistics entry of a cache."""
    return sum(json.loads(p.read_text())["meta"]["seconds"] for p in (cache / "artifacts" / "stats").glob("*.json"))


def eval_seconds(cache: Path) -> float:
    """Seconds the scorer recorded for every cached evaluation of the app (dense and pruned, every task)."""
    return sum(json.loads(p.read_text())["meta"]["seconds"] for p in (cache / "artifacts" / "eval").glob("*.json"))


def cli_runs(work: Path) -> dict:
    """Profile, then dense and pruned evaluation, each in a fresh process on an empty cache."""
    cache = private_cache(work / "cli-cache")
    shutil.rmtree(cache / "artifacts", ignore_errors=True)
    tasks = ",".join(TASKS)
    c0 = cpu_sample()
    cli(cache, "profile", "--tasks", tasks, "--samples", str(SAMPLES))
    profile, others_profile = stats_seconds(cache), others_cores(c0, cpu_sample())
    folder = work / "cli-pruned"
    shutil.rmtree(folder, ignore_errors=True)
    cli(cache, "prune", "--tasks", tasks, "--samples", str(SAMPLES), "--sparsity", "0.2", "--out", str(folder))
    shutil.rmtree(cache / "artifacts" / "eval", ignore_errors=True)
    evals, c0 = 0.0, cpu_sample()
    for model, name in ((None, "dense"), (str(folder), "pruned")):
        out = work / f"cli-eval-{name}.json"
        cli(cache, "eval", "--tasks", tasks, "--limit", str(ITEMS), "--json", str(out),
            *(("--model", model) if model else ()))
        evals += sum(r["seconds"] for r in json.loads(out.read_text())["results"])
    return {"profile": profile, "evaluate": evals, "others_profile": others_profile,
            "others_evaluate": others_cores(c0, cpu_sample())}


def estimate_seconds(label: str) -> float:
    """The page's estimate in seconds, from the Profile button's label ("… — about 12 s" / "about 1.5 min")."""
    m = re.search(r"about ([0-9.]+) (s|min)", label)
    if not m:
        raise SystemExit(f"error: no estimate on the Profile button: {label!r}")
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def threads_note(page, done: str) -> str:
    """The job panel's "torch threads: N (… cores free)" line (what the job chose when it got its turn); read while
    the clock runs, which costs the server nothing. Stops looking once `done` (the result's text) is on the page, so
    a note never seen cannot hold up the stopwatch."""
    seen(page, ["torch threads: ", done])
    note = page.get_by_text(re.compile(r"^torch threads: ")).first
    return note.inner_text() if note.count() else "torch threads: not seen"


def weight_mb(page) -> float:
    """The dense model's weights in MB, as the page's "Size in memory" metric says ("… vs 513 MB")."""
    text = page.locator('[data-testid="stMetric"]').filter(has_text="Size in memory").inner_text()
    return float(re.findall(r"vs ([0-9,.]+) MB", text)[-1].replace(",", ""))


def server_peak_mb() -> float:
    """Peak resident memory (VmHWM) of the streamlit server this script started (its child process)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text, cmd = status.read_text(), (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if re.search(rf"^PPid:\s+{os.getpid()}$", text, re.M) and b"streamlit" in cmd:
            return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.M).group(1)) / 1024
    return float("nan")


def cli_peak_mb() -> float:
    """Peak resident memory of the largest CLI process run so far (the waited-for children)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def app_round(browser, url: str, cache: Path) -> dict:
    """One viewer (a new session) profiles, then evaluates, on an emptied cache (the model stays loaded)."""
    for kind in ("stats", "eval"):
        shutil.rmtree(cache / "artifacts" / kind, ignore_errors=True)
    out: dict = {}
    page = browser.new_page()
    page.set_default_timeout(600_000)
    page.goto(url)
    page.get_by_role("heading", name="DIET Explorer").wait_for()
    nav(page, "Model and tasks")
    page.get_by_text("is loaded").wait_for()  # the model load is not timed
    choose_offline_tasks(page, TASKS)
    set_number(page, "Calibration samples", SAMPLES)
    button = page.get_by_role("button", name=re.compile(r"^Profile 2 task\(s\)"))
    button.wait_for()
    out["estimate"] = estimate_seconds(button.inner_text())
    watch(page, ["torch threads: ", "Statistics in this session"])
    c0, t0 = cpu_sample(), time.time()
    button.click()
    out["threads"] = threads_note(page, "Statistics in this session")
    out["profile"] = seen(page, ["Statistics in this session"])[1] - t0
    out["others_profile"] = others_cores(c0, cpu_sample())
    out["profile_engine"] = stats_seconds(cache)
    nav(page, "Prune and evaluate")
    set_number(page, "Items per task", ITEMS)
    watch(page, ["Average accuracy (primary metric)"])  # the comparison is on the page
    c0, t0 = cpu_sample(), time.time()
    page.get_by_role("button", name=re.compile(r"^Prune and evaluate, dense vs pruned")).click()
    out["evaluate"] = seen(page, ["Average accuracy (primary metric)"])[1] - t0
    c1 = cpu_sample()
    out["others_evaluate"], out["parts_evaluate"] = others_cores(c0, c1), parts_cores(c0, c1)
    out["evaluate_engine"] = eval_seconds(cache)
    out["weights_mb"] = weight_mb(page)
    wait_idle(page)
    watch(page, ["Forward speed (measured)"])
    t0 = time.time()  # the forward speed, on demand: timed apart, not in the ratio (diet eval has none)
    page.get_by_role("button", name="Measure forward speed").click()
    out["speed"] = seen(page, ["Forward speed (measured)"])[1] - t0
    wait_idle(page)
    page.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="keep the work folder here (logs, caches) instead of a temp folder")
    ap.add_argument("--rounds", type=int, default=3, help="app and CLI alternate this many times (default 3): on a "
                                                           "shared machine the load changes from minute to minute")
    ap.add_argument("--quiet-wait", type=float, default=60, help="before each side of a round, wait up to this many "
                    "seconds for other processes to leave the CPU (under 0.25 cores over 3 s; default 60)")
    a = ap.parse_args()
    why = missing()
    if why:
        sys.exit(f"error: {why}")
    work = Path(a.keep or tempfile.mkdtemp(prefix="diet-app-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(TASKS)} offline tasks ({', '.join(TASKS)}); profile {SAMPLES} texts each, evaluate {ITEMS} items "
          f"each, dense and pruned (DIET, sparsity 0.2); {os.cpu_count()} cores; work folder {work}\n", flush=True)
    from playwright.sync_api import sync_playwright

    rounds = []
    cache = private_cache(work / "app-cache")
    with app_server(cache, work / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p, work / "user-data")
        for r in range(a.rounds):
            load = os.getloadavg()[0]
            quiet = wait_quiet(a.quiet_wait)
            app = app_round(browser, url, cache)
            wait_quiet(a.quiet_wait)
            ref = cli_runs(work)
            rounds.append((app, ref))
            w = app["weights_mb"]
            print(f"round {r + 1}: load average (1 min) {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
                  f"other processes' cores when it started: {quiet:.2f}; "
                  f"peak memory ÷ weight bytes ({w:.0f} MB): app server {server_peak_mb() / w:.2f}, largest CLI "
                  f"process {cli_peak_mb() / w:.2f}; cores kept busy by other processes while timed: app profile "
                  f"{app['others_profile']:.2f}, CLI profile {ref['others_profile']:.2f}, app evaluate "
                  f"{app['others_evaluate']:.2f}, CLI evaluate {ref['others_evaluate']:.2f}; cores used while the app "
                  f"evaluated: {app['parts_evaluate']}", flush=True)
            print(f"round {r + 1}: profile in-app {app['profile']:.1f} s (profiler {app['profile_engine']:.1f} s), CLI "
                  f"{ref['profile']:.1f} s; evaluate in-app {app['evaluate']:.1f} s (scorer "
                  f"{app['evaluate_engine']:.1f} s), CLI {ref['evaluate']:.1f} s; forward speed on demand "
                  f"{app['speed']:.1f} s (not in the ratio); the page estimated the profile at "
                  f"{app['estimate']:.0f} s ({app['profile'] / app['estimate']:.2f}x that measured); {app['threads']}",
                  flush=True)
        browser.close()
    med = lambda f: statistics.median(f(app, ref) for app, ref in rounds)  # noqa: E731
    print(f"\nmedian over {len(rounds)} rounds (each ratio taken within its round, app and CLI back to back)")
    print(f"{'job':<28} {'in-app s':>9} {'CLI s':>8} {'ratio':>6}   target ≤ {TARGET}")
    for job in ("profile", "evaluate"):
        ratio = med(lambda app, ref, job=job: app[job] / ref[job])
        print(f"{job + ' (click to result)':<28} {med(lambda app, ref, job=job: app[job]):9.1f} "
              f"{med(lambda app, ref, job=job: ref[job]):8.1f} {ratio:6.2f}   {'OK' if ratio <= TARGET else 'OVER'}")
    for job, label in (("profile", "profile (profiler only)"), ("evaluate", "evaluate (scorer only)")):
        print(f"{label:<28} {med(lambda app, ref, job=job: app[job + '_engine']):9.1f} "
              f"{med(lambda app, ref, job=job: ref[job]):8.1f} "
              f"{med(lambda app, ref, job=job: app[job + '_engine'] / ref[job]):6.2f}")
    print(f"forward speed on demand (click to metric, not in any ratio): median "
          f"{med(lambda app, ref: app['speed']):.1f} s")
    print("(the app's evaluation job also prunes a copy of the model, which the CLI's `diet prune` did beforehand; "
          "its forward-speed measurement is a separate button, timed above)")


if __name__ == "__main__":
    main()
