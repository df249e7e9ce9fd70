"""Tests of diet/tasks.py, diet/hub_tasks.py and the offline suite in assets/tasks. Offline and fast.

Answers that the generator computes are re-computed here independently (different code), so a generator bug
shows up as a failing test rather than as a silently wrong benchmark.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

from diet import hub_tasks, tasks
from diet.errors import DietError
from diet.tasks import MCItem, Task, get_task, list_tasks

ROOT = Path(__file__).resolve().parent.parent
SUITE_DIR = ROOT / "assets" / "tasks"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hub"
SUITE = ["arithmetic", "capitals", "facts", "morphology", "sentiment", "physical", "reading", "python_output"]


def suite_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SUITE_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(autouse=True)
def _fresh_hub_cache():
    """Hub tasks built from fake loaders must not leak into other tests through the lru_cache."""
    hub_tasks.load_hub_task.cache_clear()
    yield
    hub_tasks.load_hub_task.cache_clear()


# ----------------------------------------------------------------------------------------------------------
# the offline suite


def test_suite_is_registered_with_sizes():
    infos = {i.name: i for i in list_tasks()}
    assert [i.name for i in list_tasks() if i.source == "offline"] == SUITE
    for name in SUITE:
        task = get_task(name)
        assert task.source == "offline" and task.name == name
        assert len(task.calibration) >= 120 and len(task.evaluation) >= 180
        assert (infos[name].n_calibration, infos[name].n_evaluation) == (len(task.calibration), len(task.evaluation))
        assert task.metric == ("acc" if name == "sentiment" else "acc_norm")


@pytest.mark.parametrize("name", SUITE)
def test_suite_file_is_well_formed(name):
    rows = suite_rows(name)
    assert len(rows) >= 300
    for r in rows:
        assert list(r) == ["context", "choices", "gold", "split"]
        assert r["split"] in ("calibration", "evaluation")
        assert isinstance(r["gold"], int) and 0 <= r["gold"] < len(r["choices"])
        assert len(r["choices"]) >= 2 and len(set(r["choices"])) == len(r["choices"])  # exactly one gold
        assert all(c and c == c.strip() for c in r["choices"])  # the evaluator adds the " " delimiter
        assert r["context"].endswith("Answer:")
    contexts = [r["context"] for r in rows]
    assert len(set(contexts)) == len(contexts)
    cal = {r["context"] for r in rows if r["split"] == "calibration"}
    ev = {r["context"] for r in rows if r["split"] == "evaluation"}
    assert not cal & ev
    assert len({len(r["choices"]) for r in rows}) == 1
    for split in ("calibration", "evaluation"):
        counts = Counter(r["gold"] for r in rows if r["split"] == split)
        assert len(counts) == len(rows[0]["choices"]) and max(counts.values()) - min(counts.values()) <= 2, counts


def test_suite_tasks_keep_calibration_and_evaluation_disjoint():
    for name in SUITE:
        task = get_task(name)
        assert not set(task.calibration) & {item.calibration_text() for item in task.evaluation}


def test_build_regenerates_identical_files(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("diet_suite_build", SUITE_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, build)  # dataclasses look their module up while executing it
    spec.loader.exec_module(build)
    build.generate(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in SUITE_DIR.iterdir() if p.suffix in (".jsonl", ".json"))
    assert generated == committed
    for name in generated:
        assert (tmp_path / name).read_bytes() == (SUITE_DIR / name).read_bytes(), name


def test_arithmetic_answers_are_right():
    for r in suite_rows("arithmetic"):
        a, op, b = re.fullmatch(r"Question: What is (\d+) (\+|-|plus|minus) (\d)\?\nAnswer:", r["context"]).groups()
        expected = int(a) + int(b) if op in ("+", "plus") else int(a) - int(b)
        assert int(r["choices"][r["gold"]]) == expected
        assert [int(c) for c in r["choices"]].count(expected) == 1
        assert all(abs(int(c) - expected) >= 3 for i, c in enumerate(r["choices"]) if i != r["gold"])


def test_python_output_answers_are_right():
    prefix, suffix = "Question: What does this Python code print?\n", "\nAnswer:"
    for r in suite_rows("python_output"):
        assert r["context"].startswith(prefix) and r["context"].endswith(suffix)
        code = r["context"][len(prefix):-len(suffix)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<snippet>", "exec"), {})  # noqa: S102 - the suite's own snippets
        assert r["choices"][r["gold"]] == out.getvalue().rstrip("\n"), code


def _reading_answer(passage: str, question: str) -> str:
    """Answer the generated questions by reading the passage, with code independent of build.py."""
    m = re.fullmatch(r"(\w+) is an? (\w+) who lives in (\w+)\. \1 has an? (\w+) and an? (\w+) car\.", passage)
    assert m, passage
    name, job, city, pet, color = m.groups()
    asked = {f"Where does {name} live?": city, f"What pet does {name} have?": pet,
             f"What color is {name}'s car?": color, f"What is {name}'s job?": job}
    assert question in asked, question
    return asked[question]


def test_reading_answers_are_stated_in_the_passage_and_distractors_are_not():
    kinds = set()
    for r in suite_rows("reading"):
        passage, rest = r["context"].split("\nQuestion: ")
        question = rest.removesuffix("\nAnswer:")
        assert r["choices"][r["gold"]] == _reading_answer(passage, question), r["context"]
        words = set(re.findall(r"\w+", passage))
        assert sum(c in words for c in r["choices"]) == 1, r["context"]
        kinds.add(question.split()[1])
    assert kinds == {"does", "pet", "color", "is"}  # where / what pet / what color / what is ... job


def test_morphology_answers_are_consistent():
    """The asked word is never its own answer, and opposites are symmetric (opposite of Y is X when X -> Y)."""
    opposite = {}
    for r in suite_rows("morphology"):
        word = re.search(r'"(.+)"', r["context"]).group(1)
        gold = r["choices"][r["gold"]]
        assert gold != word
        if "plural" in r["context"] and word.endswith(("s", "x", "ch", "sh")) and word not in ("ox", "crisis"):
            assert gold == word + "es"
        if "opposite" in r["context"]:
            assert word not in r["choices"]
            opposite[word] = gold
    for word, gold in opposite.items():
        assert opposite.get(gold, word) == word, (word, gold)


# ----------------------------------------------------------------------------------------------------------
# the contract


def test_requests_and_calibration_text():
    item = MCItem("Question: What is 2 + 2?\nAnswer:", ["3", "4"], 1)
    assert item.choices == ("3", "4")  # lists are frozen into tuples
    assert item.requests() == [("Question: What is 2 + 2?\nAnswer:", " 3"), ("Question: What is 2 + 2?\nAnswer:", " 4")]
    assert item.calibration_text() == "Question: What is 2 + 2?\nAnswer: 4"


def test_winogrande_partial_scoring_requests():
    item = hub_tasks.format_winogrande(fixture_rows("winogrande")[1])
    assert item.choices == ("was going out into the rain.",)
    assert item.requests() == [
        ("Maria lent her umbrella to Sofia because Maria", " was going out into the rain."),
        ("Maria lent her umbrella to Sofia because Sofia", " was going out into the rain."),
    ]
    assert item.gold == 1
    assert item.calibration_text() == "Maria lent her umbrella to Sofia because Sofia was going out into the rain."


def test_fingerprint_tracks_the_texts():
    item = MCItem("Q?", ("a", "b"), 0)
    base = Task("t", "d", "offline", "acc", ("x a",), (item,))
    assert len(base.fingerprint()) == 64
    assert base.fingerprint() == Task("t", "other words", "offline", "acc", ("x a",), (item,)).fingerprint()
    assert base.fingerprint() != Task("t", "d", "offline", "acc", ("x b",), (item,)).fingerprint()
    other_gold = MCItem("Q?", ("a", "b"), 1)
    assert base.fingerprint() != Task("t", "d", "offline", "acc", ("x a",), (other_gold,)).fingerprint()
    assert get_task("arithmetic").fingerprint() == get_task("arithmetic").fingerprint()


def test_check_disjoint_rejects_leaks():
    item = MCItem("Q?", ("a", "b"), 1)
    with pytest.raises(DietError, match="disjoint"):
        tasks.check_disjoint("t", ("Q? b",), (item,))
    tasks.check_disjoint("t", ("Q? a",), (item,))  # a wrong answer is not the evaluation item


def test_unknown_task_names_the_available_ones():
    with pytest.raises(DietError) as err:
        get_task("no_such_task")
    msg = str(err.value)
    assert "no_such_task" in msg and "arithmetic" in msg and "python_output" in msg and "winogrande" in msg


def test_missing_file_is_reported():
    with pytest.raises(DietError, match="task file not found"):
        get_task("/nonexistent/dir/my_task.jsonl")


# ----------------------------------------------------------------------------------------------------------
# Hub benchmarks: formatting on local fixture rows, wiring with a fake loader, the offline error

EXPECTED_HUB = {
    "boolq": (hub_tasks.format_boolq, 0, MCItem(
        "Tomato -- Botanically, the tomato is the berry of the plant Solanum lycopersicum, though it is usually "
        "prepared and eaten as a vegetable.\nQuestion: is a tomato botanically a fruit?\nAnswer:", ("no", "yes"), 1)),
    "rte": (hub_tasks.format_rte, 1, MCItem(
        "Heavy rain closed the mountain road for two days last week.\n"
        "Question: The mountain road has never been closed. True or False?\nAnswer:", ("True", "False"), 1)),
    "hellaswag": (hub_tasks.format_hellaswag, 1, MCItem(
        "Home and Garden: How to water a houseplant. Check the soil first. Push a finger into the soil. "
        "If it feels dry",
        (", pour water slowly around the base of the plant. Stop when water drips from the bottom.",
         ", put the plant in the freezer.", ", cover the plant with sand.", ", paint the pot red."), 0)),
    "arc_easy": (hub_tasks.format_arc, 1, MCItem(
        "Question: What do plants need to make their own food?\nAnswer:", ("sunlight", "sand", "plastic"), 0)),
    "openbookqa": (hub_tasks.format_openbookqa, 2, MCItem(
        "Plants take in carbon dioxide through their", ("leaves", "flowers", "seeds", "bark"), 0)),
    "piqa": (hub_tasks.format_piqa, 1, MCItem(
        "Question: To cool a hot drink quickly,\nAnswer:",
        ("put it in the oven for ten minutes.", "add a few ice cubes and stir."), 1)),
    "winogrande": (hub_tasks.format_winogrande, 0, MCItem(
        "The trophy did not fit in the suitcase because the _ was too big.", ("was too big.",), 0,
        contexts=("The trophy did not fit in the suitcase because the trophy",
                  "The trophy did not fit in the suitcase because the suitcase"))),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_HUB))
def test_hub_formatter_matches_the_harness_prompt(name):
    fmt, row_index, expected = EXPECTED_HUB[name]
    assert fmt(fixture_rows(name)[row_index]) == expected
    for row in fixture_rows(name):  # every fixture row formats to a valid item
        item = fmt(row)
        assert 0 <= item.gold < item.n_choices


def test_hellaswag_simple_row():
    item = hub_tasks.format_hellaswag(fixture_rows("hellaswag")[0])
    assert item.context == "Making a sandwich: A man puts two slices of bread on a plate. He"
    assert item.requests()[0][1] == " spreads butter on the bread with a knife."


def test_hub_registry_follows_the_harness():
    b = hub_tasks.HUB_BENCHMARKS
    assert sorted(b) == sorted(["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                "openbookqa", "piqa"])
    assert {n for n, x in b.items() if x.metric == "acc"} == {"boolq", "rte", "winogrande"}
    assert {n for n, x in b.items() if x.eval_split == "test"} == {"arc_easy", "arc_challenge", "openbookqa"}
    assert all(x.train_split == "train" for x in b.values())
    assert {i.name for i in list_tasks() if i.source == "hub"} == set(b)


def test_hub_registry_is_data_and_a_broken_file_says_so(tmp_path):
    rows = json.loads(hub_tasks.REGISTRY_FILE.read_text())
    assert [r["name"] for r in rows] == list(hub_tasks.HUB_BENCHMARKS)
    assert hub_tasks.read_registry(hub_tasks.REGISTRY_FILE) == hub_tasks.HUB_BENCHMARKS
    bad = tmp_path / "hub.json"
    bad.write_text(json.dumps([{**rows[0], "format": "no_such_formatter"}]))
    with pytest.raises(DietError, match="unreadable benchmark registry"):
        hub_tasks.read_registry(bad)


def test_hub_task_is_built_from_train_and_eval_splits(monkeypatch):
    rows = fixture_rows("arc_easy")
    calls = []

    def fake_load(path, config, split):
        calls.append((path, config, split))
        return rows[:2] if split == "train" else rows[1:]  # row 1 is in both: it must not calibrate

    monkeypatch.setattr(hub_tasks, "load_dataset", fake_load)
    task = get_task("arc_easy")
    assert sorted(calls) == [("allenai/ai2_arc", "ARC-Easy", "test"), ("allenai/ai2_arc", "ARC-Easy", "train")]
    assert task.source == "hub:arc_easy" and task.metric == "acc_norm"
    assert task.calibration == ("Question: Which of these is a source of light?\nAnswer: the Sun",)
    assert [it.gold for it in task.evaluation] == [0, 2]


def test_hub_offline_error_names_the_offline_tasks(monkeypatch):
    def offline(path, config, split):
        raise ConnectionError("Couldn't reach 'aps/super_glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(hub_tasks, "load_dataset", offline)
    with pytest.raises(DietError) as err:
        get_task("boolq")
    assert str(err.value).startswith("boolq needs network access to the Hugging Face Hub; offline tasks available: "
                                     "arithmetic, capitals, facts")


def test_hub_unreachable_fails_fast_without_datasets(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)

    def no_network(address, timeout=None):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DietError, match=r"^piqa needs network access .*huggingface\.co:443"):
        get_task("piqa")


# ----------------------------------------------------------------------------------------------------------
# user files


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_user_jsonl_with_splits_and_texts(tmp_path):
    path = write(tmp_path, "mine.jsonl", jsonl(
        {"context": "Q: 1+1?\nA:", "choices": ["2", "3"], "gold": 0, "split": "calibration"},
        {"context": "Q: 2+2?\nA:", "choices": ["4", "5", "6"], "gold": 0, "split": "evaluation"},
        {"text": "Some calibration text."},
    ))
    task = get_task(str(path))
    assert task.name == "mine" and task.source == f"file:{path.resolve()}" and task.metric == "acc_norm"
    assert task.calibration == ("Q: 1+1?\nA: 2", "Some calibration text.")
    assert task.evaluation == (MCItem("Q: 2+2?\nA:", ("4", "5", "6"), 0),)
    assert get_task(str(path)) is task  # cached in-process


def test_user_file_reloads_when_changed(tmp_path):
    path = write(tmp_path, "edit.jsonl", jsonl({"text": "first"}))
    assert get_task(str(path)).calibration == ("first",)
    path.write_text(jsonl({"text": "second"}), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert get_task(str(path)).calibration == ("second",)


def test_user_items_without_split_are_split_40_60_deterministically(tmp_path):
    records = [{"context": f"Q{i}:", "choices": ["yes", "no"], "gold": i % 2} for i in range(50)]
    path = write(tmp_path, "unsplit.jsonl", jsonl(*records))
    task = get_task(str(path))
    assert (len(task.calibration), len(task.evaluation)) == (20, 30)
    again = tasks._load_user_file.__wrapped__(str(path.resolve()), 0)  # uncached: same seeded split
    assert again == task
    assert len(task.evaluation) == 30 and task.evaluation != tuple(
        MCItem(r["context"], tuple(r["choices"]), r["gold"]) for r in records[20:])  # shuffled, not a prefix cut


def test_user_repeated_items_without_split_load_with_every_copy_on_one_side(tmp_path):
    # 40 items, some repeated 2-4 times (as real data is): the automatic split keeps each group on one side
    records = []
    for i in range(26):  # 7 items three times, 19 once
        records += [{"context": f"Question {i}?", "choices": ["yes", "no"], "gold": i % 2}] * (1 + (i % 4 == 0) * 2)
    assert len(records) == 40
    path = write(tmp_path, "repeats.jsonl", jsonl(*records))
    task = get_task(str(path))
    eval_texts = [it.calibration_text() for it in task.evaluation]
    assert not set(task.calibration) & set(eval_texts)  # no text on both sides
    assert len(task.calibration) + len(task.evaluation) == 40  # every copy kept somewhere
    assert task.held_for_calibration == len(task.calibration)
    assert abs(len(task.calibration) - 16) <= 2  # about 40%, whole groups only
    assert task.eval_repeats == len(eval_texts) - len(set(eval_texts)) > 0  # repeats kept and counted
    assert f"{len(task.evaluation)} of 40 items evaluate; {len(task.calibration)} used for calibration" \
        in task.split_note()
    assert "repeat an earlier one exactly" in task.split_note()


def test_user_split_without_repeats_is_unchanged_by_grouping(tmp_path):
    # the seeded item shuffle of earlier versions: cached statistics of existing files stay valid
    import random

    records = [{"context": f"Q{i}:", "choices": ["yes", "no"], "gold": i % 2} for i in range(40)]
    task = get_task(str(write(tmp_path, "plain.jsonl", jsonl(*records))))
    order = list(range(40))
    random.Random(tasks.USER_SPLIT_SEED).shuffle(order)
    cal = sorted(order[:16])
    assert task.calibration == tuple(f"Q{i}: {['yes', 'no'][i % 2]}" for i in cal)
    note = "24 of 40 items evaluate; 16 used for calibration — set `split` to choose"
    assert (task.held_for_calibration, task.eval_repeats, task.split_note()) == (16, 0, note)


def test_user_explicit_conflicting_splits_name_both_lines(tmp_path):
    item = {"context": "Q?", "choices": ["x", "y"], "gold": 0}
    path = write(tmp_path, "conflict.jsonl", jsonl({**item, "split": "calibration"},
                                                   {"context": "R?", "choices": ["x", "y"], "gold": 1,
                                                    "split": "evaluation"},
                                                   {**item, "split": "evaluation"}))
    with pytest.raises(DietError, match=r"line 1 \(calibration\) repeats line 3 \(evaluation\)"):
        get_task(str(path))


def test_eval_table_and_json_say_how_many_items_went_to_calibration(tmp_path):
    from diet.evaluate import EvalSettings, evaluate_task, format_table
    from tests.tiny import tiny_model, tiny_tokenizer

    records = [{"context": f"Q{i}:", "choices": ["yes", "no"], "gold": i % 2} for i in range(40)]
    task = get_task(str(write(tmp_path, "forty.jsonl", jsonl(*records))))
    model, tok = tiny_model("llama"), tiny_tokenizer()
    r = evaluate_task(model, tok, task, EvalSettings(batch_size=8))
    assert "(24 of 40 scored; 16 used for calibration — set `split` to choose)" in format_table([r])
    d = json.loads(json.dumps(r.to_dict()))
    assert (d["n"], d["calibration_items"]) == (24, 16) and "16 used for calibration" in d["note"]
    preview = evaluate_task(model, tok, task, EvalSettings(limit=5, batch_size=8))
    assert "(first 5 of 24 scored (preview); 16 used for calibration" in format_table([preview])
    suite = evaluate_task(model, tok, get_task("capitals"), EvalSettings(limit=3))
    assert suite.calibration_items == 0 and "used for calibration" not in format_table([suite])


def test_user_text_only_file_has_no_evaluation(tmp_path):
    task = get_task(str(write(tmp_path, "texts.jsonl", jsonl({"text": "a"}, {"text": "b"}))))
    assert task.calibration == ("a", "b") and task.evaluation == ()


def test_user_csv_with_choice_columns(tmp_path):
    path = write(tmp_path, "mine.csv",
                 'context,choice_0,choice_1,choice_2,gold,split,text\n'
                 '"Q: capital of France?\nA:",Paris,Rome,,0,evaluation,\n'
                 'Q: 3+4?,7,8,9,0,calibration,\n'
                 ',,,,,,"plain calibration text"\n')
    task = get_task(str(path))
    assert task.evaluation == (MCItem("Q: capital of France?\nA:", ("Paris", "Rome"), 0),)
    assert task.calibration == ("Q: 3+4? 7", "plain calibration text")


def test_user_jsonl_reports_every_problem_with_its_line(tmp_path):
    path = write(tmp_path, "bad.jsonl", jsonl(
        {"context": "ok", "choices": ["a", "b"], "gold": 0},
        '{"context": "broken", ',
        {"context": "no gold", "choices": ["a", "b"]},
        {"context": "range", "choices": ["a", "b"], "gold": 2},
        {"context": "string gold", "choices": ["a", "b"], "gold": "1"},
        {"context": "one choice", "choices": ["a"], "gold": 0},
        {"context": "dups", "choices": ["a", "a"], "gold": 0},
        {"context": "  ", "choices": ["a", "b"], "gold": 0},
        {"text": ""},
        {"context": "split", "choices": ["a", "b"], "gold": 0, "split": "test"},
        [1, 2],
    ))
    with pytest.raises(DietError) as err:
        get_task(str(path))
    msg = str(err.value)
    assert "10 problem(s)" in msg
    for fragment in ["line 2: invalid JSON", "line 3: missing field 'gold'", "line 4: gold 2 out of range",
                     "line 5: gold must be an integer", "line 6: needs at least 2 choices",
                     "line 7: duplicate choices", "line 8: empty context", "line 9: empty text",
                     "line 10: unknown split 'test'", "line 11: expected a JSON object"]:
        assert fragment in msg, fragment
    assert "line 1:" not in msg


def test_user_empty_file(tmp_path):
    with pytest.raises(DietError, match="empty"):
        get_task(str(write(tmp_path, "empty.jsonl", "\n  \n")))


def test_user_mixed_split_presence_is_refused(tmp_path):
    path = write(tmp_path, "mixed.jsonl", jsonl(
        {"context": "a", "choices": ["x", "y"], "gold": 0, "split": "evaluation"},
        {"context": "b", "choices": ["x", "y"], "gold": 0},
    ))
    with pytest.raises(DietError, match=r"line\(s\) 2: no split"):
        get_task(str(path))


def test_user_calibration_repeating_an_evaluation_item_is_refused(tmp_path):
    item = {"context": "Q?", "choices": ["x", "y"], "gold": 1}
    path = write(tmp_path, "leak.jsonl", jsonl({**item, "split": "evaluation"}, {"text": "other"},
                                              {**item, "split": "calibration"}))
    with pytest.raises(DietError, match=r"line 3 \(calibration\) repeats line 1 \(evaluation\)"):
        get_task(str(path))


def test_user_csv_problems_have_line_numbers(tmp_path):
    path = write(tmp_path, "bad.csv", "context,choice_0,choice_1,gold\nQ1,a,b,x\nQ2,a,,0\nQ3,a,b,1,extra\n")
    with pytest.raises(DietError) as err:
        get_task(str(path))
    msg = str(err.value)
    assert "line 2: gold must be an integer" in msg
    assert "line 3: needs at least 2 choices" in msg
    assert "line 4: 5 cells, the header has 4" in msg
    with pytest.raises(DietError, match="line 1: missing column"):
        get_task(str(write(tmp_path, "nohead.csv", "question,answer\nQ,a\n")))


def test_user_file_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DietError, match="not UTF-8"):
        get_task(str(path))
