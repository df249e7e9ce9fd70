"""Page 3's "Try it" panel and its changed-items table, with Streamlit's AppTest on a tiny random model: the answers
the page shows are the engine's (greedy = model.generate), and the table and its CSV are `diet.changed`'s."""

from __future__ import annotations

from diet.api import changed_items, prune_copy
from diet.changed import BROKEN, rows
from diet.evaluate import EvalSettings, evaluate_tasks
from diet.models import LoadedModel
from diet.settings import MaskSettings, ModelSpec, ProfileSettings
from diet.tasks import get_task
from tests.test_app import PRUNE, evaluate_on_prune_page, finish_jobs, ok, open_page
from tests.test_generate import loud_mlp, reference
from tests.tiny import tiny_model, tiny_tokenizer


def loud_lm(tmp_path) -> LoadedModel:
    return LoadedModel(loud_mlp(tiny_model("llama", seed=1)), tiny_tokenizer(), ModelSpec(name="tiny-loud"),
                       str(tmp_path), "tiny:loud:1")


def test_try_it_shows_the_engines_dense_and_pruned_answers(cache_dir, tmp_path):
    from diet.api import build_mask, profile_tasks

    lm = loud_lm(tmp_path)
    stats = profile_tasks(lm, [get_task("arithmetic"), get_task("capitals")], ProfileSettings(samples=8))
    at = open_page(PRUNE, lm, stats=stats)
    ok(at)
    prompt = at.text_area(key="p_try_prompt").value
    assert prompt.startswith("Question:")  # prefilled from the first task's first item
    assert at.toggle(key="p_try_chat").value is False  # the tiny tokenizer has no chat template
    at.number_input(key="p_try_max_new").set_value(12).run()
    at.button(key="btn_try").click().run()
    finish_jobs(at)
    ok(at)
    out = at.session_state["try_it"]
    pruned = prune_copy(lm, build_mask(stats, MaskSettings()))
    assert list(out["answers"]["dense"].token_ids) == reference(lm.model, lm.tokenizer, prompt, 12)
    assert list(out["answers"]["pruned"].token_ids) == reference(pruned, lm.tokenizer, prompt, 12)
    shown = [t.value for t in at.text]
    assert out["answers"]["dense"].text in shown and out["answers"]["pruned"].text in shown
    assert any("one after the other" in c.value for c in at.caption)
    at.button(key="btn_try_keep").click().run()
    assert at.session_state["try_samples"][0]["pruned"] == out["answers"]["pruned"].text

    at.text_area(key="p_try_prompt").set_value("   ").run()
    at.button(key="btn_try").click().run()
    assert [e.value for e in at.error] == ["the prompt is empty: type something for the model to answer"]


def test_changed_items_table_is_the_engines_and_filters(cache_dir, tmp_path):
    from diet.api import build_mask, profile_tasks

    lm = loud_lm(tmp_path)
    tasks = [get_task("arithmetic"), get_task("sentiment")]
    stats = profile_tasks(lm, tasks, ProfileSettings(samples=8))
    at = open_page(PRUNE, lm, stats=stats)
    evaluate_on_prune_page(at, 12)
    ok(at)
    pruned = prune_copy(lm, build_mask(stats, MaskSettings()))
    s = EvalSettings(limit=12)
    want = rows(changed_items(tasks, evaluate_tasks(lm.model, lm.tokenizer, tasks, s),
                              evaluate_tasks(pruned, lm.tokenizer, tasks, s)))
    assert want, "the test needs items that changed"
    table = at.dataframe[-1].value
    assert table["item"].tolist() == [r["item"] for r in want]
    assert table["task"].tolist() == [r["task"] for r in want]
    at.radio(key="changed_direction").set_value(BROKEN).run()
    filtered = at.dataframe[-1].value if not any("No changed items" in c.value for c in at.caption) else None
    broken = [r for r in want if r["direction"] == BROKEN]
    assert (filtered["item"].tolist() if filtered is not None else []) == [r["item"] for r in broken]
