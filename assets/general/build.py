"""Generate the offline general-text corpus (assets/general/generated.jsonl) with the embedded model, once.

    flock /tmp/diet-torch.lock .venv/bin/python assets/general/build.py

SmolLM2-135M-Instruct answers 160 varied short prompts (40 everyday topics × 4 forms: paragraph, story, explanation
for a child, news report; corpus_prompts below) by seeded sampling (temperature 0.7, top-p 0.9, repetition
penalty 1.1, up to 160 new tokens). Answers shorter than 100 characters are dropped. The file is shipped, so
results do not depend on re-running this script (sampling is only reproducible on the same torch build).
"""

import json
import sys
from pathlib import Path

import torch

from diet.general import ASSET
from diet.models import load_model
from diet.settings import ModelSpec

TOPICS = (
    "the history of bread", "how bicycles work", "a rainy afternoon in a small town", "the life of a butterfly",
    "why the sky is blue", "moving to a new house", "growing tomatoes", "the printing press", "a day at the beach",
    "the game of chess", "volcanoes", "ocean tides", "saving money", "learning a new language", "a long train journey",
    "the water cycle", "honey bees", "the first moon landing", "making pancakes", "a busy market",
    "winter in the mountains", "the importance of sleep", "how computers store data", "a lost cat",
    "the first day of school", "recycling", "the Roman Empire", "jazz music", "a thunderstorm", "photosynthesis",
    "a birthday party", "how airplanes fly", "the desert at night", "a friendly robot", "gardening in spring",
    "the human heart", "an old lighthouse", "public libraries", "coffee", "a football match",
)
FORMS = (
    "Write a short paragraph about {}.",
    "Tell a short story about {}.",
    "Explain {} to a curious child.",
    "Write a short news report about {}.",
)


def corpus_prompts() -> list[str]:
    """Topics × forms: 160 varied short prompts (no task of the offline suite is asked about)."""
    return [form.format(topic) for topic in TOPICS for form in FORMS]


def generate_corpus(model, tokenizer, prompts: list[str], seed: int = 0, max_new_tokens: int = 160,
                    batch_size: int = 16, temperature: float = 0.7, top_p: float = 0.9) -> list[dict]:
    """Sample one answer per prompt with the chat template (seeded); records keep prompt, text and settings."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    settings = {"seed": seed, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                "repetition_penalty": 1.1}
    records = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in batch]
        enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p,
                                 repetition_penalty=1.1, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        for prompt, ids in zip(batch, out[:, enc["input_ids"].shape[1]:], strict=True):
            text = " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())
            records.append({"prompt": prompt, "text": text, **settings})
    return records


def main() -> None:
    torch.set_num_threads(2)
    lm = load_model(ModelSpec(device="cpu"), say=lambda m: print(m, file=sys.stderr))
    records = [r for r in generate_corpus(lm.model, lm.tokenizer, corpus_prompts()) if len(r["text"]) >= 100]
    for r in records:
        r["model"] = lm.spec.name
    Path(ASSET).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {len(records)} texts to {ASSET}", file=sys.stderr)


if __name__ == "__main__":
    main()
