"""What the (pruned) model says: the generation engine, `diet generate`, and the items pruning changed.

Tiny random models (tests/tiny.py): exactness against `model.generate`, streaming and Stop, the bad-input lines;
the changed items' counts against the accuracies they come from; the CLI on a saved tiny model folder.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from diet.changed import BROKEN, FIXED, changed_items, csv_text, task_changes
from diet.errors import DietError
from diet.evaluate import EvalSettings, TaskResult, evaluate_tasks
from diet.generate import RAW_FALLBACK, GenerateSettings, generate
from diet.taskdata import MCItem, Task
from tests.tiny import tiny_model, tiny_tokenizer

PROMPT = "Question: what is 2 + 3?\nAnswer:"
CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}")


def loud_mlp(model):
    """The tiny model with its MLP weights scaled up: at init the MLP barely moves the logits, so pruning it would
    change no answer and the changed-items tests would have nothing to count."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp." in name:
                p.mul_(20)
    return model


def reference(model, tok, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    return model.generate(ids, do_sample=False, max_new_tokens=n)[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2"])
def test_greedy_equals_model_generate_token_for_token(family):
    model, tok = tiny_model(family, seed=3), tiny_tokenizer()
    g = generate(model, tok, PROMPT, GenerateSettings(max_new_tokens=30, chat=False))
    want = reference(model, tok, PROMPT, 30)
    assert list(g.token_ids) == want and g.new_tokens == len(want)
    assert g.text == tok.decode(want, skip_special_tokens=True)
    assert g.finish in ("eos", "length") and g.note == "" and g.chat is False
    assert g.ttft > 0 and g.seconds >= g.ttft


def test_streaming_reports_each_token_before_the_end():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    seen = []
    g = generate(model, tok, PROMPT, GenerateSettings(max_new_tokens=12, chat=False), on_update=seen.append)
    partial = [s for s in seen if not s.done]
    assert [s.new_tokens for s in partial] == list(range(1, g.new_tokens + 1))
    assert all(g.text.startswith(s.text) for s in partial)
    assert seen[-1] == g and g.done


def test_stop_keeps_what_was_generated():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    seen = []
    g = generate(model, tok, PROMPT, GenerateSettings(max_new_tokens=40, chat=False), on_update=seen.append,
                 should_stop=lambda: len(seen) >= 5)
    assert g.finish == "stopped"
    assert 5 <= g.new_tokens < 40
    assert list(g.token_ids) == reference(model, tok, PROMPT, 40)[: g.new_tokens]


def test_sampling_repeats_with_its_seed_and_differs_from_greedy():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    s = GenerateSettings(max_new_tokens=20, temperature=1.5, top_p=0.95, seed=7, chat=False)
    a, b = generate(model, tok, PROMPT, s), generate(model, tok, PROMPT, s)
    assert a.token_ids == b.token_ids
    assert a.token_ids != generate(model, tok, PROMPT, GenerateSettings(max_new_tokens=20, chat=False)).token_ids


def test_chat_template_is_applied_where_there_is_one_and_raw_is_said_otherwise():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    raw = generate(model, tok, PROMPT, GenerateSettings(max_new_tokens=5, chat=True))
    assert raw.chat is False and raw.note == RAW_FALLBACK and raw.prompt_tokens == len(PROMPT)
    tok.chat_template = CHAT
    chat = generate(model, tok, PROMPT, GenerateSettings(max_new_tokens=5, chat=True))
    wrapped = f"<user>{PROMPT}\n<a>"
    assert chat.chat is True and chat.note == "" and chat.prompt_tokens == len(wrapped)
    assert list(chat.token_ids) == reference(model, tok, wrapped, 5)[: chat.new_tokens]


@pytest.mark.parametrize("prompt, settings, match", [
    ("   ", GenerateSettings(), "the prompt is empty"),
    ("x" * 128, GenerateSettings(), "the prompt is 128 tokens but the model's context is 128 tokens"),
    (PROMPT, GenerateSettings(max_new_tokens=0), "max new tokens must be at least 1, got 0"),
    (PROMPT, GenerateSettings(max_new_tokens=-3), "max new tokens must be at least 1, got -3"),
    (PROMPT, GenerateSettings(temperature=-1), "temperature must be 0"),
    (PROMPT, GenerateSettings(top_p=0), "top-p must be in"),
])
def test_bad_input_is_one_clear_line(prompt, settings, match):
    with pytest.raises(DietError, match=match):
        generate(tiny_model("llama"), tiny_tokenizer(), prompt, settings)


def test_max_new_tokens_is_shortened_to_the_context_left_and_said():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    g = generate(model, tok, "x" * 120, GenerateSettings(max_new_tokens=50, chat=False))
    assert "max new tokens shortened to 8 (context 128)" in g.note
    assert g.new_tokens <= 8


# --------------------------------------------------------------------------------------------- changed items


def make_task(items, metric="acc", name="t") -> Task:
    return Task(name=name, description="", source="test", metric=metric, calibration=("a",), evaluation=tuple(items))


def result(task, logliks) -> TaskResult:
    scores = [np.argmax(np.asarray(ll) / (np.array([len(c) for c in it.choices]) if task.metric == "acc_norm"
                                          else 1.0)) for it, ll in zip(task.evaluation, logliks)]
    value = float(np.mean([s == it.gold for s, it in zip(scores, task.evaluation)]))
    return TaskResult(task.name, len(logliks), len(task.evaluation), value, value, task.metric, value, False, 0.0,
                      tuple(tuple(x) for x in logliks))


def test_changed_items_normalise_as_the_metric_does():
    items = [MCItem("q0", ("a", "bbbb"), 1), MCItem("q1", ("a", "bbbb"), 0), MCItem("q2", ("a", "bb"), 0)]
    dense = [(-2.0, -4.0), (-1.0, -5.0), (-1.0, -3.0)]  # acc_norm: -2 < -1 -> 1 right; 0 right; -1 > -1.5 -> 0 right
    pruned = [(-1.0, -8.0), (-3.0, -4.0), (-1.0, -3.0)]  # -1 > -2 -> 0 wrong; -3 < -1 -> 1 wrong; unchanged
    norm = make_task(items, "acc_norm")
    tc = task_changes(norm, result(norm, dense), result(norm, pruned))
    assert [(i.index, i.direction, i.dense_choice, i.pruned_choice) for i in tc.items] == [(0, BROKEN, 1, 0),
                                                                                           (1, BROKEN, 0, 1)]
    assert tc.items[0].dense_scores == (-2.0, -1.0) and tc.items[0].swing == pytest.approx(-2.0)  # margin 1 -> -1
    acc = make_task(items, "acc")  # raw logliks: dense answers 0,0,0 (item 0 wrong), pruned 0,0,0: nothing changed
    assert task_changes(acc, result(acc, dense), result(acc, pruned)).items == ()


def test_changed_items_counts_agree_with_the_accuracies_on_every_task():
    """(dense-only right) − (pruned-only right) = dense correct − pruned correct, on real suite tasks."""
    from diet.api import prune_copy
    from diet.tasks import get_task
    from tests.test_export import make_lm, make_result

    lm = make_lm(loud_mlp(tiny_model("llama", seed=1)))
    pruned = prune_copy(lm, make_result(lm.model, [10, 30, 20], seed=2))
    tasks = [get_task(n) for n in ("arithmetic", "capitals", "sentiment")]
    s = EvalSettings(limit=25)
    a, b = evaluate_tasks(lm.model, lm.tokenizer, tasks, s), evaluate_tasks(pruned, lm.tokenizer, tasks, s)
    changes = changed_items(tasks, a, b)
    assert sum(len(c.items) for c in changes) > 0, "the test needs items that changed"
    for c, ra, rb in zip(changes, a, b, strict=True):
        assert c.broken - c.fixed == round(ra.value * ra.n) - round(rb.value * rb.n)
        assert (c.dense_correct, c.pruned_correct) == (round(ra.value * ra.n), round(rb.value * rb.n))
    table = list(csv.DictReader(csv_text(changes).splitlines()))
    assert len(table) == sum(len(c.items) for c in changes)
    assert {r["direction"] for r in table} <= {BROKEN, FIXED}


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_generate_streams_and_its_json_equals_model_generate(tiny_folder, capsys):
    from diet.cli import main

    args = ["generate", "--model", str(tiny_folder), "--prompt", PROMPT, "--max-new-tokens", "16", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "tiny-llama ---" in out.out and "tokens/s" in out.out and RAW_FALLBACK in out.err
    assert main([*args, "--json", "--raw"]) == 0
    answer = json.loads(capsys.readouterr().out)["answers"][0]
    model = tiny_model("llama")
    assert answer["token_ids"] == reference(model, tiny_tokenizer(), PROMPT, 16)
    assert answer["text"] in out.out


def test_cli_generate_compare_with_a_mask_answers_dense_then_pruned(tiny_folder, tmp_path, capsys):
    from diet.api import prune_copy
    from diet.cli import main
    from diet.export.maskfile import write_mask_files
    from tests.test_export import make_lm, make_result

    lm = make_lm(tiny_model("llama"))
    result = make_result(lm.model, [12, 40, 24])
    write_mask_files(tmp_path, result)
    assert main(["generate", "--model", str(tiny_folder), "--prompt", PROMPT, "--max-new-tokens", "12", "--raw",
                 "--compare", str(tmp_path / "mask.json"), "--json", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    dense, pruned = json.loads(captured.out)["answers"]
    assert (dense["label"], pruned["label"]) == ("dense", "pruned")
    assert dense["token_ids"] == reference(lm.model, lm.tokenizer, PROMPT, 12)
    assert pruned["token_ids"] == reference(prune_copy(lm, result), lm.tokenizer, PROMPT, 12)
    assert "one model after the other" in captured.err

    from diet.export import export_model

    folder = export_model(make_lm(tiny_model("llama")), result, tmp_path / "pruned", mode="heterogeneous")
    assert main(["generate", "--model", str(tiny_folder), "--prompt", PROMPT, "--max-new-tokens", "12", "--raw",
                 "--compare", str(folder), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"][1]["token_ids"] == pruned["token_ids"]


@pytest.mark.parametrize("extra, match", [
    (["--prompt", ""], "error: the prompt is empty"),
    (["--prompt", "x" * 200], "error: the prompt is 200 tokens but the model's context is 128 tokens"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "error: max new tokens must be at least 1, got 0"),
    (["--prompt", "hi", "--compare", "/nonexistent/mask.json"], "error: --compare: nothing at"),
])
def test_cli_generate_bad_input_is_one_line_and_exit_2(tiny_folder, capsys, extra, match):
    from diet.cli import main

    assert main(["generate", "--model", str(tiny_folder), "--raw", "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(match) and "Traceback" not in "\n".join(err)


def test_cli_eval_compare_writes_the_changed_items_csv(tmp_path, cache_dir, capsys):
    from diet.cli import main
    from diet.export.maskfile import write_mask_files
    from tests.test_export import make_result

    tiny_folder = tmp_path / "loud"
    model = loud_mlp(tiny_model("llama", seed=1))
    model.save_pretrained(tiny_folder)
    tiny_tokenizer().save_pretrained(tiny_folder)
    write_mask_files(tmp_path, make_result(model, [10, 30, 20], seed=2))
    items, js = tmp_path / "items.csv", tmp_path / "out.json"
    assert main(["eval", "--model", str(tiny_folder), "--tasks", "arithmetic,sentiment", "--limit", "30",
                 "--compare", str(tmp_path / "mask.json"), "--items", str(items), "--json", str(js),
                 "--device", "cpu"]) == 0
    data = json.loads(js.read_text())
    table = list(csv.DictReader(items.read_text().splitlines()))
    assert table, "the test needs items that changed"
    for dense, pruned, changed in zip(data["results"], data["compare_results"], data["changed"], strict=True):
        rows = [r for r in table if r["task"] == dense["task"]]
        assert changed["dense_only"] == sum(r["direction"] == BROKEN for r in rows)
        assert changed["pruned_only"] == sum(r["direction"] == FIXED for r in rows)
        n = dense["n"]
        assert changed["dense_only"] - changed["pruned_only"] == round(dense["value"] * n) - round(pruned["value"] * n)
    assert main(["eval", "--model", str(tiny_folder), "--tasks", "arithmetic", "--items", str(items)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--items lists what pruning changed: it needs --compare DIR_OR_MASK")


# ----------------------------------------------------------------------------------- report, card, figures


def test_headline_words_for_a_non_specialist():
    from diet.export.card import headline_words

    assert headline_words(0.25, 1.3, 0.59, 0.561, 3, [10, 10, 10]) == [
        ("25% smaller", "size"), ("1.30× faster forward", "speed"),
        ("accuracy 0.590 → 0.561 (−2.9 points) on 3 tasks (preview: 10 items each)", "accuracy")]
    assert headline_words(0.1, 0.9, 0.5, 0.52, 1) == [
        ("10% smaller", "size"), ("0.90× the dense forward speed", "speed"),
        ("accuracy 0.500 → 0.520 (+2.0 points) on 1 task", "accuracy")]


def test_report_opens_with_the_sentence_linked_to_its_measurements_and_shows_samples_and_changes(cache_dir):
    import re

    from diet.api import build_mask, profile_tasks, prune_copy
    from diet.report import report
    from diet.settings import MaskSettings, ProfileSettings
    from diet.tasks import get_task
    from tests.test_export import make_lm

    lm = make_lm(loud_mlp(tiny_model("llama", seed=1)))
    tasks = [get_task("arithmetic"), get_task("capitals")]
    stats = profile_tasks(lm, tasks, ProfileSettings(samples=8))
    result = build_mask(stats, MaskSettings(sparsity=0.25))
    pruned = prune_copy(lm, result)
    s = EvalSettings(limit=6)
    dense_r, pruned_r = evaluate_tasks(lm.model, lm.tokenizer, tasks, s), evaluate_tasks(pruned, lm.tokenizer, tasks, s)
    comp = {"tasks": [t.name for t in tasks], "dense": dense_r, "pruned": pruned_r,
            "speed": {"dense": 100.0, "pruned": 130.0}}
    changes = changed_items(tasks, dense_r, pruned_r)
    html = report("tiny", result, stats, comp, samples=[{"prompt": "P<1>", "dense": "D", "pruned": "Q"}],
                  changes=changes)
    lead = re.search(r"<p class='lead'[^>]*>(.*?)</p>", html).group(1)
    assert lead.index(f"{result.summary['param_sparsity']:.0%} smaller") < lead.index("1.30× faster forward")
    for target in re.findall(r"href='#([^']+)'", lead):
        assert f"<a id='{target}'></a>" in html, target
    assert len(re.findall(r"href='#", lead)) == 3
    assert "<td style='text-align:left;white-space:pre-wrap;vertical-align:top'>P&lt;1&gt;</td>" in html
    for tc in changes:
        assert f"{tc.task}: {tc.broken} item(s) dense right / pruned wrong, {tc.fixed} the reverse" in html


def test_model_card_opens_with_the_sentence_and_shows_three_sample_generations(tmp_path):
    from diet.api import prune_copy, sample_prompts
    from diet.export import export_model
    from tests.test_export import make_lm, make_result

    lm = make_lm(tiny_model("llama"))
    result = make_result(lm.model, [12, 40, 24])
    prompts = sample_prompts(["arithmetic", "capitals"], 3)
    assert len(prompts) == 3 and prompts[2] != prompts[0]  # the third is the first task's second item
    out = export_model(lm, result, tmp_path / "out", mode="padded", sample_prompts=prompts)
    card = (out / "README.md").read_text()
    first = card.split("\n---\n", 1)[1].strip().splitlines()[2]
    assert first.startswith(f"**[{result.summary['param_sparsity']:.0%} smaller](#what-was-removed)")
    assert "## What was removed" in card
    section = card.split("## Sample generations", 1)[1]
    pruned = prune_copy(lm, result)
    for p in prompts:
        dense_text = generate(lm.model, lm.tokenizer, p, GenerateSettings(max_new_tokens=48)).text
        pruned_text = generate(pruned, lm.tokenizer, p, GenerateSettings(max_new_tokens=48)).text
        assert f"- dense: `{' '.join(dense_text.split())}`" in section
        assert f"- pruned: `{' '.join(pruned_text.split())}`" in section
    assert section.count("**Prompt:**") == 3


def test_figures_render_as_png_and_svg_at_their_size_or_say_there_is_no_browser(monkeypatch):
    import struct
    import xml.etree.ElementTree as ET

    import plotly.graph_objects as go

    from diet import figures

    fig = go.Figure(go.Bar(y=[1, 2, 3]), layout=dict(title="A bar", width=640, height=360))
    out = figures.render([("a", fig)])
    png, svg = out["a.png"], out["a.svg"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (640, 360)
    root = ET.fromstring(svg)
    assert (root.get("width"), root.get("height")) == ("640", "360")
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    with pytest.raises(DietError, match="no Chromium/Chrome found"):
        figures.image(fig, "png")


# ---------------------------------------------------------------------------------------- llama.cpp (GGUF)


def test_an_exported_gguf_answers_through_llama_cpp_in_a_child_process(tmp_path, capsys):
    """Streams piece by piece, Stop keeps the partial answer, and a file llama.cpp cannot load is one line."""
    from diet.api import generate_gguf
    from diet.cli import main
    from tests.test_gguf import export_tiny, llama_cpp

    llama_cpp()  # a missing llama-cpp-python fails here, as in tests/test_gguf.py
    out, _ = export_tiny(tmp_path, "llama", [20, 44, 31])
    seen = []
    g = generate_gguf(out, PROMPT, GenerateSettings(max_new_tokens=12, chat=False), on_update=seen.append)
    assert g.engine == "llama.cpp" and g.finish in ("eos", "length") and 1 <= g.new_tokens <= 12
    assert [s.new_tokens for s in seen[:-1]] == list(range(1, g.new_tokens + 1)) and seen[-1] == g
    assert all(b.text.startswith(a.text) for a, b in zip(seen, seen[1:])) and seen[-2].text == g.text
    seen.clear()
    stopped = generate_gguf(out, PROMPT, GenerateSettings(max_new_tokens=40, chat=False),
                            should_stop=lambda: len(seen) >= 4, on_update=seen.append)
    assert stopped.finish == "stopped" and stopped.text and stopped.new_tokens < 40
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(DietError, match=r"llama.cpp exited with code 1 before giving a result \(.*Error"):
        generate_gguf(bad, PROMPT, GenerateSettings(max_new_tokens=4, chat=False))
    assert main(["generate", "--model", str(out / "model.gguf"), "--prompt", PROMPT, "--raw",
                 "--max-new-tokens", "6"]) == 0
    assert "[llama.cpp: " in capsys.readouterr().out


@pytest.mark.integration
def test_smollm2_chat_answer_equals_model_generate_on_its_chat_template():
    """On the real SmolLM2-135M-Instruct: the chat template is applied, and greedy is model.generate itself."""
    from diet.models import load_model

    lm = load_model("smollm2-135m", say=lambda m: None)
    g = generate(lm.model, lm.tokenizer, "What is the capital of France?", GenerateSettings(max_new_tokens=16))
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                            tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    want = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
    assert g.chat is True and g.note == "" and g.prompt_tokens == ids.shape[1]
    assert list(g.token_ids) == want[0, ids.shape[1]:].tolist()
    assert "Paris" in g.text


def test_all_figures_zip_holds_every_report_figure_as_png_and_svg(cache_dir):
    import io
    import zipfile

    from diet import figures
    from diet.api import build_mask, profile_tasks
    from diet.report import report_figures
    from diet.settings import MaskSettings, ProfileSettings
    from tests.test_export import make_lm

    lm = make_lm(tiny_model("llama"))
    stats = profile_tasks(lm, ["arithmetic", "capitals"], ProfileSettings(samples=8))
    figs = [(t, f) for t, _, f in report_figures(build_mask(stats, MaskSettings()), stats)]
    z = zipfile.ZipFile(io.BytesIO(figures.zip_of(figs)))
    stems = [figures.file_stem(t) for t, _ in figs]
    assert sorted(z.namelist()) == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "svg"))
    assert len(set(stems)) == len(stems) > 5
    assert all(z.read(f"{s}.png")[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in z.read(f"{s}.svg")[:200] for s in stems)
