"""GGUF export beyond byte-level BPE Llama/Qwen2: SentencePiece tokenizers, Phi-3 and Gemma-2/3.

Offline there is no real SentencePiece tokenizer, so the module trains a tiny one on the suite's own texts (BPE with
byte fallback, 400 pieces, ~0.1 s), wraps it as transformers' LlamaTokenizer / GemmaTokenizer and writes it into GGUF
the way llama.cpp's converter does. llama.cpp must then tokenize every suite text exactly as SentencePiece does and,
apart from the documented transformers differences (a text that starts with a space; chat text after an added token
with the default legacy=False Llama tokenizer), exactly as transformers. The architecture tests run tiny random
Phi-3 / Mistral / Gemma models in llama.cpp against transformers (f32: max |Δ log-prob| < 1e-4, Gemma < 1e-3; top-1
equal at every position). Cost: about 20 s in all on 2 cores (each test under 5 s).
"""

from __future__ import annotations

import ctypes
import io
import json

import numpy as np
import pytest
import torch

from diet.errors import DietError
from diet.evaluate import encode_pair
from diet.export import export_model
from tests.test_export import make_lm, make_result
from tests.test_gguf import cpp_logprobs, hf_logprobs, llama_cpp, open_gguf, suite_texts

SPM_VOCAB = 400


def train_spm(texts: list[str], **overrides) -> bytes:
    """A tiny SentencePiece model (the bytes of a tokenizer.model) trained on `texts`: BPE with byte fallback, no
    normalization, like Llama's; `overrides` change any trainer option."""
    import sentencepiece

    opts = dict(vocab_size=SPM_VOCAB, model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0,
                bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, split_digits=True, add_dummy_prefix=True,
                normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True)
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, **{**opts, **overrides})
    return buf.getvalue()


def tiny(family: str, vocab: int = SPM_VOCAB, seed: int = 0):
    """A tiny random `family` model (tests/tiny.py's config) with `vocab` entries."""
    from tests.tiny import CONFIGS

    config = CONFIGS[family]()
    config.vocab_size = vocab
    return tiny_from(config, seed)


def tiny_from(config, seed: int = 0):
    """A random model from `config`, norm weights and biases perturbed (as test_gguf's) so a wrong one shows."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sorted(suite_texts())


@pytest.fixture(scope="module")
def llama_spm(tmp_path_factory, texts):
    """(model folder with tokenizer.model, transformers LlamaTokenizer built from it)."""
    from transformers import LlamaTokenizer

    folder = tmp_path_factory.mktemp("llama-spm")
    (folder / "tokenizer.model").write_bytes(train_spm(texts))
    return folder, LlamaTokenizer.from_pretrained(folder)


def spm_lm(family: str, folder, tokenizer, name: str = "hf-model", vocab: int = SPM_VOCAB):
    """A tiny `family` model with the SentencePiece vocabulary, loaded as a Hugging Face model from `folder`."""
    model = tiny(family, vocab)
    lm = make_lm(model, name=name, path=str(folder))
    lm.tokenizer = tokenizer
    return lm


def cpp_detokenize(llm, ids: list[int]) -> str:
    """llama.cpp's own detokenizer (it drops the prefix space it added; llama-cpp-python's wrapper does not)."""
    mod = llama_cpp()
    arr = (mod.llama_token * len(ids))(*ids)
    buf = ctypes.create_string_buffer(8 * len(ids) + 64)
    n = mod.llama_detokenize(llm._model.vocab, arr, len(ids), buf, len(buf), False, False)
    assert n >= 0
    return buf.raw[:n].decode("utf-8")


@pytest.mark.parametrize("family", ["llama", "phi3"])  # Phi-3's converter marks added tokens by its own rules
def test_sentencepiece_llama_tokenizes_every_suite_text_like_sentencepiece(tmp_path, texts, llama_spm, family):
    """The SentencePiece vocabulary written as llama.cpp's converter writes it: llama.cpp tokenizes every suite text
    exactly like SentencePiece itself, and like transformers except where transformers drops SentencePiece's prefix
    space before a text that already starts with one (its Metaspace pre-tokenizer; llama.cpp and SentencePiece
    agree). The evaluator's requests never tokenize such a text alone: encode_pair gives identical ids for every
    request of the suite through either tokenizer. llama.cpp's detokenizer gives every text back, and the same text
    as transformers' decode wherever the ids agree."""
    import sentencepiece

    folder, tok = llama_spm
    lm = spm_lm(family, folder, tok)
    out = export_model(lm, make_result(lm.model, [20, 44, 31]), tmp_path / "g", mode="gguf")
    from gguf import GGUFReader

    fields = GGUFReader(out / "model.gguf").fields
    assert fields["general.architecture"].contents() == "deci"
    assert fields["tokenizer.ggml.model"].contents() == "llama" and fields["tokenizer.ggml.pre"].contents() == "default"
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is True
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert fields["tokenizer.ggml.scores"].contents()[300] == pytest.approx(sp.GetScore(300))
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[:4] == [3, 3, 3, 6] and types.count(6) == 256  # unk/bos/eos control (special added tokens), bytes
    vocab = open_gguf(out / "model.gguf", vocab_only=True)
    cpp = {s: vocab.tokenize(s.encode(), add_bos=False, special=False) for s in texts}
    assert [s for s in texts if cpp[s] != sp.encode(s)] == []
    differ = [s for s in texts if cpp[s] != tok.encode(s, add_special_tokens=False)]
    assert all(s[:1] == " " for s in differ) and len(differ) < len(texts) // 4, differ[:3]
    assert [s for s in texts if cpp_detokenize(vocab, cpp[s]) != s] == []
    differ_set = set(differ)
    same = [s for s in texts if s not in differ_set]
    assert [s for s in same if tok.decode(cpp[s]) != cpp_detokenize(vocab, cpp[s])] == []
    assert vocab.tokenize(b"Hello", add_bos=True)[:1] == tok.encode("Hello")[:1]  # BOS added exactly when HF adds it
    requests = suite_requests()
    cpp_tok = CppTokenizer(vocab, tok)
    assert [r for r in requests if encode_pair(tok, *r) != encode_pair(cpp_tok, *r)] == []


class CppTokenizer:
    """llama.cpp's tokenizer behind the few methods the evaluator's encode_pair calls."""

    def __init__(self, llm, like):
        self.llm, self.bos_token_id, self.eos_token_id = llm, like.bos_token_id, like.eos_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=add_special_tokens, special=False)

    def decode(self, ids) -> str:
        return cpp_detokenize(self.llm, [ids] if isinstance(ids, int) else list(ids))


def suite_requests() -> list[tuple[str, str]]:
    """Every (context, continuation) request of the offline suite's evaluation items."""
    from tests.test_gguf import suite_tasks

    return [r for t in suite_tasks() for item in t.evaluation for r in item.requests()]


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_sentencepiece_added_tokens_beyond_the_model(tmp_path, texts, family):
    """Chat tokens added after the SentencePiece pieces (Phi-3's <|user|> … at 32000+, in a vocabulary padded to
    32064) and a plain added word: written as control / user-defined tokens at their ids, unused [PAD] entries up to
    the model's vocabulary; llama.cpp tokenizes every suite text as transformers does (texts starting with a space
    aside, as above), and a chat turn (special tokens parsed) as SentencePiece does, segment by segment: like
    transformers' `legacy=True` Llama tokenizer. The default `legacy=False` one puts no prefix piece '▁' in front of
    the text that follows an added token; llama.cpp does (its SPM tokenizer has one switch for both places). Text
    after an added token that starts with a space differs as a text starting with a space does."""
    from gguf import GGUFReader
    from transformers import LlamaTokenizer

    (tmp_path / "tokenizer.model").write_bytes(train_spm(texts))
    chat = {"additional_special_tokens": ["<|user|>", "<|end|>", "<|assistant|>"]}
    plain = ["capitalcity"]  # not special: user-defined, matched in plain text too
    tok, legacy = LlamaTokenizer.from_pretrained(tmp_path), LlamaTokenizer.from_pretrained(tmp_path, legacy=True)
    for t in (tok, legacy):
        t.add_special_tokens(chat)
        t.add_tokens(plain)
    lm = spm_lm(family, tmp_path, tok, vocab=SPM_VOCAB + 16)
    out = export_model(lm, make_result(lm.model, [36, 36, 36]), tmp_path / "g", mode="gguf")
    fields = GGUFReader(out / "model.gguf").fields
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == SPM_VOCAB + 16 and tokens[SPM_VOCAB:SPM_VOCAB + 4] == [
        "<|user|>", "<|end|>", "<|assistant|>", "capitalcity"]
    assert types[SPM_VOCAB:SPM_VOCAB + 5] == [3, 3, 3, 4, 5] and tokens[-1] == f"[PAD{SPM_VOCAB + 15}]"
    vocab = open_gguf(out / "model.gguf", vocab_only=True)
    turn = "<|user|>\nWhich is the capitalcity?<|end|>\n<|assistant|>"  # no space after an added token: see above
    ids = vocab.tokenize(turn.encode(), add_bos=False, special=True)
    assert ids == legacy.encode(turn, add_special_tokens=False)
    prefix, added = tok.convert_tokens_to_ids("\u2581"), set(tok.added_tokens_decoder)
    after_added = [k for k in range(1, len(ids)) if ids[k] == prefix and ids[k - 1] in added]
    assert len(after_added) == 3  # after <|user|>, capitalcity and <|end|>; nothing else differs
    assert [t for k, t in enumerate(ids) if k not in after_added] == tok.encode(turn, add_special_tokens=False)
    differ = [s for s in texts if vocab.tokenize(s.encode(), add_bos=False, special=False)
              != tok.encode(s, add_special_tokens=False)]
    assert all(s[:1] == " " for s in differ)


def test_sentencepiece_refusals_are_one_line(tmp_path, texts, llama_spm):
    """What llama.cpp's SPM tokenizer cannot reproduce is refused before anything is written."""
    from transformers import LlamaTokenizer

    for name, kw in (("unigram", {"model_type": "unigram"}), ("nfkc", {"normalization_rule_name": "nmt_nfkc"}),
                     ("squeeze", {"remove_extra_whitespaces": True})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tokenizer.model").write_bytes(train_spm(texts[:2000], **kw))
        lm = spm_lm("llama", folder, LlamaTokenizer.from_pretrained(folder))
        with pytest.raises(DietError, match="uniform or padded"):
            export_model(lm, make_result(lm.model, [20, 44, 31]), tmp_path / f"out-{name}", mode="gguf")
        assert not (tmp_path / f"out-{name}").exists()
    # a transformers tokenizer that splits text unlike the folder's tokenizer.model (here: another model's)
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.model").write_bytes(train_spm(texts[:2000], vocab_size=450))
    lm = spm_lm("llama", llama_spm[0], LlamaTokenizer.from_pretrained(other))
    with pytest.raises(DietError, match="split .* differently"):
        export_model(lm, make_result(lm.model, [20, 44, 31]), tmp_path / "out-other", mode="gguf")


def gemma_spm_tokenizer(folder, texts):
    """A Gemma-style SentencePiece model (no dummy prefix; <pad> <eos> <bos> <unk> at 0-3; chat-turn pieces as
    user-defined symbols) written to `folder`, wrapped as transformers' GemmaTokenizer the way transformers converts
    a tokenizer.model."""
    from tokenizers.models import BPE
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    path = folder / "tokenizer.model"
    path.write_bytes(train_spm(texts, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                               bos_piece="<bos>", eos_piece="<eos>",
                               user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"]))
    kw = SentencePieceExtractor(str(path)).extract(BPE)
    kw.pop("_spm_precompiled_charsmap", None)
    return GemmaTokenizer(**kw)


def test_gemma_sentencepiece_tokenizes_every_suite_text_like_transformers(tmp_path, texts):
    """Gemma's SentencePiece model puts no space in front of the text (the converter writes add_space_prefix false):
    llama.cpp then tokenizes every suite text exactly like transformers and SentencePiece, chat-turn pieces included."""
    import sentencepiece
    from gguf import GGUFReader

    tok = gemma_spm_tokenizer(tmp_path, texts)
    lm = spm_lm("gemma2", tmp_path, tok)
    out = export_model(lm, make_result(lm.model, [36, 36, 36]), tmp_path / "g", mode="gguf")
    fields = GGUFReader(out / "model.gguf").fields
    assert fields["general.architecture"].contents() == "gemma2"
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is False
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    vocab = open_gguf(out / "model.gguf", vocab_only=True)
    cpp = {s: vocab.tokenize(s.encode(), add_bos=False, special=False) for s in texts}
    assert [s for s in texts if cpp[s] != tok.encode(s, add_special_tokens=False)] == []
    assert [s for s in texts if cpp[s] != sp.encode(s)] == []
    assert [s for s in texts if cpp_detokenize(vocab, cpp[s]) != s] == []
    assert [s for s in texts if tok.decode(cpp[s]) != s] == []
    turn = "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
    assert vocab.tokenize(turn.encode(), add_bos=False, special=True) == tok.encode(turn, add_special_tokens=False)


# ------------------------------------------------------------------------------------------------ architectures
# Tiny random models with the tiny SentencePiece vocabulary (400 entries: reading and writing the file stays cheap).
# llama.cpp picks its tokenizer from tokenizer.ggml.model, not from the architecture, so it serves every family.


def family_config(kind: str, **overrides):
    """A tiny config of `kind` (phi3, mistral, gemma2, gemma3) with the SentencePiece vocabulary; `overrides` go to the
    constructor, so derived fields (layer_types, rope parameters) follow them."""
    from transformers import Gemma2Config, Gemma3TextConfig, MistralConfig, Phi3Config

    from tests.tiny import COMMON

    base = {**COMMON, "vocab_size": SPM_VOCAB}
    gemma = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=16)
    if kind in ("phi3", "mistral"):
        return (Phi3Config if kind == "phi3" else MistralConfig)(**{**base, **overrides})
    if kind == "gemma2":
        return Gemma2Config(**{**base, **gemma, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
                               **overrides})
    return Gemma3TextConfig(**{**base, **gemma, **overrides})


def export_arch(tmp_path, spm, config, kept: list[int], name: str = "g"):
    """(output folder, the transformers pruned model) of a GGUF export of a tiny model from `config` with the
    SentencePiece tokenizer `spm` (folder, tokenizer)."""
    from diet.api import prune_copy

    model = tiny_from(config)
    lm = make_lm(model, name="hf-model", path=str(spm[0]))
    lm.tokenizer = spm[1]
    result = make_result(model, kept)
    out = export_model(lm, result, tmp_path / name, mode="gguf")
    return out, prune_copy(lm, result)


LONG_IDS = [int(i) for i in torch.randint(3, SPM_VOCAB, (40,), generator=torch.Generator().manual_seed(1))]
# 40 positions: past the tiny Gemmas' 16-token sliding window


def compare(out, pruned, ids=LONG_IDS) -> tuple[float, bool]:
    """(max |Δ log-prob| over every position and vocabulary entry, top-1 equal at every position)."""
    a, b = cpp_logprobs(open_gguf(out / "model.gguf"), ids), hf_logprobs(pruned, ids)
    return float(np.abs(a - b).max()), bool((a.argmax(-1) == b.argmax(-1)).all())


def gguf_tensors(out) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {t.name: np.array(t.data) for t in GGUFReader(out / "model.gguf").tensors}


@pytest.mark.parametrize("overrides,kept,arch", [
    ({}, [36, 36, 36], "phi3"),  # fused attn_qkv and ffn_up (gate rows, then up rows) as the converter writes them
    ({}, [20, 44, 31], "deci"),  # per-layer widths: qkv and gate_up split, q/k permuted for NORM rope
    ({"partial_rotary_factor": 0.5}, [36, 36, 36], "phi3"),  # half of each head rotated (Phi-4-mini style)
    # a sliding window: neither llama.cpp's phi3 nor deci slides, so the file declares the window as its context
    ({"sliding_window": 20}, [36, 36, 36], "phi3"), ({"sliding_window": 20}, [20, 44, 31], "deci"),
])
def test_phi3_gguf_runs_in_llama_cpp_like_transformers(tmp_path, llama_spm, overrides, kept, arch):
    from gguf import GGUFReader

    out, pruned = export_arch(tmp_path, llama_spm, family_config("phi3", **overrides), kept)
    assert json.loads((out / "diet_settings.json").read_text())["arch"] == arch
    context = GGUFReader(out / "model.gguf").fields[f"{arch}.context_length"].contents()
    window = overrides.get("sliding_window")
    assert context == (window or 128)
    t = gguf_tensors(out)
    if arch == "phi3":
        assert "blk.0.attn_qkv.weight" in t and "blk.0.ffn_gate.weight" not in t
        assert t["blk.0.ffn_up.weight"].shape == (2 * 36, 32)  # gguf lists [in, out]; numpy shows (out, in)
    else:
        assert "blk.0.attn_qkv.weight" not in t and t["blk.1.ffn_gate.weight"].shape == (44, 32)
    worst, top1 = compare(out, pruned, LONG_IDS[:context])
    assert worst < 1e-4 and top1, worst


LINEAR_ROPE = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}


@pytest.mark.parametrize("overrides,kept,arch", [
    ({"sliding_window": 20}, [36, 36, 36], "llama"), ({"sliding_window": 20}, [20, 44, 31], "deci"),
    ({"rope_parameters": LINEAR_ROPE}, [36, 36, 36], "llama"), ({"rope_parameters": LINEAR_ROPE}, [20, 44, 31], "deci"),
])
def test_mistral_window_and_linear_rope(tmp_path, llama_spm, overrides, kept, arch):
    """Mistral-7B-v0.1 slides its attention (4,096 tokens), llama.cpp's llama and deci do not: the file declares the
    window as its context, and within it llama.cpp computes what transformers does. Linear rope scaling is written
    as llama.cpp's linear frequency scale."""
    from gguf import GGUFReader

    out, pruned = export_arch(tmp_path, llama_spm, family_config("mistral", **overrides), kept)
    context = GGUFReader(out / "model.gguf").fields[f"{arch}.context_length"].contents()
    assert context == overrides.get("sliding_window", 128)
    worst, top1 = compare(out, pruned, LONG_IDS[:context])
    assert worst < 1e-4 and top1, worst


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 1e5}
# head_dim 16 (8 frequencies): wavelengths 6.3 .. 2.9e4 positions against the 16 .. 64 band, so the factors are
# 1 (short), 1.86 (blended) and 8 (long, six of them)


@pytest.mark.parametrize("kept,arch", [([36, 36, 36], "llama"), ([20, 44, 31], "deci")])
def test_llama3_rope_writes_rope_freqs_like_the_converter(tmp_path, llama_spm, kept, arch):
    """Llama-3.1/3.2's llama3 rope is written as llama.cpp's converter writes it: no scaling type, and one divisor
    per rotary frequency in rope_freqs.weight, which llama.cpp's llama and deci both apply. The factors equal
    transformers' own (default over llama3 frequencies), and llama.cpp's log-probs equal transformers' (by hand:
    1.2e-7 llama, 1.5e-7 deci, f32); the same files written without rope_freqs were measured 1.2e-3 off (both), and
    the last check keeps the factors mattering here: transformers with plain rope is as far from the file."""
    import copy

    from gguf import GGUFReader
    from transformers import LlamaConfig

    from tests.tiny import COMMON

    config = LlamaConfig(**{**COMMON, "vocab_size": SPM_VOCAB, "head_dim": 16, "rope_parameters": LLAMA3_ROPE})
    out, pruned = export_arch(tmp_path, llama_spm, config, kept)
    fields = GGUFReader(out / "model.gguf").fields
    assert fields["general.architecture"].contents() == arch
    assert f"{arch}.rope.scaling.type" not in fields
    factors = gguf_tensors(out)["rope_freqs.weight"]
    plain = 1.0 / (1e5 ** (torch.arange(0, 16, 2).float() / 16))
    assert np.allclose(factors, (plain / pruned.model.rotary_emb.inv_freq).numpy(), rtol=1e-6)
    assert factors[0] == 1.0 and 1.0 < factors[1] < 8.0 and (factors[2:] == 8.0).all()
    worst, top1 = compare(out, pruned)
    assert worst < 1e-4 and top1, worst
    unscaled = copy.deepcopy(pruned)
    unscaled.model.rotary_emb.inv_freq.copy_(plain)
    assert compare(out, unscaled)[0] > 5e-4


@pytest.mark.parametrize("kind,overrides", [
    ("gemma2", {"num_hidden_layers": 4}),  # sliding / global alternate; attention and final soft-capping
    ("gemma3", {"num_hidden_layers": 7, "rope_parameters": {  # layer 5 global; linear rope scaling on global layers
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
])
def test_gemma_uniform_gguf_runs_in_llama_cpp_like_transformers(tmp_path, llama_spm, kind, overrides):
    """Gemma-2/3 with uniform widths in their own architectures: norms stored + 1, sandwich norms, q/k norms
    (Gemma-3), embedding scale, soft-capping and the sliding window all as llama.cpp computes them. f32 agreement is
    ~2e-4 here (mostly llama.cpp's GELU, a half-precision table lookup); a wrong norm, window or rope base costs far
    more."""
    config = family_config(kind, **overrides)
    layers = config.num_hidden_layers
    out, pruned = export_arch(tmp_path, llama_spm, config, [36] * layers)
    assert json.loads((out / "diet_settings.json").read_text())["arch"] == kind
    t = gguf_tensors(out)
    norm = pruned.model.layers[1].post_feedforward_layernorm.weight.detach().numpy()
    assert np.array_equal(t["blk.1.post_ffw_norm.weight"], norm + 1)
    assert ("blk.0.attn_q_norm.weight" in t) == (kind == "gemma3")
    worst, top1 = compare(out, pruned)
    assert worst < 1e-3 and top1, worst
    import copy

    wide = copy.deepcopy(pruned)  # the same model without its sliding window: the window is exercised here
    wide.config.sliding_window = 4096
    assert compare(out, wide)[0] > 1e-2


def test_family_refusals_are_one_line(tmp_path, llama_spm):
    """What llama.cpp would compute differently is refused (one line each), and no output is left behind."""
    from transformers import Qwen2Config

    from tests.tiny import COMMON

    cases = [
        (family_config("gemma3"), [20, 44, 31], "uniform.*padded"),  # per-layer widths: deci has no Gemma blocks
        (family_config("gemma2", query_pre_attn_scalar=16), [36] * 3, r"1/sqrt\(8\)"),
        (family_config("phi3", partial_rotary_factor=0.5), [20, 44, 31], "partial rotary"),
        (family_config("phi3", rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "long_factor": [1.0] * 4, "short_factor": [1.0] * 4,
            "original_max_position_embeddings": 64}), [36] * 3, "longrope"),
        (family_config("mistral", rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                   "original_max_position_embeddings": 64}), [36] * 3, "yarn"),
        (family_config("mistral", rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}),
         [20, 44, 31], "dynamic"),
        (Qwen2Config(**{**COMMON, "vocab_size": SPM_VOCAB, "rope_parameters": LLAMA3_ROPE}), [36] * 3, "llama3"),
    ]
    for i, (config, kept, message) in enumerate(cases):
        with pytest.raises(DietError, match=message):
            export_arch(tmp_path, llama_spm, config, kept, name=f"r{i}")
        assert not (tmp_path / f"r{i}").exists()
    # per-layer attention heads (uniform MLP widths) of a Gemma would need deci too
    from diet import masks as M
    from diet.adapters import model_shape
    from diet.api import MaskResult
    from diet.settings import MaskSettings

    model = tiny_from(family_config("gemma2"))
    shape = model_shape(model, "heads")
    mask = np.array([[True, False], [True, True], [False, True]])
    result = MaskResult(["a"], MaskSettings(sparsity=0.5), mask[None], mask, M.votes(mask[None]), shape,
                        {**M.param_summary(mask, shape), "kept_per_layer": [1, 2, 1]})
    lm = make_lm(model, name="hf-model", path=str(llama_spm[0]))
    lm.tokenizer = llama_spm[1]
    with pytest.raises(DietError, match="head counts.*uniform or padded"):
        export_model(lm, result, tmp_path / "heads", mode="gguf")
    assert not (tmp_path / "heads").exists()
