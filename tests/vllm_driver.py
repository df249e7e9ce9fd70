"""Serve an exported folder with vLLM's offline `LLM` API and write greedy tokens + log-probabilities as JSON.

Run with the separate vLLM environment (`make vllm-env`), never the main one:

    .venv-vllm/bin/python tests/vllm_driver.py FOLDER PROMPTS.json OUT.json [NEW_TOKENS]

PROMPTS.json is a list of token-id lists (the main environment's tokenizer made them, so both sides start from the
same ids). This file imports vLLM only: no `diet`, no project code. vLLM spawns its engine in a child process, hence
the `__main__` guard.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    folder, prompts_path, out_path = sys.argv[1:4]
    new_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    prompts = json.load(open(prompts_path))
    t0 = time.perf_counter()
    llm = LLM(model=folder, trust_remote_code=True, dtype="float32", enforce_eager=True, max_model_len=512,
              seed=0)
    loaded = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, logprobs=5)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params)
    arch = llm.llm_engine.model_config.architectures
    rows = []
    for o in outs:
        c = o.outputs[0]
        rows.append({"tokens": list(c.token_ids),
                     "logprobs": [{str(t): float(lp.logprob) for t, lp in step.items()} for step in c.logprobs]})
    json.dump({"architectures": list(arch), "load_seconds": loaded, "seconds": time.perf_counter() - t0,
               "rows": rows}, open(out_path, "w"))


if __name__ == "__main__":
    main()
