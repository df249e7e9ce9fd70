"""Generate the offline general-text corpus (assets/general/generated.jsonl) with the embedded model, once.

    flock /tmp/diet-torch.lock env PYTHONPATH=. .venv/bin/python assets/general/build.py

SmolLM2-135M-Instruct answers 160 varied short prompts (40 everyday topics × 4 forms: paragraph, story, explanation
for a child, news report; diet.general.corpus_prompts) by seeded sampling (temperature 0.7, top-p 0.9, repetition
penalty 1.1, up to 160 new tokens). Answers shorter than 100 characters are dropped. The file is shipped, so
results do not depend on re-running this script (sampling is only reproducible on the same torch build).
"""

import json
import sys
from pathlib import Path

import torch

from diet.general import ASSET, corpus_prompts, generate_corpus
from diet.models import load_model
from diet.settings import ModelSpec


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
