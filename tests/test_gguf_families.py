"""GGUF export beyond byte-level BPE Llama/Qwen2: SentencePiece tokenizers, Phi-3 and Gemma-2/3.

Offline there is no real SentencePiece tokenizer, so the module trains a tiny one on the suite's own texts (BPE with
byte fallback, 400 pieces, ~0.1 s), wraps it as transformers' LlamaTokenizer / GemmaTokenizer and writes it into GGUF
the way llama.cpp's converter does. llama.cpp must then tokenize every suite text exactly as SentencePiece does and,
apart from the one documented transformers difference (a text that starts with a space), exactly as transformers.
The architecture tests run tiny random Phi-3 / Gemma models in llama.cpp against transformers (f32: max |Δ log-prob|
< 1e-4, top-1 equal). Cost: about 15 s in all.
"""

from __future__ import annotations

import ctypes
import io

import pytest
import torch

from diet.errors import DietError
from diet.export import export_model
from tests.test_export import make_lm, make_result
from tests.test_gguf import llama_cpp, open_gguf, suite_texts

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


def tiny(family: str, vocab: int = SPM_VOCAB, seed: int = 0, **config):
    """A tiny random `family` model with `vocab` entries (norm weights and biases perturbed, as test_gguf's)."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import CONFIGS

    torch.manual_seed(seed)
    cfg = CONFIGS[family]()
    cfg.vocab_size = vocab
    for key, value in config.items():
        setattr(cfg, key, value)
    model = AutoModelForCausalLM.from_config(cfg)
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


def spm_lm(family: str, folder, tokenizer, name: str = "hf-model"):
    """A tiny `family` model with the SentencePiece vocabulary, loaded as a Hugging Face model from `folder`."""
    model = tiny(family)
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


def test_sentencepiece_llama_tokenizes_every_suite_text_like_sentencepiece(tmp_path, texts, llama_spm):
    """The SentencePiece vocabulary written as llama.cpp's converter writes it: llama.cpp tokenizes every suite text
    exactly like SentencePiece itself, and like transformers except where transformers drops SentencePiece's prefix
    space before a text that already starts with one (its Metaspace pre-tokenizer; llama.cpp and SentencePiece
    agree). Every context the evaluator feeds starts without a space, so the evaluator's token ids are identical.
    Detokenizing gives the text back."""
    import sentencepiece

    folder, tok = llama_spm
    out = export_model(spm_lm("llama", folder, tok), make_result(tiny("llama"), [20, 44, 31]),
                       tmp_path / "g", mode="gguf")
    from gguf import GGUFReader

    fields = GGUFReader(out / "model.gguf").fields
    assert fields["tokenizer.ggml.model"].contents() == "llama" and fields["tokenizer.ggml.pre"].contents() == "default"
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
    assert vocab.tokenize(b"Hello", add_bos=True)[:1] == tok.encode("Hello")[:1]  # BOS added exactly when HF adds it


def test_sentencepiece_refusals_are_one_line(tmp_path, texts):
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
