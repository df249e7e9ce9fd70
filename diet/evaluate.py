"""Zero-shot multiple-choice scoring identical to lm-evaluation-harness 0.4.x (`--model hf`), and perplexity.

Why our own scorer: pruned models live in memory (no folder to hand to lm-eval), the app needs progress and
previews, and lm-eval recomputes each item's shared context once per choice. We keep its numbers exactly:

* requests are `item.requests()`: `(context, " " + choice)` (target delimiter " ");
* tokenization is `HFLM._encode_pair`: trailing spaces of the context move to the continuation, then
  `whole = enc(context + continuation)`, `ctx = enc(context)`, `cont = whole[len(ctx):]`; `enc` is
  `tokenizer.encode(text)` with the tokenizer's default special tokens (lm-eval 0.4.13 `tok_encode` with
  `add_bos_token` unset), except that text already starting with the BOS string gets none;
* an empty context is replaced by the prefix token (BOS, else EOS) unless the continuation starts with it;
* the model reads `(ctx + cont)[-(max_length + 1):][:-1]` (left truncation) and the loglikelihood is the sum of
  fp32 log-softmax at the continuation tokens;
* `acc` = argmax of the logliks == gold; `acc_norm` = argmax of loglik / len(choice) in *characters* (Python
  `len` of the choice string without the delimiter; for per-choice-context items, of that context), first index
  wins ties (numpy argmax).

The fast path runs each distinct context once (left padded, KV cache kept, LM head on its last token only),
then its continuations in one batch on top of the expanded cache, one row per distinct continuation input
(a choice whose input is a prefix of another's reads that row's logits). A one-request-at-a-time reference
path (`reference_loglikelihoods`) is what the tests compare it to.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from diet.errors import DietError
from diet.models import input_device

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalSettings:
    """How multiple-choice evaluation runs. None of these change a score except `limit` (which items) and
    `max_length` (only for requests longer than it)."""

    limit: int | None = None  # first N evaluation items only: a PREVIEW, flagged as such in every result
    batch_size: int = 16  # contexts per forward pass; each context's choices then run together on its KV cache
    max_length: int = 2048  # tokens the model may see; longer requests are truncated from the left like lm-eval


@dataclass(frozen=True)
class TaskResult:
    """One task's scores. `acc`/`acc_norm` are fractions in [0, 1] (lm-eval convention)."""

    task: str
    n: int  # items scored
    total: int  # evaluation items the task has (n < total: a preview)
    acc: float
    acc_norm: float
    metric: str  # the task's primary metric, "acc" or "acc_norm"
    value: float  # that metric's value: what `average` uses
    preview: bool  # True when a limit cut the item list: not comparable with published numbers
    seconds: float
    logliks: tuple[tuple[float, ...], ...] = field(default=(), repr=False)  # per item, per choice (debugging)
    calibration_items: int = 0  # items of the task's file its automatic split used for calibration, not scored
    repeats: int = 0  # scored items that exactly repeat an earlier one (kept, as lm-eval keeps them)

    @property
    def note(self) -> str:
        """What the reader of `n` must know: a preview, items held for calibration, repeats ('' for none)."""
        parts = []
        if self.calibration_items:
            whole = self.total + self.calibration_items
            shown = f"first {self.n} of {self.total}" if self.preview else f"{self.n} of {whole}"
            parts.append(f"{shown} scored{' (preview)' if self.preview else ''}; {self.calibration_items} used for "
                         "calibration — set `split` to choose")
        elif self.preview:
            parts.append(f"preview: first {self.n} items of {self.total}")
        if self.repeats:
            parts.append(f"{self.repeats} exact repeat(s) among the items, each scored")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready summary (without the per-item logliks, which can be large), with the note in words."""
        d = asdict(self)
        d.pop("logliks")
        d["note"] = self.note
        return d


# ----------------------------------------------------------------------------------------------- tokenization


def _prefix_token_id(tokenizer) -> int | None:
    """lm-eval's `prefix_token_id`: BOS, else EOS; it stands in for an empty context."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    """lm-eval 0.4.13 `HFLM.tok_encode(text)`: the tokenizer's default special tokens, none if text starts with BOS."""
    prefix = _prefix_token_id(tokenizer)
    kwargs = {}
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        kwargs["add_special_tokens"] = False
    return tokenizer.encode(text, **kwargs)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids (context, continuation) exactly as lm-eval's `TemplateLM.loglikelihood` builds them."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = _prefix_token_id(tokenizer)
        if prefix is None:
            raise DietError("empty context and the tokenizer has neither a BOS nor an EOS token")
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:  # "Answer: " + "yes" -> "Answer:" + " yes": keeps the word-boundary token of the answer
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


# ------------------------------------------------------------------------------------------------- scoring


def _forward_kwargs(model: torch.nn.Module) -> set[str]:
    """Names `model.forward` accepts (to pass `logits_to_keep` only where it exists)."""
    return set(inspect.signature(model.forward).parameters)


def _checked(tokenizer, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    encoded = []
    for context, continuation in requests:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not ctx or not cont:
            raise DietError(f"request ({context[-40:]!r}, {continuation[:40]!r}) tokenizes to an empty part")
        encoded.append((ctx, cont))
    return encoded


def _score_one(model: torch.nn.Module, ctx: list[int], cont: list[int], max_length: int) -> float:
    """lm-eval's `_loglikelihood_tokens` for one request, verbatim slicing: the obviously-correct path."""
    if len(cont) > max_length:
        raise DietError(f"a continuation of {len(cont)} tokens is longer than max_length={max_length}")
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    ids = torch.tensor([inp], dtype=torch.long, device=input_device(model))
    logits = model(input_ids=ids).logits[0, len(inp) - len(cont):]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(cont, device=logprobs.device)
    return float(logprobs.gather(1, target[:, None]).sum())


@torch.inference_mode()
def reference_loglikelihoods(model: torch.nn.Module, tokenizer, requests: Sequence[tuple[str, str]],
                             max_length: int = 2048) -> list[float]:
    """Loglikelihood of each (context, continuation), one request per forward pass, no cache, no padding."""
    return [_score_one(model, ctx, cont, max_length) for ctx, cont in _checked(tokenizer, requests)]


def _batches(groups: list[tuple[tuple[int, ...], list[int]]], conts: list[list[int]],
             batch_size: int) -> list[list[tuple[tuple[int, ...], list[int]]]]:
    """`batch_size` context groups per batch, longest context first (ties: longest continuation).

    Sorting keeps padding small and puts any out-of-memory error on the first batch, as in lm-eval. Counting
    contexts (not choices) keeps forward passes large: on CPU each pass costs a fixed read of all weights,
    so many small passes are what makes evaluation slow. Memory stays near lm-eval's for the same batch size:
    the continuation pass holds the choices' copies of the KV cache, far smaller per token than the
    [tokens x vocabulary] log-probabilities lm-eval keeps for every position of every sequence."""
    groups = sorted(groups, key=lambda g: (-len(g[0]), -max(len(conts[i]) for i in g[1])))
    return [groups[i: i + batch_size] for i in range(0, len(groups), batch_size)]


def _score_batch(model: torch.nn.Module, batch, conts: list[list[int]], keep_arg: bool) -> dict[int, float]:
    """One batch of context groups: contexts once (left padded), then every continuation on the shared cache.

    Left padding puts every context's last token in the same column, so one `logits_to_keep=1` gives each
    context's prediction of its first continuation token, and every continuation starts at the same cache
    position; explicit position ids make the padding invisible (checked against the reference in the tests)."""
    device = input_device(model)
    n_ctx = [len(ctx) for ctx, _ in batch]
    width = max(n_ctx)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for b, (ctx, _) in enumerate(batch):
        ids[b, width - len(ctx):] = torch.tensor(ctx)
        mask[b, width - len(ctx):] = 1
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if keep_arg else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **extra)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [groups, vocab]: predicts cont[0]

    scores: dict[int, float] = {}
    rows: list[tuple[int, list[int]]] = []  # (group position in batch, continuation tokens fed to the model)
    row_of: dict[int, int] = {}  # request -> the row whose logits score it
    for b, (_, members) in enumerate(batch):
        for r in members:
            scores[r] = float(first[b, conts[r][0]])
        mine: list[int] = []
        for r in sorted((r for r in members if len(conts[r]) > 1), key=lambda r: -len(conts[r])):
            fed = conts[r][:-1]  # the last token is only predicted, never read
            # Causal attention: a row whose input starts with `fed` already holds its logits (" 42" and " 40"
            # both read " 4"), the same sharing lm-eval does for identical context + continuation[:-1].
            row_of[r] = next((k for k in mine if rows[k][1][: len(fed)] == fed), len(rows))
            if row_of[r] == len(rows):
                mine.append(len(rows))
                rows.append((b, fed))
    if not rows:
        return scores

    cache = out.past_key_values
    if cache is None:
        raise DietError(f"{type(model).__name__} returned no KV cache; it cannot be evaluated")
    select = torch.tensor([b for b, _ in rows], device=device)
    cache.batch_select_indices(select)  # each continuation row gets its own copy of its context's cache
    span = max(len(fed) for _, fed in rows)
    cids = torch.zeros(len(rows), span, dtype=torch.long)
    cmask = torch.zeros(len(rows), span, dtype=torch.long)
    for k, (_, fed) in enumerate(rows):
        cids[k, : len(fed)] = torch.tensor(fed)
        cmask[k, : len(fed)] = 1
    cids, cmask = cids.to(device), cmask.to(device)
    starts = torch.tensor([n_ctx[b] for b, _ in rows], device=device)
    positions = starts[:, None] + torch.arange(span, device=device)[None]
    out = model(input_ids=cids, attention_mask=torch.cat([mask[select], cmask], dim=1), position_ids=positions,
                past_key_values=cache, use_cache=True)
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [rows, span, vocab]
    for r, k in row_of.items():
        target = torch.tensor(conts[r][1:], device=logprobs.device)
        scores[r] += float(logprobs[k, : len(target)].gather(1, target[:, None]).sum())
    return scores


def _smaller_batch(size: int, say: Callable[[str], None] | None) -> int:
    """After a CUDA out-of-memory error at `size` contexts per pass: half of it (the rest of the run keeps it),
    said on stderr (or through `say`); at 1 there is nothing left to halve, so the run stops with the way out."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if size <= 1:
        raise DietError("CUDA out of memory even at batch 1: use --device-map auto, a smaller --max-length, or a "
                        "GPU with more free memory")
    smaller = max(1, size // 2)
    (say or (lambda m: print(m, file=sys.stderr)))(
        f"CUDA out of memory at batch {size}: retrying with batch {smaller}")
    return smaller


@torch.inference_mode()
def loglikelihoods(model: torch.nn.Module, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16,
                   max_length: int = 2048, progress: Progress | None = None,
                   say: Callable[[str], None] | None = None) -> list[float]:
    """Loglikelihood of each (context, continuation) request: equal to `reference_loglikelihoods` (fp32 noise).

    Requests whose token context is identical (the choices of one item) share one context pass. Requests that
    would be truncated (context + continuation > max_length + 1 tokens) take the reference path, since their
    truncated contexts differ per choice. `progress(done, total)` counts scored requests. A CUDA out-of-memory
    error halves the batch (down to 1) and retries; `say` (default: stderr) is told."""
    if batch_size < 1:
        raise DietError(f"batch_size must be at least 1, got {batch_size}")
    encoded = _checked(tokenizer, requests)
    total = len(encoded)
    result = [0.0] * total
    groups: dict[tuple[int, ...], list[int]] = {}
    long_ones = []
    for i, (ctx, cont) in enumerate(encoded):
        if len(ctx) + len(cont) > max_length + 1:
            long_ones.append(i)
        else:
            groups.setdefault(tuple(ctx), []).append(i)
    conts = [cont for _, cont in encoded]
    keep_arg = "logits_to_keep" in _forward_kwargs(model)
    done = 0
    pending = [g for batch in _batches(list(groups.items()), conts, batch_size) for g in batch]
    size, start = batch_size, 0
    while start < len(pending):
        batch = pending[start: start + size]
        try:
            scored = _score_batch(model, [(list(c), m) for c, m in batch], conts, keep_arg)
        except torch.cuda.OutOfMemoryError:
            size = _smaller_batch(size, say)
            continue
        for r, value in scored.items():
            result[r] = value
        start += len(batch)
        done += sum(len(m) for _, m in batch)
        if progress:
            progress(done, total)
    for i in long_ones:
        result[i] = _score_one(model, *encoded[i], max_length)
        done += 1
        if progress:
            progress(done, total)
    return result


# ------------------------------------------------------------------------------------------------- tasks


def _norm_lengths(item) -> list[float]:
    """lm-eval's `completion_len`: characters of each `doc_to_choice` entry (contexts for per-choice contexts)."""
    texts = item.contexts if item.contexts is not None else item.choices
    return [float(len(t)) for t in texts]


def choice_scores(item, logliks: Sequence[float], metric: str) -> np.ndarray:
    """An item's per-choice scores as `metric` compares them: the logliks ("acc"), or each divided by its
    choice's length in characters ("acc_norm"); the argmax (first index on ties) is the model's answer."""
    scores = np.asarray(logliks, dtype=np.float64)
    if metric == "acc_norm":
        with np.errstate(divide="ignore", invalid="ignore"):
            return scores / np.array(_norm_lengths(item))
    return scores


def _items(task, settings: EvalSettings) -> tuple:
    if not task.evaluation:
        raise DietError(f"task {task.name!r} has no evaluation items (text-only tasks can only calibrate)")
    if settings.limit is not None and settings.limit < 1:
        raise DietError(f"limit must be at least 1, got {settings.limit}")
    return task.evaluation[: settings.limit] if settings.limit is not None else task.evaluation


def evaluate_task(model: torch.nn.Module, tokenizer, task, settings: EvalSettings = EvalSettings(),
                  progress: Progress | None = None) -> TaskResult:
    """Zero-shot acc and acc_norm of `model` on `task.evaluation` (its first `settings.limit` items).

    `progress(done, total)` counts scored requests (one per choice)."""
    items = _items(task, settings)
    start = time.perf_counter()
    requests, owner = [], []
    for k, item in enumerate(items):
        reqs = item.requests()
        if not 0 <= item.gold < len(reqs):
            raise DietError(f"task {task.name!r} item {k}: gold {item.gold} is not one of {len(reqs)} choices")
        requests += reqs
        owner += [k] * len(reqs)
    lls = loglikelihoods(model, tokenizer, requests, settings.batch_size, settings.max_length, progress)
    per_item: list[list[float]] = [[] for _ in items]
    for k, ll in zip(owner, lls):
        per_item[k].append(ll)
    acc = acc_norm = 0.0
    for item, ll in zip(items, per_item):
        acc += float(np.argmax(choice_scores(item, ll, "acc")) == item.gold)
        acc_norm += float(np.argmax(choice_scores(item, ll, "acc_norm")) == item.gold)
    n = len(items)
    acc, acc_norm = acc / n, acc_norm / n
    if task.metric not in ("acc", "acc_norm"):
        raise DietError(f"task {task.name!r}: unknown metric {task.metric!r} (use acc or acc_norm)")
    return TaskResult(task=task.name, n=n, total=len(task.evaluation), acc=acc, acc_norm=acc_norm,
                      metric=task.metric, value=acc if task.metric == "acc" else acc_norm,
                      preview=n < len(task.evaluation), seconds=time.perf_counter() - start,
                      logliks=tuple(tuple(ll) for ll in per_item),
                      calibration_items=getattr(task, "held_for_calibration", 0),
                      repeats=n - len({(it.context, it.choices, it.gold, it.contexts) for it in items}))


def evaluate_tasks(model: torch.nn.Module, tokenizer, tasks: Sequence, settings: EvalSettings = EvalSettings(),
                   progress: Progress | None = None) -> list[TaskResult]:
    """`evaluate_task` for each task; `progress(done, total)` counts requests over all tasks together."""
    totals = [sum(len(item.requests()) for item in _items(t, settings)) for t in tasks]
    total, offset = sum(totals), 0
    results = []
    for task, n in zip(tasks, totals):
        inner = (lambda d, _t, o=offset: progress(o + d, total)) if progress else None
        results.append(evaluate_task(model, tokenizer, task, settings, inner))
        offset += n
    return results


def average(results: Sequence[TaskResult]) -> float:
    """Unweighted mean over tasks of each task's primary metric (`TaskResult.value`: acc or acc_norm, as the
    task declares), so a big task does not outweigh a small one."""
    if not results:
        raise DietError("no results to average")
    return sum(r.value for r in results) / len(results)


def format_table(results: Sequence[TaskResult]) -> str:
    """Plain-text table for the CLI; the primary metric is starred and previews are marked."""
    lines = [f"{'task':<20} {'n':>6} {'acc':>7} {'acc_norm':>9}  note"]
    for r in results:
        a = f"{r.acc:.4f}" + ("*" if r.metric == "acc" else " ")
        b = f"{r.acc_norm:.4f}" + ("*" if r.metric == "acc_norm" else " ")
        note = f"({r.note})" if r.note else ""
        lines.append(f"{r.task:<20} {r.n:>6} {a:>7} {b:>9}  {note}".rstrip())
    if results:
        any_preview = " (includes previews)" if any(r.preview for r in results) else ""
        lines.append(f"{'average of *':<20} {'':>6} {average(results):.4f}{any_preview}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- perplexity


@torch.inference_mode()
def perplexity(model: torch.nn.Module, tokenizer, texts: Sequence[str], max_length: int = 512,
               batch_size: int = 8) -> float:
    """Token-level perplexity: exp of the mean NLL over every predicted token of every text (texts pooled).

    Each text is encoded without special tokens, cut to its first `max_length - 1` tokens and prefixed with
    the prefix token (BOS, else EOS; lm-eval's rolling-loglikelihood convention), so its first token is scored
    too; without either token the first token is context only. Batches are right padded with an attention mask,
    and padding never enters the mean."""
    prefix = _prefix_token_id(tokenizer)
    head = [prefix] if prefix is not None else []
    seqs = [head + tokenizer.encode(t, add_special_tokens=False)[: max_length - len(head)] for t in texts if t]
    seqs = sorted((s for s in seqs if len(s) > 1), key=len, reverse=True)
    if not seqs:
        raise DietError("perplexity needs at least one text with a token to predict")
    device = input_device(model)
    nll, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i: i + batch_size]
        width = len(chunk[0])
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, s in enumerate(chunk):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
        picked = logprobs.gather(2, ids[:, 1:, None])[..., 0]
        keep = mask[:, 1:].bool()
        nll -= float(picked[keep].double().sum())
        count += int(keep.sum())
    return math.exp(nll / count)


def item_hits(task, result: TaskResult, settings: EvalSettings = EvalSettings()) -> np.ndarray:
    """Per scored item, 1.0 when the task's primary metric picks the gold choice, else 0.0 (their mean is
    `result.value`). Why: two models scored on the same items are compared item by item, so the standard error of
    their difference is the paired one, much smaller than two independent means' (bench/second_model.py)."""
    items = _items(task, settings)
    if len(items) != len(result.logliks):
        raise DietError(f"{task.name}: {len(result.logliks)} scored items, but these settings give {len(items)}")
    out = np.zeros(len(items))
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, (item, ll) in enumerate(zip(items, result.logliks, strict=True)):
            scores = np.array(ll) / (np.array(_norm_lengths(item)) if result.metric == "acc_norm" else 1.0)
            out[k] = float(np.argmax(scores) == item.gold)
    return out
