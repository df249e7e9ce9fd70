"""Export folders: every mode of every family reloads, in a fresh process without `diet`, to the same function.

The round trip is checked where it matters: a separate Python process (`-I`, cwd in a temp dir, `import diet`
asserted to fail there) loads each folder with stock transformers, and its logits are compared with the in-memory
model that was exported (≤ 1e-5 fp32) and with the masked-dense reference (≤ 1e-4, same argmax). One subprocess
checks all folders, to keep the test fast.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diet import masks as M
from diet.adapters import model_shape
from diet.api import MaskResult
from diet.errors import DietError
from diet.export import apply_mask, export_model
from diet.export.cut import build_export_model
from diet.export.maskfile import check_mask, read_mask
from diet.measure import SpeedSettings, measure_speed
from diet.models import LoadedModel
from diet.prune import zero_units
from diet.settings import MaskSettings, ModelSpec
from tests.tiny import FAMILIES, VOCAB, tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
MODES = ("uniform", "padded", "heterogeneous")
IDS = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
STOCK_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
               "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}


def make_result(model, kept: list[int], seed: int = 0, tasks=("arithmetic", "capitals")) -> MaskResult:
    """A MaskResult with `kept[i]` random channels in layer i and random task masks (votes/summary consistent)."""
    shape = model_shape(model)
    rng = np.random.default_rng(seed)
    L, width = shape.layers, shape.widths[0]
    mask = np.zeros((L, width), dtype=bool)
    for i, k in enumerate(kept):
        mask[i, rng.choice(width, size=k, replace=False)] = True
    task_masks = rng.random((len(tasks), L, width)) < 0.6
    votes = M.votes(task_masks)
    summary = {**M.param_summary(mask, shape), "kept_per_layer": M.kept_per_layer(mask).tolist(),
               "votes_histogram": M.votes_histogram(votes, len(tasks)).tolist()}
    return MaskResult(list(tasks), MaskSettings(sparsity=0.25), task_masks, mask, votes, shape, summary)


def make_lm(model, name="tiny", identity="tiny:0000", path="") -> LoadedModel:
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), spec=ModelSpec(name=name), path=path,
                       identity=identity)


def kept_for(mode: str) -> list[int]:
    return [36, 36, 36] if mode == "uniform" else [20, 44, 31]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def greedy(model) -> torch.Tensor:
    return model.generate(IDS[:1], max_new_tokens=6, do_sample=False)


BLOCK_DIET = "import sys; sys.modules['diet'] = None  # installed (editable) here: importing it fails, as if absent\n"


def fresh_python(script: str, args: list[str], cwd: Path, diet_importable: bool) -> subprocess.CompletedProcess:
    """Run `script` in a new interpreter; without `diet` unless asked (HF caches kept in cwd).

    `diet` is installed in editable mode, so "without" means: not on sys.path from the checkout (-I) and every
    import of it refused (BLOCK_DIET) — what a machine without DIET sees."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(cwd / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    flags = [] if diet_importable else ["-I"]  # -I: no PYTHONPATH, no user site, no cwd on sys.path
    if diet_importable:
        env["PYTHONPATH"] = str(REPO)
    path = cwd / "script.py"
    path.write_text(("" if diet_importable else BLOCK_DIET) + textwrap.dedent(script))
    return subprocess.run([sys.executable, *flags, str(path), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


RELOAD_SCRIPT = """
    import json, sys
    try:
        import diet  # noqa: F401
        sys.exit("diet is importable in the fresh process: the test would prove nothing")
    except ImportError:
        pass
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    jobs = json.loads(open(sys.argv[1]).read())
    ids = load_file(jobs["ids"])["ids"]
    out, classes = {}, {}
    for key, job in jobs["folders"].items():
        remote = job["mode"] == "heterogeneous"
        model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=remote).eval()
        AutoTokenizer.from_pretrained(job["dir"])
        with torch.no_grad():
            out[key + "/logits"] = model(ids).logits.contiguous()
        out[key + "/generated"] = model.generate(ids[:1], max_new_tokens=6, do_sample=False).contiguous()
        classes[key] = [type(model).__name__, type(model).__module__]
    save_file(out, jobs["result"], metadata={"classes": json.dumps(classes)})
"""


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """Export every (family, mode), remember the in-memory references, reload all in one fresh process."""
    root = tmp_path_factory.mktemp("exports")
    refs, folders = {}, {}
    for family in FAMILIES:
        dense = tiny_model(family)
        for mode in MODES:
            key = f"{family}-{mode}"
            result = make_result(dense, kept_for(mode), seed=len(refs))
            folder = export_model(make_lm(dense), result, root / key, mode=mode)
            exported = build_export_model(dense, result.keep(), mode)
            masked = zero_units(copy.deepcopy(dense), result.keep())
            refs[key] = {"exported": logits(exported), "masked": logits(masked), "dense": logits(dense),
                         "generated": greedy(exported), "kept": [len(k) for k in result.keep()], "dir": folder}
            folders[key] = {"dir": str(folder), "mode": mode}
    work = tmp_path_factory.mktemp("fresh")
    save_file({"ids": IDS.contiguous()}, str(work / "ids.safetensors"))
    jobs = {"ids": str(work / "ids.safetensors"), "result": str(work / "result.safetensors"), "folders": folders}
    (work / "jobs.json").write_text(json.dumps(jobs))
    proc = fresh_python(RELOAD_SCRIPT, [str(work / "jobs.json")], work, diet_importable=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(jobs["result"], framework="pt") as f:
        classes = json.loads(f.metadata()["classes"])
    return refs, load_file(jobs["result"]), classes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_reload_in_fresh_process_without_diet_gives_identical_logits(roundtrip, family, mode):
    refs, loaded, classes = roundtrip
    key = f"{family}-{mode}"
    ref, got = refs[key], loaded[key + "/logits"]
    assert (ref["masked"] - ref["dense"]).abs().max() > 1e-3, "pruning must change the output, or this proves nothing"
    assert (got - ref["exported"]).abs().max() <= 1e-5
    assert (got - ref["masked"]).abs().max() <= 1e-4
    assert torch.equal(got.argmax(-1), ref["masked"].argmax(-1))
    assert torch.equal(loaded[key + "/generated"], ref["generated"])
    assert loaded[key + "/generated"].shape[1] > IDS.shape[1]
    name, module = classes[key]
    config = json.loads((ref["dir"] / "config.json").read_text())
    if mode == "heterogeneous":
        assert name == "Diet" + STOCK_CLASS[family] and module.startswith("transformers_modules")
        assert config["intermediate_sizes"] == ref["kept"] and config["model_type"] == "diet_" + family
        assert (ref["dir"] / "modeling_diet.py").is_file()
    else:
        assert name == STOCK_CLASS[family] and module.startswith("transformers.models.")
        assert "auto_map" not in config and config["model_type"] == family
        assert config["intermediate_size"] == max(ref["kept"])


def test_heterogeneous_modelling_file_imports_only_torch_and_transformers():
    import ast

    tree = ast.parse((REPO / "diet" / "export" / "modeling_diet.py").read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= {"__future__", "copy", "torch", "transformers"}, roots


REGISTER_SCRIPT = """
    import sys
    import diet  # before transformers: registration must wait for it, then happen by itself
    assert "transformers" not in sys.modules, "import diet must stay cheap"
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])  # no trust_remote_code
    print(type(model).__module__, type(model).__name__)
"""


def test_import_diet_registers_heterogeneous_classes_in_a_fresh_process(roundtrip, tmp_path):
    refs, _, _ = roundtrip
    proc = fresh_python(REGISTER_SCRIPT, [str(refs["llama-heterogeneous"]["dir"])], tmp_path, diet_importable=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["diet.export.modeling_diet", "DietLlamaForCausalLM"]


def test_heterogeneous_folder_loads_in_process_without_remote_code(roundtrip):
    from transformers import AutoModelForCausalLM

    import diet  # noqa: F401  (registers the classes)

    refs, _, _ = roundtrip
    ref = refs["qwen2-heterogeneous"]
    model = AutoModelForCausalLM.from_pretrained(ref["dir"]).eval()
    assert type(model).__module__ == "diet.export.modeling_diet"
    assert [layer.mlp.down_proj.in_features for layer in model.model.layers] == ref["kept"]
    assert (logits(model) - ref["exported"]).abs().max() <= 1e-5


def test_heterogeneous_config_rejects_a_wrong_width_list():
    from diet.export.hf import hetero_config

    cfg = tiny_model("llama").config
    assert hetero_config(cfg, [4, 5, 6]).intermediate_sizes == [4, 5, 6]
    with pytest.raises(ValueError, match="3 layers"):
        hetero_config(cfg, [4, 5])
    with pytest.raises(ValueError, match="positive ints"):
        hetero_config(cfg, [4, 0, 6])


# ------------------------------------------------------------------------------------------------ folder contents


def test_folder_holds_mask_settings_card_and_plots(tmp_path):
    dense = tiny_model("llama")
    result = make_result(dense, [20, 44, 31])
    out = export_model(make_lm(dense), result, tmp_path / "out", mode="padded", extra={"profile": {"samples": 7}})
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "mask.json", "mask.safetensors",
            "diet_settings.json", "README.md", "kept_per_layer.png", "votes_histogram.png"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert out.stat().st_mode & 0o777 == 0o755 and (out / "mask.safetensors").stat().st_mode & 0o777 == 0o644
    for png in ("kept_per_layer.png", "votes_histogram.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mask = json.loads((out / "mask.json").read_text())
    assert mask["keep"] == [k.tolist() for k in result.keep()]
    assert mask["tasks"] == ["arithmetic", "capitals"] and mask["model_identity"] == "tiny:0000"
    assert mask["method"] == "diet" and read_mask(out / "mask.json")[0].method == "diet"
    arrays = load_file(str(out / "mask.safetensors"))
    assert np.array_equal(arrays["votes"].numpy(), result.votes)
    assert np.array_equal(arrays["task_masks"].numpy().astype(bool), result.task_masks)
    settings = json.loads((out / "diet_settings.json").read_text())
    assert settings["mode"] == "padded" and settings["profile"] == {"samples": 7}
    assert settings["kept_per_layer"] == [20, 44, 31]

    card = (out / "README.md").read_text()
    s = result.summary
    assert f"{100 * s['unit_sparsity']:.1f}% of MLP channels" in card
    assert f"{100 * s['param_sparsity']:.1f}% of all parameters" in card
    assert f"{s['params_total']:,}" in card and f"{s['params_after']:,} without the zero padding" in card
    assert "weights on disk" in card and "KB" in card
    assert "arithmetic, capitals" in card and "![kept per layer](kept_per_layer.png)" in card
    assert "AutoModelForCausalLM.from_pretrained(" in card and "trust_remote_code" not in card
    assert "No evaluation was run" in card and "Not measured" in card


def test_card_shows_evaluation_table_and_measured_speed(tmp_path):
    dense = tiny_model("gemma2")
    result = make_result(dense, [36, 36, 36])
    row = {"task": "arithmetic", "n": 10, "total": 192, "acc": 0.5, "acc_norm": 0.6, "metric": "acc_norm",
           "value": 0.6, "preview": True, "seconds": 1.0}
    evaluation = {"dense": [{**row, "value": 0.7}], "pruned": [row], "size": {"what the app adds": 1}}
    speed = SpeedSettings(batch_sizes=(1, 2), seq_len=8, repeats=1, warmup=0)
    out = export_model(make_lm(dense), result, tmp_path / "out", mode="heterogeneous", evaluation=evaluation,
                       speed=speed)
    card = (out / "README.md").read_text()
    assert "| arithmetic | acc_norm | 10 of 192 (preview) | 70.0 | 60.0 |" in card
    assert "| 1 × 8 |" in card and "| 2 × 8 |" in card and "interleaved" in card
    assert "trust_remote_code=True" in card


def test_measure_speed_reports_both_models_per_batch_size():
    dense = tiny_model("llama")
    pruned = build_export_model(dense, make_result(dense, [12, 12, 12]).keep(), "uniform")
    settings = SpeedSettings(batch_sizes=(1, 3), seq_len=5, repeats=2, warmup=0)
    r = measure_speed({"dense": dense, "pruned": pruned}, settings)
    assert [row["batch"] for row in r["rows"]] == [1, 3] and r["device"] == "cpu"
    for row in r["rows"]:
        assert row["dense_ms"] > 0 and row["pruned_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["pruned_ms"], rel=1e-2)
        assert row["pruned_tokens_per_s"] == pytest.approx(row["batch"] * 5 / (row["pruned_ms"] / 1000), rel=1e-2)


# ------------------------------------------------------------------------------------------------ safety


def test_non_empty_folder_is_refused_unless_overwrite(tmp_path):
    dense = tiny_model("llama")
    result = make_result(dense, [36, 36, 36])
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DietError, match="not empty"):
        export_model(make_lm(dense), result, out)
    assert (out / "precious.txt").read_text() == "keep me"
    export_model(make_lm(dense), result, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DietError, match="not a folder"):
        export_model(make_lm(dense), result, tmp_path / "file", overwrite=True)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_export_leaves_nothing_that_looks_finished(tmp_path, monkeypatch, error, existing):
    from transformers import PreTrainedModel

    dense = tiny_model("llama")
    result = make_result(dense, [20, 44, 31])
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("previous export")
    real_save = PreTrainedModel.save_pretrained

    def save_then_fail(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)  # weights and config are written: a half-finished folder
        raise error("interrupted mid-way")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_fail)
    with pytest.raises(error):
        export_model(make_lm(dense), result, out, mode="heterogeneous", overwrite=existing)
    if existing:
        assert [p.name for p in out.iterdir()] == ["old.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])  # no temp folder left


def test_uniform_mode_refuses_uneven_masks_and_unknown_modes(tmp_path):
    dense = tiny_model("llama")
    with pytest.raises(DietError, match="different counts per layer"):
        export_model(make_lm(dense), make_result(dense, [20, 44, 31]), tmp_path / "a", mode="uniform")
    with pytest.raises(DietError, match="unknown export mode"):
        export_model(make_lm(dense), make_result(dense, [20, 44, 31]), tmp_path / "b", mode="sparse")
    assert not list(tmp_path.iterdir())


def test_attention_head_masks_export_uniform_and_reload(tmp_path):
    from transformers import AutoModelForCausalLM

    dense = tiny_model("qwen2")
    shape = model_shape(dense, "heads")  # 2 KV groups of 2 query heads per layer
    mask = np.zeros((shape.layers, shape.widths[0]), dtype=bool)
    mask[:, 1] = True
    result = MaskResult(["a"], MaskSettings(sparsity=0.5), mask[None], mask, M.votes(mask[None]), shape,
                        {**M.param_summary(mask, shape), "votes_histogram": [0, 3]})
    out = export_model(make_lm(dense), result, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 1 and config["num_attention_heads"] == 2
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    masked = zero_units(copy.deepcopy(dense), result.keep(), "heads")
    assert (logits(reloaded) - logits(masked)).abs().max() <= 1e-4
    assert "50.0% of attention KV groups" in (out / "README.md").read_text()
    with pytest.raises(DietError, match="uniform mode"):
        export_model(make_lm(dense), result, tmp_path / "padded", mode="padded")


def test_masks_with_bias_compensation_are_refused_where_the_config_cannot_carry_it(tmp_path):
    dense = tiny_model("mistral")  # no mlp_bias flag (Llama has one: tests/test_compensate.py exports it)
    result = make_result(dense, [36] * 3)
    result.compensation = np.ones((3, 48), dtype=np.float32)
    with pytest.raises(DietError, match="bias compensation cannot be exported.*mlp_bias"):
        export_model(make_lm(dense), result, tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_export_into_the_base_model_folder_is_refused(tmp_path):
    dense = tiny_model("llama")
    dense.save_pretrained(tmp_path)
    with pytest.raises(DietError, match="base model's own folder"):
        export_model(make_lm(dense, path=str(tmp_path)), make_result(dense, [36] * 3), tmp_path, overwrite=True)
    assert (tmp_path / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ masks re-applied


@pytest.fixture
def base_dir(tmp_path):
    """A tiny dense model saved as a local model folder (what `--model DIR` loads)."""
    folder = tmp_path / "base"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_apply_mask_cli_reproduces_the_export_in_another_mode(base_dir, tmp_path, capsys):
    from diet.cli import main
    from diet.models import load_model

    lm = load_model(ModelSpec(name=str(base_dir), device="cpu"), say=lambda m: None)
    result = make_result(lm.model, [20, 44, 31])
    first = export_model(lm, result, tmp_path / "first", mode="padded")
    assert main(["apply-mask", "--model", str(base_dir), "--mask", str(first / "mask.json"), "--out",
                 str(tmp_path / "again"), "--export-mode", "heterogeneous", "--speed-repeats", "0",
                 "--device", "cpu"]) == 0
    assert "heterogeneous" in capsys.readouterr().out
    again = tmp_path / "again"
    expected = build_export_model(lm.model, result.keep(), "heterogeneous").state_dict()
    got = load_file(str(again / "model.safetensors"))
    assert set(got) <= set(expected) and len(got) >= len(expected) - 1  # tied lm_head may be stored once
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert json.loads((again / "mask.json").read_text())["keep"] == [k.tolist() for k in result.keep()]
    assert json.loads((again / "diet_settings.json").read_text())["mask_source"]["model_identity"] == lm.identity

    only_st = tmp_path / "shared"  # a mask shared as mask.safetensors alone
    only_st.mkdir()
    (only_st / "mask.safetensors").write_bytes((first / "mask.safetensors").read_bytes())
    assert main(["export", "--model", str(base_dir), "--mask", str(only_st / "mask.safetensors"), "--out",
                 str(tmp_path / "third"), "--speed-repeats", "0", "--device", "cpu"]) == 0
    assert np.array_equal(read_mask(tmp_path / "third" / "mask.json")[0].mask, result.mask)


def test_mask_for_another_model_is_refused_or_warned(base_dir, tmp_path, capsys):
    from diet.cli import main
    from diet.models import load_model

    lm = load_model(ModelSpec(name=str(base_dir), device="cpu"), say=lambda m: None)
    result, source = read_mask(FIXTURES / "export_mask_llama.json")  # made on tiny_model("llama", seed=0)
    warnings = []
    check_mask(result, source, lm, warnings.append)  # same shapes, other weights (saved model: other identity)
    assert len(warnings) == 1 and "not on these weights" in warnings[0]

    check_mask(result, {"model_identity": "smollm2-135m:" + lm.identity.split(":", 1)[1]}, lm, warnings.append)
    assert len(warnings) == 1, "the same files named another way are the same model"

    two_layers = copy.deepcopy(lm)
    two_layers.model.model.layers = two_layers.model.model.layers[:2]
    with pytest.raises(DietError, match="3 layers .* has 2"):
        check_mask(result, source, two_layers)
    narrow = copy.deepcopy(lm)
    narrow.model = build_export_model(lm.model, [np.arange(40)] * 3, "uniform")
    with pytest.raises(DietError, match="MLP widths"):
        check_mask(result, source, narrow)

    narrow_dir = tmp_path / "narrow"
    narrow.model.save_pretrained(narrow_dir)
    tiny_tokenizer().save_pretrained(narrow_dir)
    assert main(["apply-mask", "--model", str(narrow_dir), "--mask", str(FIXTURES / "export_mask_llama.json"),
                 "--out", str(tmp_path / "x"), "--speed-repeats", "0", "--device", "cpu"]) == 2
    assert "error: the mask's MLP widths" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_saved_mask_fixture_still_reads_and_applies(tmp_path):
    result, source = read_mask(FIXTURES / "export_mask_llama.json")
    assert source["model"] == "tiny-llama" and result.tasks == ["arithmetic", "capitals"]
    assert [len(k) for k in result.keep()] == [20, 44, 31]
    lm = make_lm(tiny_model("llama"), identity=source["model_identity"])
    out = apply_mask(lm, FIXTURES / "export_mask_llama.json", tmp_path / "out", mode="heterogeneous",
                     say=lambda m: pytest.fail(f"no warning expected: {m}"))
    assert json.loads((out / "config.json").read_text())["intermediate_sizes"] == [20, 44, 31]


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a DIET mask"),
    ('{"format": "diet-mask/1", "widths": [48, 48], "keep": [[0], [1], [2]], "settings": {}, '
     '"params_per_unit": [1, 1], "total_params": 5}', "'keep' has 3 layers"),
    ('{"format": "diet-mask/1", "widths": [48], "keep": [[48]], "settings": {}, "params_per_unit": [1], '
     '"total_params": 5}', "outside 0..47"),
    ('{"format": "diet-mask/1", "widths": [48], "keep": [[1]], "settings": {"sparsity": 2}, '
     '"params_per_unit": [1], "total_params": 5}', "sparsity"),
])
def test_malformed_mask_files_are_refused_clearly(tmp_path, content, match):
    path = tmp_path / "mask.json"
    path.write_text(content)
    with pytest.raises(DietError, match=match):
        read_mask(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", MODES)
def test_export_from_a_gpu_model_reloads_identically_on_gpu(tmp_path, mode):
    from transformers import AutoModelForCausalLM

    dense = tiny_model("gemma2").cuda()
    result = make_result(dense, kept_for(mode))
    speed = SpeedSettings(batch_sizes=(2,), seq_len=8, repeats=1, warmup=1)
    out = export_model(make_lm(dense), result, tmp_path / "out", mode=mode, speed=speed)
    assert "Measured on cuda (" in (out / "README.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=mode == "heterogeneous").cuda().eval()
    exported = build_export_model(dense, result.keep(), mode)
    with torch.no_grad():
        got, ref = reloaded(IDS.cuda()).logits, exported(IDS.cuda()).logits
    assert (got - ref).abs().max() <= 1e-5
