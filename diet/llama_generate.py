"""Generation from an exported GGUF file through llama.cpp, in a child process.

Why a child process: llama.cpp aborts or segfaults on some CPUs and some files, and a crash inside our own process
would cost the user the whole run (the app's server, the CLI's other answer). The child streams one JSON line per
token on stdout; the parent keeps every line it read, so a crash, or Stop (the parent ends the child), keeps the
partial answer, said in the note. Run as `python -m diet.llama_generate` with the request as JSON on stdin.

Why not `diet.isolate.run_isolated`: that returns one result at the end, and an answer must stream. The child
opens the file through `diet.llamacpp.open_llama` (weight repacking off where llama.cpp would reach its crashing
AMX kernels) and its exit is worded by `diet.isolate.describe_exit`, as for the export's speed measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from diet.errors import DietError
from diet.generate import RAW_FALLBACK, GenerateSettings, Generation

LLAMA_MISSING = "llama.cpp (llama-cpp-python) is not installed here: `make llama-cpp` installs it"


def find_gguf(path: str | Path) -> Path:
    """The .gguf file itself, or the single one in an exported folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise DietError(f"{path} holds {len(found)} .gguf files: name the one to run")
        return found[0]
    if path.suffix != ".gguf" or not path.is_file():
        raise DietError(f"no GGUF file at {path}")
    return path


def generate_gguf(path: str | Path, prompt: str, settings: GenerateSettings = GenerateSettings(),
                  label: str = "gguf", on_update: Callable[[Generation], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, threads: int | None = None) -> Generation:
    """Answer `prompt` with llama.cpp in a child process; the same contract as `diet.generate.generate`
    (token ids are not reported: llama.cpp's vocabulary numbering is its own)."""
    settings.check()
    if not prompt.strip():
        raise DietError("the prompt is empty: type something for the model to answer")
    gguf = find_gguf(path)
    request = {"path": str(gguf), "prompt": prompt, "settings": asdict(settings), "threads": threads}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "diet.llama_generate"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    child.stdin.write(json.dumps(request))
    child.stdin.close()
    pieces: list[str] = []
    head: dict = {}
    first = 0.0
    finish, note = "", ""

    def state(done: str = "") -> Generation:
        now = time.perf_counter()
        n = len(pieces)
        return Generation(label=label, prompt=prompt, text="".join(pieces), token_ids=(), new_tokens=n,
                          prompt_tokens=int(head.get("prompt_tokens", 0)), chat=bool(head.get("chat", False)),
                          ttft=first - start if n else 0.0, seconds=now - start,
                          tokens_per_second=(n - 1) / (now - first) if n > 1 and now > first else 0.0,
                          finish=done, note="; ".join(x for x in (head.get("note", ""), note) if x),
                          engine="llama.cpp")

    for line in child.stdout:
        msg = json.loads(line)
        if "error" in msg:
            child.wait()
            raise DietError(msg["error"])
        if "prompt_tokens" in msg:
            head = msg
        elif "piece" in msg:
            if not pieces:
                first = time.perf_counter()
            pieces.append(msg["piece"])
            if on_update:
                on_update(state())
        elif "finish" in msg:
            finish = msg["finish"]
        if should_stop and should_stop():
            child.kill()
            finish = "stopped"
            break
    rc = child.wait()
    if not finish:
        err = (child.stderr.read() or "").strip().splitlines()
        finish = "stopped" if pieces else "crashed"
        from diet.isolate import describe_exit

        why = f"llama.cpp {describe_exit(rc)}" + (f" ({err[-1][:120]})" if err else "")
        note = f"{why}; the {len(pieces)} token(s) it wrote are kept" if pieces else why
        if not pieces:
            raise DietError(note)
    result = state(finish)
    if on_update:
        on_update(result)
    return result


def _run(request: dict) -> None:
    """The child's side: load the file, answer, one JSON line per token."""
    from diet.llamacpp import open_llama

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print(json.dumps({"error": LLAMA_MISSING}), flush=True)
        return
    s = GenerateSettings(**request["settings"])
    threads = request.get("threads") or max(1, os.cpu_count() or 1)
    llm = open_llama(request["path"], n_ctx=0, n_threads=threads, verbose=False, seed=s.seed)
    limit = llm.n_ctx()
    template = llm.metadata.get("tokenizer.chat_template")
    chat = bool(s.chat and template)
    messages = [{"role": "user", "content": request["prompt"]}]
    if chat:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        text = Jinja2ChatFormatter(template, eos_token="", bos_token="").__call__(messages=messages).prompt
    else:
        text = request["prompt"]
    n_prompt = len(llm.tokenize(text.encode(), add_bos=not chat, special=True))
    if n_prompt >= limit:
        print(json.dumps({"error": f"the prompt is {n_prompt:,} tokens but the model's context is {limit:,} "
                                   "tokens: shorten it so there is room for an answer"}), flush=True)
        return
    max_new = min(s.max_new_tokens, limit - n_prompt)
    notes = [RAW_FALLBACK] if s.chat and not chat else []
    if max_new < s.max_new_tokens:
        notes.append(f"max new tokens shortened to {max_new} (context {limit:,})")
    print(json.dumps({"prompt_tokens": n_prompt, "chat": chat, "note": "; ".join(notes)}), flush=True)
    finish = "length"
    for chunk in llm.create_completion(text, max_tokens=max_new, temperature=s.temperature, top_p=s.top_p,
                                       top_k=0 if s.temperature else 40, stream=True, seed=s.seed):
        choice = chunk["choices"][0]
        if choice["text"]:
            print(json.dumps({"piece": choice["text"]}), flush=True)
        if choice.get("finish_reason"):
            finish = "eos" if choice["finish_reason"] == "stop" else "length"
    print(json.dumps({"finish": finish}), flush=True)


if __name__ == "__main__":
    _run(json.loads(sys.stdin.read()))
