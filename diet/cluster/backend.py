"""Ray as the engine under `--ray`: connect, refuse a cluster that cannot take the work, start long-lived workers,
and hand them units one at a time.

Why long-lived actors: a worker loads the model once (in its checkpoint's dtype, as `diet.models.load_model` always
does) and keeps it for every unit it runs; a unit then costs its own forward passes and nothing else. Why one unit
per idle worker (pull, not a static split): units are unequal (a task of long texts, a cell with lstsq), so a worker
that finishes early takes the next one.

Why the driver stores results: a unit's result comes back through Ray's object store and the driver's `on_result`
writes it to the driver's own cache the moment it arrives, under the key the in-process path uses. Workers never
see that cache; an interrupted run keeps every finished unit.

Faults: a worker that dies mid-unit (killed, out of memory) raises `RayActorError` on the driver; the unit goes back
to the front of the queue for another worker, the progress says so, and the dead worker restarts (reloading the
model) and rejoins. Everything Ray can refuse up front is refused before the first unit, in one line each.

Nothing here knows what a unit computes: `Unit.fn` is a plain function `(lm, memo, *args)` run on a worker
(diet/cluster/units.py holds ours); the service layer (diet/api.py) builds the units and stores their results.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import resource
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from diet.errors import Cancelled, DietError
from diet.settings import ClusterSettings, ModelSpec

LOCAL_OBJECT_STORE = 200 * 1024**2  # bytes of shared memory for a local instance: results are small (statistics)
START_SECONDS = 600  # a worker not holding the model after this long is not coming (its resources are taken)
MEMORY_PER_WORKER = 3.0  # × weight bytes a worker needs: the model, a pruned copy (sweep cells), activations
Say = Callable[[str], None]


@dataclass(frozen=True)
class Unit:
    """One independent piece of work: what it is called in the progress, and what a worker runs."""

    label: str  # e.g. "profile capitals", "diet @ 0.25"
    fn: Callable  # (lm, memo, *args) -> result; a module-level function, so it pickles by reference
    args: tuple = ()  # its arguments; ObjectRefs among them are resolved by Ray on the worker


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds (time.time) of one unit, for the per-unit overhead (bench/cluster.py)."""

    label: str
    submitted: float  # the driver handed it to a worker
    started: float  # the worker began it
    finished: float  # the worker ended it
    stored: float  # the driver had stored its result


@dataclass(frozen=True)
class ClusterProgress:
    """One moment of a cluster run: what the CLI's bar and the app's job panel show."""

    done: int  # units finished (their results stored)
    total: int  # units of this run
    retries: int  # units handed to another worker after theirs died
    workers: tuple[tuple[str, str], ...]  # (worker name, what it does: a unit's label, "idle", "restarting"...)

    def line(self) -> str:
        busy = ", ".join(f"{n}: {s}" for n, s in self.workers)
        return f"units {self.done}/{self.total} · retries {self.retries} · {busy}"


@dataclass
class _Worker:
    name: str
    actor: object
    node: str = ""
    status: str = "loading the model"
    alive: bool = True
    info: dict = field(default_factory=dict)


def _ray():
    """Ray, imported on first use (the in-process path never needs it)."""
    try:
        import ray
    except ImportError:
        raise DietError("--ray needs Ray: pip install ray==2.60.0 (see requirements.txt)") from None
    return ray


class _WorkerActor:
    """A Ray actor: one model, loaded once, and every unit given to it (see the module docstring)."""

    def __init__(self, spec: ModelSpec, threads: int, name: str):
        import torch

        from diet.models import load_model

        torch.set_num_threads(threads)
        self.name = name
        self.lm = load_model(spec, say=lambda m: None)
        self.memo: dict = {}

    def info(self) -> dict:
        """Who this worker is and what it holds: identity and concrete dtype (the driver's cache keys), pid (the
        kill test), weight bytes and peak memory (bench/cluster.py)."""
        from dataclasses import asdict

        import torch

        seen, nbytes = set(), 0
        for p in self.lm.model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                nbytes += p.numel() * p.element_size()
        return {"name": self.name, "pid": os.getpid(), "node": platform.node(), "identity": self.lm.identity,
                "spec": asdict(self.lm.spec), "path": self.lm.path, "threads": torch.get_num_threads(),
                "weight_bytes": nbytes, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

    def run(self, fn: Callable, *args):
        started = time.time()
        out = fn(self.lm, self.memo, *args)
        return out, started, time.time()


def _probe_node(name: str) -> dict:
    """Run on one node before any worker starts: its Ray and Python versions, and what it lacks of the model."""
    import ray

    from diet.models import missing_here
    from diet.settings import ModelSpec

    return {"ray": ray.__version__, "python": platform.python_version(), "host": platform.node(),
            "missing": missing_here(ModelSpec(name=name))}


def _reachable(address: str) -> None:
    """A host:port that answers nothing fails here in one line (Ray itself would retry for a minute)."""
    host, _, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise DietError(f"--ray {address}: Ray Client addresses are not supported; give the head's host:port "
                        "(the GCS port, 6379 by default) or auto on a cluster node")
    if not host or not port.isdigit():
        raise DietError(f"--ray {address}: give local, auto or the head's host:port (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise DietError(f"cannot reach a Ray cluster at {address}: {e.strerror or e} (is `ray start --head` "
                        "running there, and is the port open?)") from None


def connect(settings: ClusterSettings) -> str:
    """Join (or start) the Ray instance `settings.address` names; returns the address in words. Reuses an instance
    this process already holds when it is the same one."""
    ray = _ray()
    wanted = settings.address
    if wanted not in ("local", "auto"):
        _reachable(wanted)  # before leaving an instance this process holds
    if ray.is_initialized():
        if getattr(connect, "_address", None) == wanted:
            return wanted
        ray.shutdown()
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    try:
        if wanted == "local":
            # Workers at the driver's priority (Ray's default niceness for workers is 15): on this machine they do
            # the work the in-process path would do in the foreground, and are timed against it (bench/cluster.py).
            ray.init(num_cpus=settings.local_cpus or os.cpu_count(), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE, _system_config={"worker_niceness": 0}, **quiet)
        else:
            ray.init(address=wanted, **quiet)
    except ConnectionError as e:
        where = "on this machine (start one with `ray start --head`)" if wanted == "auto" else f"at {wanted}"
        raise DietError(f"cannot reach a Ray cluster {where}: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:
        if "version mismatch" in str(e).lower():
            raise DietError(f"Ray version mismatch with the cluster at {wanted}: {_one_line(e)}; install the same "
                            f"Ray and Python on every node (this driver: Ray {ray.__version__}, Python "
                            f"{platform.python_version()})") from None
        raise
    connect._address = wanted
    return wanted


def disconnect() -> None:
    """Leave (and for "local", stop) the Ray instance: tests and the benchmark end with no Ray process left."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
    connect._address = None


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')})"


def check_nodes(spec: ModelSpec) -> list[dict]:
    """Every alive node's versions and model files, checked before any worker starts: a Ray or Python version that
    differs from the driver's, or a model folder a node lacks, is refused in one line that names the node."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(_probe_node)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                          ).remote(spec.name) for n in nodes]
    try:
        answers = ray.get(refs, timeout=120)
    except ray.exceptions.GetTimeoutError:
        raise DietError("the Ray cluster's nodes did not answer within 120 s (are they overloaded?)") from None
    expected = (check_nodes.ray_version or ray.__version__, platform.python_version())
    for node, a in zip(nodes, answers, strict=True):
        if (a["ray"], a["python"]) != expected:
            raise DietError(f"Ray version mismatch: node {_node_name(node)} runs Ray {a['ray']} on Python "
                            f"{a['python']}, this driver Ray {expected[0]} on Python {expected[1]}; install the "
                            "same versions on every node")
        if a["missing"]:
            raise DietError(f"node {_node_name(node)} lacks {a['missing']}: every node must read the model at the "
                            "same path (a shared folder, or a copy at that path on each)")
    return [{**n, "probe": a} for n, a in zip(nodes, answers, strict=True)]


check_nodes.ray_version = None  # the version every node must run (None = this driver's); tests set another


@dataclass(frozen=True)
class Layout:
    """How many workers, and what each one reserves."""

    workers: int
    cpus: int  # CPUs each worker reserves (its torch threads on CPU-only clusters)
    gpus: int  # 0 or 1
    words: str  # the choice explained, printed before the workers start


def choose_layout(settings: ClusterSettings, spec: ModelSpec, nodes: list[dict], weight_bytes: int | None) -> Layout:
    """One worker per GPU; on CPU-only clusters one worker per N cores, N the smallest count at which the workers
    a node holds fit in its memory (MEMORY_PER_WORKER × the weights each), or `settings.cpus_per_worker`."""
    cpus = [int(n["Resources"].get("CPU", 0)) for n in nodes]
    gpus = [int(n["Resources"].get("GPU", 0)) for n in nodes]
    memory = [float(n["Resources"].get("memory", 0.0)) for n in nodes]
    where = (f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {sum(cpus)} CPUs, "
             f"{sum(gpus) or 'no'} GPU{'s' * (sum(gpus) != 1)}")
    wants_gpu = spec.device.startswith("cuda")
    if wants_gpu and not sum(gpus):
        raise DietError(f"--device {spec.device} asks for a GPU per worker, but the Ray cluster has none ({where}); "
                        "use --device cpu or add GPU nodes")
    cap = settings.max_workers or 10**9
    if sum(gpus) and spec.device != "cpu":
        n = min(sum(gpus), cap)
        return Layout(n, 1, 1, f"{where}: {n} worker{'s' * (n != 1)}, one per GPU")
    if settings.cpus_per_worker:
        per, why = settings.cpus_per_worker, "as asked"
    else:
        per, why = 1, "one per core"
        if weight_bytes:
            for c, m in zip(cpus, memory):
                if c and m:
                    fit = max(1, int(m // (MEMORY_PER_WORKER * weight_bytes)))
                    per = max(per, math.ceil(c / fit))
            if per > 1:
                why = f"so that each node's workers fit in its memory ({MEMORY_PER_WORKER:g}x the weights each)"
    n = min(sum(c // per for c in cpus), cap)
    if n < 1:
        raise DietError(f"no node of the Ray cluster has {per} free CPUs for a worker ({where})")
    return Layout(n, per, 0, f"{where}: {n} worker{'s' * (n != 1)} x {per} CPU (N = {per}, {why})")


class Pool:
    """Workers holding one model, and the loop that feeds them units (`run`). A context manager: leaving it kills
    the workers (the cluster itself stays up, and a local instance stays for the next run of this process)."""

    def __init__(self, settings: ClusterSettings, spec: ModelSpec, say: Say | None = None,
                 should_stop: Callable[[], bool] | None = None):
        ray = _ray()
        self.say = say or (lambda m: None)
        self.settings = settings
        self.timings: list[Timing] = []
        where = connect(settings)
        nodes = check_nodes(spec)
        weight_bytes = _weight_bytes(spec)
        self.layout = choose_layout(settings, spec, nodes, weight_bytes)
        self.say(f"Ray cluster {where}: {self.layout.words}")
        actor = ray.remote(_WorkerActor)
        device = "cuda" if self.layout.gpus else "cpu"
        options = {"num_cpus": self.layout.cpus, "num_gpus": self.layout.gpus, "max_restarts": 2,
                   "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        self.workers = [_Worker(f"w{i + 1}", actor.options(**options).remote(replace(spec, device=device),
                                                                              self.layout.cpus, f"w{i + 1}"))
                        for i in range(self.layout.workers)]
        self._ready(should_stop)

    def _ready(self, should_stop) -> None:
        """Wait until every worker holds the model; refuse workers that disagree on what they loaded."""
        ray = _ray()
        pending = {w.actor.info.remote(): w for w in self.workers}
        self.say(f"loading the model on {len(self.workers)} worker(s)")
        deadline = time.time() + START_SECONDS
        while pending:
            if time.time() > deadline:
                self.close()
                raise DietError(f"{len(pending)} worker(s) did not start within {START_SECONDS} s: other jobs may "
                                "hold the cluster's CPUs or GPUs (`ray status` shows them)")
            if should_stop is not None and should_stop():
                self.close()
                raise Cancelled("cancelled while the workers loaded the model; nothing was computed")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
            for ref in ready:
                w = pending.pop(ref)
                try:
                    w.info = ray.get(ref)
                except ray.exceptions.RayError as e:
                    self.close()
                    raise DietError(f"worker {w.name} could not load the model: {_cause(e)}") from None
                w.node, w.status = w.info["node"], "idle"
        identities = {w.info["identity"] for w in self.workers}
        if len(identities) != 1:
            self.close()
            raise DietError("the workers loaded different model files (" + ", ".join(sorted(identities)) + "): "
                            "every node must hold the same weights at the same path")
        first = self.workers[0].info
        from diet.models import LoadedModel

        # What the driver's cache keys read: identity and concrete dtype as the workers loaded them; no weights here.
        self.model = LoadedModel(model=None, tokenizer=None, spec=ModelSpec(**first["spec"]), path=first["path"],
                                 identity=first["identity"])

    def run(self, units: list[Unit], on_result: Callable[[int, object], None],
            progress: Callable[[ClusterProgress], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> None:
        """Every unit on some worker; `on_result(i, result)` is called on the driver as each one arrives (in the
        order they finish). A unit whose worker died goes to another worker (at most `settings.retries` times);
        `should_stop` ends the run with `Cancelled`, killing the workers' units (finished ones stay stored)."""
        if not units:
            return
        ray = _ray()
        queue = deque(range(len(units)))
        avoid: dict[int, set[str]] = {i: set() for i in range(len(units))}
        tries = dict.fromkeys(range(len(units)), 0)
        inflight: dict = {}  # ref -> (unit index, worker, submitted)
        reviving: dict = {}  # ref of a restarting worker's info() -> worker
        later: dict = {}  # name of a worker still restarting -> when to ask it again
        done = retries = 0

        def tell() -> None:
            if progress is not None:
                progress(ClusterProgress(done, len(units), retries, tuple((w.name, w.status) for w in self.workers)))

        tell()
        while queue or inflight:
            if should_stop is not None and should_stop():
                self.close()
                raise Cancelled(f"cancelled: the cluster's units were stopped; {done} of {len(units)} finished "
                                "unit(s) are stored, run it again to resume")
            for name, when in list(later.items()):
                if time.time() >= when:
                    del later[name]
                    w = next(w for w in self.workers if w.name == name)
                    reviving[w.actor.info.remote()] = w
            self._dispatch(units, queue, avoid, inflight)
            if not inflight and queue and not reviving and not later:
                raise DietError("every worker of the Ray cluster died; the finished units are stored, run it again "
                                "to resume")
            ready, _ = ray.wait(list(inflight) + list(reviving), num_returns=1, timeout=0.25)
            for ref in ready:
                if ref in reviving:
                    w = reviving.pop(ref)
                    try:
                        w.info = ray.get(ref)
                        w.status = "idle"
                    except ray.exceptions.ActorUnavailableError:  # still reloading the model: ask again soon
                        later[w.name] = time.time() + 0.5
                    except ray.exceptions.RayError:  # its restarts are used up
                        w.alive, w.status = False, "dead"
                    continue
                i, w, submitted = inflight.pop(ref)
                try:
                    result, started, finished = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    tries[i] += 1
                    if tries[i] > self.settings.retries:
                        self.close()
                        raise DietError(f"unit {units[i].label} failed on {tries[i]} workers (last: {_cause(e)})"
                                        ) from None
                    retries += 1
                    avoid[i].add(w.name)
                    queue.appendleft(i)
                    w.status = "restarting"
                    reviving[w.actor.info.remote()] = w
                    self.say(f"worker {w.name} died during {units[i].label} ({_cause(e)}); retrying it on another "
                             "worker")
                    tell()
                    continue
                except ray.exceptions.RayTaskError as e:
                    self.close()
                    cause = e.cause if isinstance(e.cause, DietError) else None
                    if cause is not None:
                        raise DietError(f"{units[i].label}: {cause}") from None
                    raise
                on_result(i, result)
                self.timings.append(Timing(units[i].label, submitted, started, finished, time.time()))
                done += 1
                w.status = "idle"
            tell()

    def _dispatch(self, units: list[Unit], queue: deque, avoid: dict, inflight: dict) -> None:
        """Give queued units to idle workers; a retried unit avoids the workers it died on while others live."""
        idle = [w for w in self.workers if w.alive and w.status == "idle"]
        living = {w.name for w in self.workers if w.alive}
        for i in list(queue):
            if not idle:
                return
            choice = next((w for w in idle if w.name not in avoid[i]), None)
            if choice is None and not (living - avoid[i]):
                choice = idle[0]  # it died on every living worker: any will do
            if choice is None:
                continue
            idle.remove(choice)
            queue.remove(i)
            choice.status = units[i].label
            inflight[choice.actor.run.remote(units[i].fn, *units[i].args)] = (i, choice, time.time())

    def share(self, obj):
        """`obj` put once into the object store: units that all read it carry the reference, not a copy each."""
        return _ray().put(obj)

    def worker_info(self) -> list[dict]:
        """Each living worker's info() now (peak memory so far, pid, threads)."""
        ray = _ray()
        return ray.get([w.actor.info.remote() for w in self.workers if w.alive])

    def close(self) -> None:
        """Kill the workers (no restart): their running units stop at once. Every one, including those this loop
        gave up on: a worker Ray restarted anyway would keep its CPUs (or GPU) from the next pool."""
        ray = _ray()
        for w in self.workers:
            try:
                ray.kill(w.actor, no_restart=True)
            except ray.exceptions.RayError:
                pass  # already gone
            w.alive, w.status = False, "stopped"

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cause(e: BaseException) -> str:
    """The first line of what a Ray error says happened."""
    cause = getattr(e, "cause", None)
    return _one_line(cause if isinstance(cause, BaseException) else e)


def _weight_bytes(spec: ModelSpec) -> int | None:
    """The model's weight files on this machine, for the memory side of the layout (None when not local)."""
    from pathlib import Path

    from diet.models import EMBEDDED
    from diet.settings import cache_root

    folder = cache_root() / "models" / spec.name if spec.name in EMBEDDED else Path(spec.name).expanduser()
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")) or None
