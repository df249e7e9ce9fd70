"""SentencePiece tokenizer metadata for a GGUF file, built the way llama.cpp's converter builds it.

Why: Llama-2, Mistral-7B, Phi-3 and Gemma ship a SentencePiece model (`tokenizer.model`). llama.cpp tokenizes such a
model with its own SPM tokenizer (`tokenizer.ggml.model = "llama"`), which reads every piece's text, score and type
and merges adjacent pieces by score. So the file carries the pieces exactly as `convert_hf_to_gguf.py`'s
`_create_vocab_sentencepiece` writes them (normal / unknown / control / unused / byte from the SentencePiece model,
then added tokens as user-defined or control), the special token ids and add-BOS/EOS flags, and whether a space is
put in front of the text (the model's `add_dummy_prefix`; Gemma's converter writes false, as Gemma's model says).

What llama.cpp cannot reproduce is refused with one line: a Unigram model (llama.cpp merges by score, it does not
run Unigram's best-path search), text normalization rules (llama.cpp applies none) and whitespace squeezing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from diet.errors import DietError

SPM_FILE = "tokenizer.model"
# llama.cpp token types (gguf.TokenType): the values the converter writes
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
ADDED_SCORE = -1000.0  # the score the converter gives added tokens
PAD_SCORE = -10000.0  # ... and ids the SentencePiece model does not cover ([PAD{i}])


def spm_file(folder: str | Path | None) -> Path | None:
    """The SentencePiece model of a model folder, or None when it has none."""
    if not folder:
        return None
    path = Path(folder) / SPM_FILE
    return path if path.is_file() else None


def _processor(path: Path):
    try:
        import sentencepiece
    except ImportError as e:
        raise DietError(f"writing a SentencePiece tokenizer into GGUF needs the sentencepiece package ({e}): "
                        "pip install -r requirements.txt") from e
    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    return sp


def check_reproducible(path: Path) -> bool:
    """Refuse a SentencePiece model llama.cpp's SPM tokenizer would segment differently; returns add_dummy_prefix
    (whether a space is put in front of the text, which llama.cpp calls add_space_prefix)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    if trainer.model_type != pb.TrainerSpec.BPE:
        kind = pb.TrainerSpec.ModelType.Name(trainer.model_type)
        raise DietError(f"{path.name} is a {kind} SentencePiece model; llama.cpp reproduces BPE ones only (it merges "
                        "pieces by score): export --export-mode uniform or padded instead")
    if norm.precompiled_charsmap or norm.name not in ("identity", ""):
        raise DietError(f"{path.name} normalizes text ({norm.name!r}), which llama.cpp's tokenizer does not do: "
                        "export --export-mode uniform or padded instead")
    if norm.remove_extra_whitespaces:
        raise DietError(f"{path.name} squeezes repeated spaces, which llama.cpp's tokenizer does not do: "
                        "export --export-mode uniform or padded instead")
    return bool(norm.add_dummy_prefix)


# Texts the transformers tokenizer and the SentencePiece model must split alike before a file is written: spaces,
# digits, punctuation, accents, CJK, emoji (no leading space: there transformers differs from SentencePiece itself).
PROBES = ("Hello world", "The capital of France is Paris.", "3 33 333 3.3 3..3 1314151", "a  b   c\n\nd\te",
          "I've been 'told he's there", "nǐ hǎo 我想在apple工作 нещо на Български", "🚀 (normal) 😶\u200d🌫️ ✅ 🦙🦙",
          "------=======......!!!!!!??????", "Answer: yes")


def check_agrees(sp, tokenizer, path: Path) -> None:
    """Refuse a transformers tokenizer that splits text differently from the SentencePiece model the file is built
    from (a tokenizer.json edited apart from tokenizer.model): llama.cpp would follow the model, the evaluator the
    transformers tokenizer."""
    for text in PROBES:
        ours, theirs = sp.encode(text), tokenizer.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise DietError(f"{path.name} and the transformers tokenizer split {text!r} differently ({len(ours)} vs "
                            f"{len(theirs)} tokens): export --export-mode uniform or padded instead")


def _base_pieces(sp, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """Every id's text, score and type from the SentencePiece model; ids beyond it are [PAD{i}], unused."""
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [PAD_SCORE] * vocab_size
    types = [UNUSED] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        kind = NORMAL  # user-defined pieces stay normal here; the added tokens below mark them
        if sp.IsUnknown(i):
            kind = UNKNOWN
        elif sp.IsControl(i):
            kind = CONTROL
        elif sp.IsUnused(i):
            kind = UNUSED
        elif sp.IsByte(i):
            kind = BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), float(sp.GetScore(i)), kind
    return tokens, scores, types


def looks_special(token: str) -> bool:
    """The converter's `does_token_look_special` (added tokens some models forget to mark special)."""
    pairs = (("<|", "|>"), ("<｜", "｜>"), ("<unused", ">"))
    return token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or any(
        token.startswith(a) and token.endswith(b) for a, b in pairs)


def _mark_added(tokens: list[str], scores: list[float], types: list[int], folder: Path | None, tokenizer,
                family: str) -> None:
    """Added tokens over the pieces, in place: added_tokens.json as user-defined, then the tokenizer's own added
    tokens as control (special) or user-defined. Phi-3's converter marks control by the `special` flag alone and
    keeps the text as is; the generic one also catches tokens that look special and writes '▁' as a space."""
    extra = folder / "added_tokens.json" if folder else None
    if extra is not None and extra.is_file():
        for text, i in json.loads(extra.read_text(encoding="utf-8")).items():
            if int(i) < len(tokens):
                tokens[int(i)], scores[int(i)], types[int(i)] = text, ADDED_SCORE, USER_DEFINED
    for i, added in sorted(tokenizer.added_tokens_decoder.items()):
        if i >= len(tokens):
            continue
        text = str(added.content)
        if added.special or (family != "phi3" and looks_special(text)):
            kind = CONTROL
        else:
            kind = USER_DEFINED
            text = text if family == "phi3" else text.replace("\u2581", " ")
        tokens[i], scores[i], types[i] = text, ADDED_SCORE, kind


def spm_tokenizer_fields(tokenizer, folder: str | Path | None, vocab_size: int,
                         family: str) -> list[tuple[str, object, object, object]]:
    """(key, value, type, array item type) of the tokenizer metadata for a SentencePiece tokenizer whose
    tokenizer.model lies in `folder`, as llama.cpp's converter writes it for `family`."""
    from gguf import GGUFValueType as V

    path = spm_file(folder)
    if path is None:
        raise DietError(f"no {SPM_FILE} in {folder}: the SentencePiece pieces and scores llama.cpp needs are not "
                        "there; export --export-mode uniform or padded instead")
    sp = _processor(path)
    space_prefix = check_reproducible(path)
    check_agrees(sp, tokenizer, path)
    tokens, scores, types = _base_pieces(sp, vocab_size)
    _mark_added(tokens, scores, types, Path(folder), tokenizer, family)
    special = special_vocab(tokenizer, vocab_size)
    fields = [("tokenizer.ggml.model", "llama", V.STRING, None), ("tokenizer.ggml.pre", "default", V.STRING, None),
              ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
              ("tokenizer.ggml.scores", scores, V.ARRAY, V.FLOAT32),
              ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32),
              ("tokenizer.ggml.add_space_prefix", space_prefix, V.BOOL, None)]
    return fields + special_fields(tokenizer, special)


def special_vocab(tokenizer, vocab_size: int, load_merges: bool = False):
    """gguf's own SpecialVocab (what the converter reads special ids, add-BOS/EOS flags, chat template and BPE
    merges with) over the tokenizer's saved files."""
    from gguf import SpecialVocab

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return SpecialVocab(Path(tmp), load_merges=load_merges, n_vocab=vocab_size)


def special_fields(tokenizer, special) -> list[tuple[str, object, object, object]]:
    """Special token ids, add-BOS/EOS flags (what the transformers tokenizer really adds, written out explicitly)
    and the chat template."""
    from gguf import GGUFValueType as V

    fields = []
    for kind, tid in special.special_token_ids.items():
        key = {"sep": "seperator", "pad": "padding", "unk": "unknown"}.get(kind, kind)
        fields.append((f"tokenizer.ggml.{key}_token_id", int(tid), V.UINT32, None))
    probe = tokenizer.encode("a")
    adds = {**special.add_special_token,
            "bos": tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id],
            "eos": tokenizer.eos_token_id is not None and len(probe) > 1 and probe[-1:] == [tokenizer.eos_token_id]}
    for kind, on in adds.items():
        fields.append((f"tokenizer.ggml.add_{kind}_token", bool(on), V.BOOL, None))
    if isinstance(special.chat_template, str):
        fields.append(("tokenizer.chat_template", special.chat_template, V.STRING, None))
    return fields
