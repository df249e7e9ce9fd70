"""Dense vs pruned, measured side by side and cached: what the app's comparison pages show and a CLI could print.

Why cached by content: every score is keyed by the model's identity and dtype, the task's data, the evaluation
settings and a digest of the mask (`eval_key`), so the dense model's numbers are shared by every mask and page, a
number is computed once, and a second job asking for the same number waits for the first (`ArtifactCache.computing`).
The uncached one-off twin is the export's own evaluation (`diet.export.evaluate_one`), which scores the dense model
before an in-place cut.
"""

from __future__ import annotations

from collections.abc import Callable

from diet.cache import ArtifactCache
from diet.errors import Cancelled, DietError
from diet.evaluate import EvalSettings, TaskResult, evaluate_task
from diet.settings import sha256_of

SPEED_BATCH, SPEED_TOKENS = 1, 64  # the side-by-side forward-speed measurement of the comparison


def eval_key(lm, task, settings: EvalSettings, digest: str) -> str:
    """Everything that determines a task's score: model content and dtype, task data, limit, length, mask."""
    return sha256_of({"model": lm.identity, "dtype": lm.spec.dtype, "task": task.fingerprint(),
                      "limit": settings.limit, "max_length": settings.max_length, "mask": digest})[:24]


def cached_evaluate(lm, model, task, settings: EvalSettings, digest: str, memo: dict | None = None, progress=None,
                    cache: ArtifactCache | None = None, on_wait: Callable[[str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> TaskResult:
    """evaluate_task, remembered in `memo` (this process) and on disk (kind "eval"): a number is computed once,
    under the lock of its cache entry (a second job waits, told through `on_wait`, and reads it)."""
    key = eval_key(lm, task, settings, digest)
    if memo is not None and key in memo:
        return memo[key]
    cache = cache or ArtifactCache()

    def get() -> TaskResult:
        hit = cache.load_json("eval", key)
        if hit is not None and "logliks" in hit:  # entries written before logliks were kept are scored again
            hit.pop("note", None)  # a derived field of to_dict()
            hit["logliks"] = tuple(tuple(ll) for ll in hit["logliks"])
            return TaskResult(**hit)
        res = evaluate_task(model, lm.tokenizer, task, settings, progress)
        cache.save_json("eval", key, {**res.to_dict(), "logliks": res.logliks})  # the changed items read them
        return res

    with cache.computing("eval", key, f"the {task.name} score of this model", on_wait, should_stop):
        res = get()
    if memo is not None:
        memo[key] = res
    return res


def model_size(model) -> dict:
    """Parameters (tied weights once) and bytes of the weights as stored in memory."""
    from diet.models import count_parameters

    seen, nbytes = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            nbytes += p.numel() * p.element_size()
    return {"params": count_parameters(model), "mb": nbytes / 2**20}


def speed_key(lm, digest: str) -> str:
    """What a forward-speed measurement of dense vs one mask is remembered by: model content and dtype, the mask
    and the measured batch."""
    return sha256_of({"model": lm.identity, "dtype": lm.spec.dtype, "mask": digest, "batch": SPEED_BATCH,
                      "tokens": SPEED_TOKENS})[:24]


def pruned_speed(lm, make_pruned: Callable, digest: str, memo: dict | None = None,
                 note: Callable[[str], None] | None = None, again: bool = False) -> dict:
    """`forward_speed` of the dense model and `make_pruned()`, remembered in `memo` by `speed_key` (the mask's
    digest): asked for on its own, after the comparison, because `diet eval` does not time anything and a
    comparison should cost what the CLI's evaluation costs. `again`: measure anew (a timing belongs to the
    machine's load of the moment, so it is remembered for the session only, never written to the disk cache).

    Returns {"dense": tok/s, "pruned": tok/s, "detail": measure_speed's dict}."""
    key = speed_key(lm, digest)
    if memo is not None and key in memo and not again:
        return memo[key]
    note = note or (lambda m: None)
    note("pruning a copy of the model")
    pruned = make_pruned()
    note("measuring forward speed")
    out = forward_speed({"dense": lm.model, "pruned": pruned})
    if memo is not None:
        memo[key] = out
    return out


def forward_speed(models: dict) -> dict:
    """Tokens per second of each model on the same random batch, timed interleaved by the engine
    (diet.measure.measure_speed: medians, so machine load hits both alike)."""
    from diet.measure import SpeedSettings, measure_speed

    # One sequence of 64 tokens: a few seconds for both models on a small CPU (8 × 64 took ~15 s, more than the
    # evaluation itself); the ratio between the models is what the page shows.
    measured = measure_speed(models, SpeedSettings(batch_sizes=(SPEED_BATCH,), seq_len=SPEED_TOKENS, repeats=3))
    row = measured["rows"][0]
    return {**{n: float(row[f"{n}_tokens_per_s"]) for n in models}, "detail": measured}


def _eval_tasks(tasks: list) -> list:
    usable = [t for t in tasks if t.evaluation]
    if not usable:
        raise DietError("none of the chosen tasks has evaluation items (text-only task files can only calibrate)")
    return usable


def _requests(tasks, settings: EvalSettings) -> int:
    return sum(len(it.requests()) for t in tasks for it in t.evaluation[: settings.limit])


def compare_models(lm, make_pruned: Callable, digest: str, tasks: list, settings: EvalSettings,
                   memo: dict | None = None, progress: Callable[[str, int, int], None] | None = None,
                   note: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                   on_wait: Callable[[str], None] | None = None, cache: ArtifactCache | None = None,
                   shown: str = "pruned", speed: bool = True) -> dict:
    """Every task on the dense model, then on `make_pruned()`, each number cached (`cached_evaluate`, dense ones
    shared by every mask), progress per model, cancel between tasks; then parameters, size and (`speed`) forward
    speed.

    `digest` keys the pruned model's cached numbers; `shown` is the pruned model's name in progress and notes.
    `speed` False: no timing here (the same work as `diet eval` on both models); `pruned_speed` measures it on
    demand. Memory: the dense model and what `make_pruned` returns are both held (a comparison asks for two
    models). Returns {"tasks", "dense", "pruned", "size"} and, with `speed`, "speed"."""
    progress = progress or (lambda *a: None)
    note = note or (lambda m: None)
    usable = _eval_tasks(tasks)
    counts = [_requests([t], settings) for t in usable]
    per = sum(counts)
    out: dict = {"tasks": [t.name for t in usable]}
    models = {}
    for label, make in (("dense", lambda: lm.model), ("pruned", make_pruned)):
        name = "dense" if label == "dense" else shown
        note(f"evaluating the {name} model")
        model = models[label] = make()
        rows, offset = [], 0
        for t, n in zip(usable, counts, strict=True):
            if should_stop is not None and should_stop():
                raise Cancelled("evaluation cancelled")
            cb = lambda d, _n, o=offset, lab=name: progress(lab, o + d, per)  # noqa: E731
            rows.append(cached_evaluate(lm, model, t, settings, "dense" if label == "dense" else digest, memo, cb,
                                        cache, on_wait, should_stop))
            offset += n
            progress(name, offset, per)
        out[label] = rows
    if speed:
        note("measuring forward speed")
        out["speed"] = forward_speed(models)
    out["size"] = {k: model_size(m) for k, m in models.items()}
    return out
