"""Evaluation scores exactly what lm-evaluation-harness scores, and the fast path changes nothing but speed.

Tiny random models (tests/tiny.py) and the tiny character tokenizer: offline, a few seconds in all.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch
from tokenizers import processors

from diet import evaluate as ev
from diet.errors import DietError
from diet.evaluate import (
    EvalSettings,
    average,
    encode_pair,
    evaluate_task,
    evaluate_tasks,
    format_table,
    loglikelihoods,
    perplexity,
    reference_loglikelihoods,
)
from tests.tiny import tiny_model, tiny_tokenizer

try:
    from diet.tasks import MCItem, Task
except ImportError:  # diet/tasks.py not there yet: the same contract (docs/ARCHITECTURE.md), minimal

    @dataclass(frozen=True)
    class MCItem:  # type: ignore[no-redef]
        context: str
        choices: tuple[str, ...]
        gold: int
        contexts: tuple[str, ...] | None = None

        def requests(self) -> list[tuple[str, str]]:
            if self.contexts is not None:
                return [(c, " " + self.choices[0]) for c in self.contexts]
            return [(self.context, " " + c) for c in self.choices]

    @dataclass(frozen=True)
    class Task:  # type: ignore[no-redef]
        name: str
        description: str
        source: str
        metric: str
        calibration: tuple[str, ...]
        evaluation: tuple[MCItem, ...]


def make_task(items, metric="acc", name="t") -> Task:
    return Task(name=name, description="", source="offline", metric=metric, calibration=(), evaluation=tuple(items))


def random_items(seed: int, n: int = 14) -> list[MCItem]:
    """Contexts of 0..40 chars (some with trailing spaces, one empty), 1..5 choices of 1..9 chars."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return "".join(rng.choice("abcdefgh ij,\n") for _ in range(k))

    items = []
    for i in range(n):
        context = "" if i == 0 else "Q" + text(rng.randint(0, 40)) + rng.choice(["", " ", "  "])
        choices = tuple("x" + text(rng.randint(0, 8)) for _ in range(rng.randint(1, 5)))
        items.append(MCItem(context=context, choices=choices, gold=rng.randrange(len(choices))))
    return items


def straightforward(model, tokenizer, items) -> list[list[float]]:
    """Independent scoring: one full forward of context + continuation tokens per choice, no padding, no cache."""
    out = []
    with torch.no_grad():
        for item in items:
            row = []
            for context, continuation in item.requests():
                ctx, cont = encode_pair(tokenizer, context, continuation)
                logits = model(torch.tensor([ctx + cont])).logits[0]
                logprobs = torch.log_softmax(logits.double(), dim=-1)
                row.append(sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
            out.append(row)
    return out


def bos_tokenizer():
    """The tiny tokenizer, but adding BOS by default like Llama/Gemma tokenizers do."""
    tok = tiny_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    assert tok.encode("ab")[0] == 1
    return tok


# ------------------------------------------------------------------------------------------ loglikelihoods


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_batched_cached_scores_equal_straightforward_forward(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    items = random_items(seed=1)
    assert max(len(i.context) for i in items) > 16, "must exceed gemma2's tiny sliding window"
    result = evaluate_task(model, tok, make_task(items), EvalSettings(batch_size=5))
    expected = straightforward(model, tok, items)
    assert [len(r) for r in result.logliks] == [len(r) for r in expected]
    for got, want in zip(result.logliks, expected):
        assert got == pytest.approx(want, abs=1e-4)


def test_choices_sharing_a_prefix_share_one_row_exactly():
    """" 42", " 40" and " 4" read the same tokens: one continuation row serves them all, exactly."""
    model, tok = tiny_model("gemma2"), tiny_tokenizer()
    items = [MCItem(context="Q: 40 + 2 =", choices=("42", "40", "4", "402", "5", "41x"), gold=0),
             MCItem(context="Q: same prefix but longer context here", choices=("ab", "abc", "abd", "b"), gold=1)]
    result = evaluate_task(model, tok, make_task(items), EvalSettings(batch_size=2))
    for got, want in zip(result.logliks, straightforward(model, tok, items)):
        assert got == pytest.approx(want, abs=1e-4)


def test_batch_size_and_shared_contexts_change_nothing():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    items = random_items(seed=2)
    requests = [r for item in items for r in item.requests()]
    reference = reference_loglikelihoods(model, tok, requests)
    for batch_size in (1, 3, 64):
        assert loglikelihoods(model, tok, requests, batch_size=batch_size) == pytest.approx(reference, abs=1e-4)


def test_truncation_from_the_left_matches_reference():
    model, tok = tiny_model("gemma2"), tiny_tokenizer()
    items = random_items(seed=3)
    requests = [r for item in items for r in item.requests()]
    full = reference_loglikelihoods(model, tok, requests, max_length=100)
    cut = reference_loglikelihoods(model, tok, requests, max_length=20)
    assert cut != pytest.approx(full, abs=1e-4), "max_length=20 must actually truncate some requests"
    assert loglikelihoods(model, tok, requests, batch_size=4, max_length=20) == pytest.approx(cut, abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("with_bos", [False, True])
def test_equals_lm_eval_hflm(family, with_bos):
    """The real thing: lm-eval's HFLM.loglikelihood on the same in-memory model (skipped without lm_eval)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = tiny_model(family)
    tok = bos_tokenizer() if with_bos else tiny_tokenizer()
    requests = [r for item in random_items(seed=4) for r in item.requests()]
    hflm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=30)
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    theirs = [ll for ll, _ in hflm.loglikelihood(instances, disable_tqdm=True)]
    ours = loglikelihoods(model, tok, requests, batch_size=6, max_length=30)
    assert ours == pytest.approx(theirs, abs=1e-4)


# ------------------------------------------------------------------------------------------ tokenization


def test_trailing_space_moves_to_the_continuation():
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "Answer: ", " yes")
    assert ctx == tok.encode("Answer:") and cont == tok.encode("  yes")
    model = tiny_model("llama")
    moved = loglikelihoods(model, tok, [("Answer: ", " yes")])[0]
    naive = reference_loglikelihoods(model, tok, [("Answer:", "  yes")])[0]
    assert moved == pytest.approx(naive, abs=1e-5)
    wrong = straightforward_pair(model, tok.encode("Answer: "), tok.encode(" yes"))
    assert abs(moved - wrong) > 1e-3, "scoring without the move must give a different number"


def straightforward_pair(model, ctx, cont) -> float:
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
    return sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_empty_context_uses_the_prefix_token():
    tok = tiny_tokenizer()
    assert encode_pair(tok, "", " ab") == ([tok.bos_token_id], tok.encode(" ab", add_special_tokens=False))
    assert encode_pair(tok, "", "<s> ab") == ([tok.bos_token_id], tok.encode(" ab"))  # BOS already there
    tok.bos_token = None
    assert encode_pair(tok, "", " ab")[0] == [tok.eos_token_id]


def test_bos_adding_tokenizer_keeps_bos_in_the_context_only():
    tok = bos_tokenizer()
    ctx, cont = encode_pair(tok, "Q: a", " b")
    assert ctx == [1] + tok.encode("Q: a", add_special_tokens=False)
    assert cont == tok.encode(" b", add_special_tokens=False)
    ctx, _ = encode_pair(tok, "<s>Q: a", " b")  # text that already starts with BOS gets no second one
    assert ctx.count(1) == 1


def test_whitespace_only_context_is_a_clear_error():
    with pytest.raises(DietError, match="empty"):
        loglikelihoods(tiny_model("llama"), tiny_tokenizer(), [("  ", " a")])


# ------------------------------------------------------------------------------------------ metrics


def test_acc_and_acc_norm_by_hand(monkeypatch):
    """acc: argmax of the sums; acc_norm: argmax of sum / characters of the choice (no delimiter, not bytes)."""
    cases = [  # item, its logliks, acc right?, acc_norm right?
        (MCItem(context="c1", choices=("a", "bbbbbbbb"), gold=1), [-2.0, -3.0], False, True),  # -2/1 < -3/8
        (MCItem(context="c2", choices=("cc", "d", "eeee"), gold=0), [-1.0, -4.0, -5.0], True, True),
        # /len: -1.0 < -0.93 -> 1; with the delimiter counted (/len+1) it would be 0
        (MCItem(context="c3", choices=("ab", "abcdefg"), gold=1), [-2.0, -6.5], False, True),
        # characters: -1.1 < -1.0 -> 1; bytes ("é" is 2 bytes) would give -0.55 > -1.0 -> 0
        (MCItem(context="c4", choices=("éé", "abc"), gold=1), [-2.2, -3.0], False, True),
        # per-choice contexts: lm-eval divides by the length of each context (-3/8 > -2/1 -> 0)
        (MCItem(context="", choices=("suffix",), gold=1, contexts=("xxxxxxxx", "y")), [-3.0, -2.0], True, False),
    ]
    fixed = [ll for _, lls, _, _ in cases for ll in lls]
    monkeypatch.setattr(ev, "loglikelihoods", lambda *a, **k: list(fixed))
    r = evaluate_task(None, None, make_task([c[0] for c in cases], metric="acc_norm"))
    assert r.acc == pytest.approx(sum(c[2] for c in cases) / len(cases))  # 2/5
    assert r.acc_norm == pytest.approx(sum(c[3] for c in cases) / len(cases))  # 4/5
    assert r.acc != r.acc_norm
    assert [x for row in r.logliks for x in row] == fixed
    assert r.metric == "acc_norm" and r.value == r.acc_norm
    monkeypatch.setattr(ev, "loglikelihoods", lambda *a, **k: list(fixed[:2]))
    r1 = evaluate_task(None, None, make_task([cases[0][0]], metric="acc"))
    assert (r1.acc, r1.acc_norm, r1.value) == (0.0, 1.0, 0.0)


def test_ties_go_to_the_first_choice_like_numpy_argmax(monkeypatch):
    monkeypatch.setattr(ev, "loglikelihoods", lambda *a, **k: [-1.0, -1.0])
    r = evaluate_task(None, None, make_task([MCItem(context="c", choices=("a", "b"), gold=0)]))
    assert r.acc == 1.0 and r.acc_norm == 1.0


def test_limit_marks_a_preview_and_counts_items():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    task = make_task(random_items(seed=5, n=5))
    part = evaluate_task(model, tok, task, EvalSettings(limit=2))
    whole = evaluate_task(model, tok, task, EvalSettings(limit=None))
    assert (part.n, part.total, part.preview) == (2, 5, True)
    assert (whole.n, whole.preview) == (5, False)
    assert evaluate_task(model, tok, task, EvalSettings(limit=50)).preview is False
    assert len(part.logliks) == 2
    for got, want in zip(part.logliks, whole.logliks):
        assert got == pytest.approx(want, abs=1e-5)
    table = format_table([part, whole])
    assert "(preview: first 2 items of 5)" in table
    assert table.count("preview: first") == 1
    assert part.to_dict()["preview"] is True and "logliks" not in part.to_dict()


def test_progress_average_and_errors():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    a, b = make_task(random_items(6, n=3), name="a"), make_task(random_items(7, n=2), metric="acc_norm", name="b")
    calls = []
    results = evaluate_tasks(model, tok, [a, b], EvalSettings(batch_size=2), progress=lambda d, t: calls.append((d, t)))
    total = sum(len(i.requests()) for t in (a, b) for i in t.evaluation)
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert average(results) == pytest.approx((results[0].acc + results[1].acc_norm) / 2)
    with pytest.raises(DietError):
        evaluate_task(model, tok, make_task([]))
    with pytest.raises(DietError, match="gold"):
        evaluate_task(model, tok, make_task([MCItem(context="c", choices=("a",), gold=1)]))
    with pytest.raises(DietError):
        average([])


# ------------------------------------------------------------------------------------------ perplexity


def test_perplexity_equals_hand_computation():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    texts = ["hello world", "a much longer text, with commas, that gets cut", "x", ""]
    max_length = 20
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = [tok.bos_token_id] + tok.encode(t, add_special_tokens=False)[: max_length - 1]
            if len(ids) < 2:
                continue
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            nll -= sum(float(logprobs[j, ids[j + 1]]) for j in range(len(ids) - 1))
            count += len(ids) - 1
    assert count == 11 + 19 + 1
    got = perplexity(model, tok, texts, max_length=max_length, batch_size=2)
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)
    with pytest.raises(DietError):
        perplexity(model, tok, [""])
