"""Text generation for people: what a (pruned) model says to a prompt, streamed token by token.

Why `model.generate` with a streamer and not our own decoding loop: the promise is that greedy output equals
`model.generate(do_sample=False)` token for token, and the surest way to keep it across transformers versions is to
run that very function. Its streamer hands us each new token as it is chosen (`on_update` gets the partial
answer), and a stopping criterion reads `should_stop` between tokens, so a stopped generation returns what it
produced so far instead of raising.

Timing: `ttft` (time to first token) runs from the call to the first new token, so it includes the prompt's
forward pass; `tokens_per_second` is the decode rate after it, (tokens − 1) ÷ (end − first token), the figure a
reader of a chat window feels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from diet.errors import DietError

RAW_FALLBACK = "the model has no chat template: the prompt was continued as raw text"


@dataclass(frozen=True)
class GenerateSettings:
    """How a prompt is answered. The defaults are greedy, so two runs (and dense vs pruned) are comparable."""

    max_new_tokens: int = 64  # tokens generated at most (fewer when the model ends its answer)
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples with this temperature
    top_p: float = 1.0  # sampling only: keep the smallest set of tokens whose probability reaches top_p
    seed: int = 0  # sampling only: torch's seed before generating, so a sampled answer can be repeated
    chat: bool = True  # wrap the prompt in the model's chat template (raw continuation when off or absent)

    def check(self) -> None:
        """One clear line for each setting that cannot run."""
        if self.max_new_tokens <= 0:
            raise DietError(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise DietError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise DietError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """One answer, complete or partial (`finish` == "" while it is still being generated)."""

    label: str  # which model answered, e.g. "dense" or "pruned"
    prompt: str  # the prompt as the user typed it
    text: str  # the answer so far, decoded without special tokens
    token_ids: tuple[int, ...]  # the new tokens (the prompt's are not repeated here; empty for llama.cpp)
    new_tokens: int  # how many tokens were generated
    prompt_tokens: int  # tokens the model read before answering (chat template included)
    chat: bool  # True when the chat template was applied
    ttft: float  # seconds to the first new token (prompt pass included); 0 before it
    seconds: float  # seconds so far
    tokens_per_second: float  # decode rate after the first token (0 with fewer than two tokens)
    finish: str = ""  # "eos" (the model ended), "length" (max new tokens), "stopped" (Stop), "" while running
    note: str = ""  # what the reader must know (chat template missing, max new tokens shortened, ...)
    engine: str = "transformers"  # what ran it: "transformers" or "llama.cpp"

    @property
    def done(self) -> bool:
        return bool(self.finish)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        return d


def context_limit(model) -> int | None:
    """Tokens the model can attend to (its config's `max_position_embeddings`); None when the config lacks it."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if value else None


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, prompt: str, chat: bool) -> tuple[list[int], bool, str]:
    """(token ids, chat applied, note): the chat template's user turn plus the assistant's start when `chat` and
    the tokenizer has a template; else the raw prompt with the tokenizer's default special tokens (BOS)."""
    if not prompt.strip():
        raise DietError("the prompt is empty: type something for the model to answer")
    if chat and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), True, ""
    return list(tokenizer(prompt)["input_ids"]), False, RAW_FALLBACK if chat else ""


def check_room(n_prompt: int, settings: GenerateSettings, limit: int | None) -> tuple[GenerateSettings, str]:
    """Refuse a prompt that fills the context; shorten max new tokens to what is left (and say so)."""
    if limit is None:
        return settings, ""
    if n_prompt >= limit:
        raise DietError(f"the prompt is {n_prompt:,} tokens but the model's context is {limit:,} tokens: "
                        "shorten it so there is room for an answer")
    room = limit - n_prompt
    if settings.max_new_tokens > room:
        return replace(settings, max_new_tokens=room), f"max new tokens shortened to {room} (context {limit:,})"
    return settings, ""


class _Stream:
    """transformers' streamer protocol (`put` / `end`): collects the new tokens and reports each one."""

    def __init__(self, on_token: Callable[[list[int]], None]):
        self.on_token = on_token
        self.ids: list[int] = []
        self.first = 0.0
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() puts the prompt first
            self._prompt_seen = True
            return
        new = [int(t) for t in value.reshape(-1).tolist()]
        if not self.ids:
            self.first = time.perf_counter()
        self.ids += new
        self.on_token(self.ids)

    def end(self) -> None:
        pass


class _StopWhenAsked:
    """A stopping criterion that ends generation between two tokens when the user pressed Stop."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop
        self.stopped = False

    def __call__(self, input_ids, scores, **kwargs):
        self.stopped = self.stopped or bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def stable_text(tokenizer, ids: list[int]) -> str:
    """The decoded answer without a trailing half character (a multi-byte character split over tokens)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text.rstrip("\ufffd")


@torch.inference_mode()
def generate(model, tokenizer, prompt: str, settings: GenerateSettings = GenerateSettings(), label: str = "model",
             on_update: Callable[[Generation], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Generation:
    """Answer `prompt`, calling `on_update` with the partial answer after every new token.

    Greedy (temperature 0) is `model.generate(input_ids, do_sample=False, max_new_tokens=…)` itself; `should_stop`
    is read between tokens, and a stop returns the answer so far with finish == "stopped"."""
    from transformers import StoppingCriteriaList

    from diet.models import input_device

    settings.check()
    ids, chat, note = prompt_ids(tokenizer, prompt, settings.chat)
    settings, room_note = check_room(len(ids), settings, context_limit(model))
    note = "; ".join(n for n in (note, room_note) if n)
    start = time.perf_counter()
    base = Generation(label=label, prompt=prompt, text="", token_ids=(), new_tokens=0, prompt_tokens=len(ids),
                      chat=chat, ttft=0.0, seconds=0.0, tokens_per_second=0.0, note=note)

    def state(new: list[int], finish: str = "") -> Generation:
        now = time.perf_counter()
        ttft = stream.first - start if new else 0.0
        rate = (len(new) - 1) / (now - stream.first) if len(new) > 1 and now > stream.first else 0.0
        text = tokenizer.decode(new, skip_special_tokens=True) if finish else stable_text(tokenizer, new)
        return replace(base, text=text, token_ids=tuple(new), new_tokens=len(new), ttft=ttft, seconds=now - start,
                       tokens_per_second=rate, finish=finish)

    stream = _Stream(lambda new: on_update(state(new)) if on_update else None)
    stop = _StopWhenAsked(should_stop or (lambda: False))
    sampling = {} if settings.greedy else {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
    if not settings.greedy:
        torch.manual_seed(settings.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(_eos_ids(model, tokenizer) or {0})
    input_ids = torch.tensor([ids], dtype=torch.long, device=input_device(model))
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=not settings.greedy,
                         max_new_tokens=settings.max_new_tokens, streamer=stream, pad_token_id=pad,
                         stopping_criteria=StoppingCriteriaList([stop]), **sampling)
    new = [int(t) for t in out[0, len(ids):].tolist()]
    finish = "stopped" if stop.stopped else "eos" if new and new[-1] in _eos_ids(model, tokenizer) else "length"
    result = state(new, finish)
    if on_update:
        on_update(result)
    return result


CARD_TOKENS = 48  # new tokens of each sample answer in a model card (greedy)


def sample_answers(model, tokenizer, prompts, max_new_tokens: int = CARD_TOKENS) -> list[str]:
    """Greedy answers (chat template where the tokenizer has one) to each prompt: the model card's samples."""
    settings = GenerateSettings(max_new_tokens=max_new_tokens)
    return [generate(model, tokenizer, p, settings).text for p in prompts]
