"""Write a pruned model as one GGUF file that llama.cpp (and Ollama, LM Studio, llama-cpp-python) runs natively.

Why two architectures: llama.cpp's `llama` architecture reads one MLP width for every layer, but its `deci`
architecture (built for NVIDIA's Nemotron-NAS models) reads `feed_forward_length`, `attention.head_count` and
`attention.head_count_kv` as per-layer arrays and builds every layer at its own width. So a mask that keeps the same
count everywhere is written in the family's own architecture (llama, qwen2, phi3, gemma2, gemma3: quantizers and every
llama.cpp build know them), and a per-layer mask is written as `deci` — exact widths, no zero padding (Llama, Mistral,
Qwen2, Phi-3; not Gemma). What differs per family (metadata, tensor layout, rope order) is in `families.py` beside it.

Why copy the tokenizer from the source GGUF for the embedded model: those arrays are what llama.cpp already tokenizes
the model with; for other byte-level BPE tokenizers the arrays are built the way llama.cpp's converter builds them,
SentencePiece ones (tokenizer.model) in `vocab.py` beside it, and tokenizers we cannot reproduce exactly are refused (a
GGUF that tokenizes differently would be silently wrong).

Output types: f32, f16 and bf16 keep any width. Q8_0 stores rows in blocks of 32 values, and ffn_down's row is the
layer's kept width: `q8_0` (every matrix 8-bit, byte for byte what llama.cpp's own quantizer writes) needs every width
a multiple of 32 (`--round-to 32`); `q8_0-f16down` keeps ffn_down in f16 (a per-tensor choice llama.cpp's quantizer
offers too), so any width fits, for 15% more bytes and somewhat less quantization damage (docs/export.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diet.errors import DietError
from diet.export.gguf.families import PER_LAYER_ARCH, PER_LAYER_FAMILIES, UNIFORM_ARCH
from diet.export.protocol import Options, Say, mlp_widths

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q8_0-f16down")
QUANT_BLOCK = {"q8_0": 32, "q8_0-f16down": 32}  # values per block: a row length must be a multiple of it
KEPT_F16 = {"q8_0-f16down": ("ffn_down",)}  # output type -> tensor roles written in f16 instead (the rest: that type)
GGUF_NAME = "model.gguf"


@dataclass(frozen=True)
class GGUFSettings:
    """What the GGUF writer does beyond the mask."""

    outtype: str = "f32"  # f32 / f16 / bf16 / q8_0-f16down: any width; q8_0: widths multiple of 32
    sort_channels: bool = False  # sort each layer's MLP channels by ffn_down's column max (exact; docs/export.md)
    q8_scales: str = "max"  # Q8_0 block scales: "max" (llama.cpp's own bytes) or "fit" (least squared error)


@dataclass(frozen=True)
class GGUFPlan:
    """The shape of the file: architecture and per-layer sizes, read from the pruned model's tensors."""

    family: str  # diet family name (llama, mistral, qwen2, phi3, gemma2, gemma3)
    arch: str  # llama.cpp general.architecture
    ffn: list[int]  # MLP width per layer
    heads: list[int]  # query heads per layer
    kv_heads: list[int]  # key/value heads per layer
    head_dim: int  # per-head size (q/k/v)

    @property
    def uniform(self) -> bool:
        return len(set(self.ffn)) == 1 and len(set(self.heads)) == 1 and len(set(self.kv_heads)) == 1


def _qtype(outtype: str):
    from gguf import GGMLQuantizationType as Q

    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q8_0-f16down": Q.Q8_0}[outtype]


def _file_type(outtype: str):
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
            "q8_0-f16down": F.MOSTLY_Q8_0}[outtype]


def tensor_type(name: str, outtype: str) -> str:
    """The type a matrix named `name` (e.g. blk.3.ffn_down.weight) is written in for `outtype`."""
    role = name.split(".")[-2]
    return "f16" if role in KEPT_F16.get(outtype, ()) else outtype


# ------------------------------------------------------------------------------------------------ checks


def check_request(family: str, kept_per_layer: Sequence[int], outtype: str, hidden: int | None = None,
                  config=None) -> None:
    """Refuse, before any expensive work, what the GGUF writer cannot write exactly (one line each); with the
    model's `config`, also what llama.cpp's architecture for the family would compute differently."""
    if outtype not in OUTTYPES:
        raise DietError(f"unknown GGUF output type {outtype!r}: use one of {', '.join(OUTTYPES)}")
    kept = [int(k) for k in kept_per_layer]
    uniform = len(set(kept)) == 1
    if family not in UNIFORM_ARCH:
        raise DietError(f"GGUF export supports {', '.join(UNIFORM_ARCH)} models; for {family}, export "
                        "--export-mode uniform or padded (a stock folder llama.cpp's converter reads)")
    if not uniform and family not in PER_LAYER_FAMILIES:
        raise DietError(f"{family} cannot run per-layer MLP widths in llama.cpp (its `deci` architecture has no "
                        "sandwich norms, soft-capping or embedding scale): export --export-mode uniform (same "
                        "width in every layer) or padded instead")
    if min(kept) < 1:
        raise DietError("a layer keeps no MLP channel; llama.cpp's deci architecture then also drops that layer's "
                        "attention: lower the threshold or the sparsity")
    if config is not None:
        _check_family(family, kept, config)
    block = QUANT_BLOCK.get(outtype)
    if not block:
        return
    if hidden is not None and hidden % block:
        raise DietError(f"{outtype} needs a hidden size divisible by {block}; this model's is {hidden}: use "
                        "f16, bf16 or f32")
    odd = [i for i, k in enumerate(kept) if k % block]
    if odd and "ffn_down" not in KEPT_F16.get(outtype, ()):  # ffn_down's row is the layer's width
        raise DietError(f"{outtype} stores rows in blocks of {block}, but layer {odd[0]} keeps {kept[odd[0]]} "
                        f"channels ({len(odd)} layer(s) not a multiple of {block}): add --round-to {block} "
                        "(or 64/128/256), or use q8_0-f16down (any width) or f16/bf16/f32")


def _check_family(family: str, kept: list[int], config) -> None:
    """The family checks of `families.py` on the plan the mask will give (the config's head counts)."""
    from diet.export.gguf.families import check_config, rope, rope_dims

    heads, kv = int(config.num_attention_heads), int(getattr(config, "num_key_value_heads", None) or 0)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    arch = UNIFORM_ARCH[family] if len(set(kept)) == 1 else PER_LAYER_ARCH
    plan = GGUFPlan(family, arch, kept, [heads] * len(kept), [kv or heads] * len(kept), head_dim)
    check_config(config, plan)
    rope(config, family)
    rope_dims(config, plan)


def plan_for(model) -> GGUFPlan:
    """Read the per-layer sizes from a pruned model's own tensors (no config field is trusted)."""
    from diet.adapters import get_family, gguf_parts
    from diet.export.gguf.families import layer_heads

    family = get_family(model).name
    _, layers = gguf_parts(model)
    cfg = model.config
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    ffn = [int(p["ffn_down"].in_features) for p in layers]
    heads, kv = layer_heads(model, head_dim)
    uniform = len(set(ffn)) == 1 and len(set(heads)) == 1 and len(set(kv)) == 1
    return GGUFPlan(family, UNIFORM_ARCH[family] if uniform else PER_LAYER_ARCH, ffn, heads, kv, head_dim)


# ------------------------------------------------------------------------------------------------ tensors


def _encode(name: str, a: np.ndarray, outtype: str, q8_scales: str = "max"):
    """(data, raw dtype) as llama.cpp's converter stores it: 1-D tensors (norms, biases) in F32, matrices in the
    output type (or f16 for the roles KEPT_F16 names). gguf's quantizer gives the same bytes as llama.cpp's own
    (bench/gguf_q8.py checks every tensor)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if a.ndim == 1 or outtype == "f32":
        return np.ascontiguousarray(a, dtype=np.float32), Q.F32
    outtype = tensor_type(name, outtype)
    qtype = _qtype(outtype)
    block = QUANT_BLOCK.get(outtype)
    if block and a.shape[-1] % block:
        raise DietError(f"{name}: rows of {a.shape[-1]} values do not fill {outtype} blocks of {block}: add "
                        f"--round-to {block}, or use f16/bf16/f32")
    if qtype == Q.Q8_0 and q8_scales == "fit":
        from diet.export.gguf.quant import quantize_q8_0_fit

        return quantize_q8_0_fit(a), qtype
    return quantize(np.ascontiguousarray(a, dtype=np.float32), qtype), qtype


# ------------------------------------------------------------------------------------------------ tokenizer


def embedded_tokenizer_fields(name: str) -> list[tuple[str, object, object, object]]:
    """(key, value, type, array item type) of every `tokenizer.*` field of an embedded model's source GGUF."""
    from gguf import GGUFReader, GGUFValueType

    from diet.models import embedded_gguf

    reader = GGUFReader(embedded_gguf(name))
    out = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        out.append((key, field.contents(), vtype, sub))
    return out


def tokenizer_fields(lm) -> list[tuple[str, object, object, object]]:
    """The tokenizer metadata for `lm`: copied from the source GGUF (embedded models), built from the model folder's
    SentencePiece model (tokenizer.model) or from a byte-level BPE tokenizer.json, as llama.cpp's converter does."""
    from diet.adapters import get_family
    from diet.export.gguf.vocab import spm_file, spm_tokenizer_fields
    from diet.models import EMBEDDED

    if lm.spec.name in EMBEDDED:
        return embedded_tokenizer_fields(lm.spec.name)
    vocab_size = int(lm.model.config.vocab_size)
    if spm_file(lm.path) is not None:
        return spm_tokenizer_fields(lm.tokenizer, lm.path, vocab_size, get_family(lm.model).name)
    return bpe_tokenizer_fields(lm.tokenizer, vocab_size=vocab_size)


# llama.cpp names a byte-level BPE pre-tokenizer by the sha256 of str(tokenizer.encode(CHECK_TEXT)); these are the
# values its converter (conversion/base.py, get_vocab_base_pre) lists for the tokenizers we can write.
CHECK_TEXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ '
              '(multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 '
              '3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
              '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been '
              '\'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


def _bpe_pre(tokenizer) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer, or a one-line refusal."""
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str()).get("model", {}) if backend is not None else {}
    if model.get("type") != "BPE" or "Ġ" not in " ".join(list(tokenizer.get_vocab())[:5000]):
        raise DietError("GGUF export builds tokenizer metadata for byte-level BPE tokenizers (GPT-2 style) and "
                        "SentencePiece ones (a tokenizer.model in the model folder); this tokenizer is neither: "
                        "convert the exported uniform/padded folder with llama.cpp's convert_hf_to_gguf.py instead")
    digest = hashlib.sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise DietError(f"unknown BPE pre-tokenizer (llama.cpp hash {digest[:12]}…): GGUF export knows "
                        f"{', '.join(sorted(set(PRE_TOKENIZERS.values())))}; convert an exported folder with "
                        "llama.cpp's convert_hf_to_gguf.py instead")
    return PRE_TOKENIZERS[digest]


def _bpe_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types exactly as the converter's `get_vocab_base` makes them."""
    from gguf import TokenType

    from diet.export.gguf.vocab import looks_special

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or looks_special(token):
                types.append(TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(token)
    return tokens, [int(t) for t in types]


def bpe_tokenizer_fields(tokenizer, vocab_size: int) -> list[tuple[str, object, object, object]]:
    """Tokenizer metadata for a byte-level BPE tokenizer, built as llama.cpp's converter builds it (tokens, types,
    pre-tokenizer, merges and special tokens through gguf's own SpecialVocab)."""
    from gguf import GGUFValueType as V

    from diet.export.gguf.vocab import special_fields, special_vocab

    pre = _bpe_pre(tokenizer)
    tokens, types = _bpe_tokens(tokenizer, vocab_size)
    special = special_vocab(tokenizer, vocab_size, load_merges=True)
    if not special.merges:
        raise DietError("the tokenizer has no BPE merges to write")
    fields = [("tokenizer.ggml.model", "gpt2", V.STRING, None), ("tokenizer.ggml.pre", pre, V.STRING, None),
              ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
              ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32),
              ("tokenizer.ggml.merges", list(special.merges), V.ARRAY, V.STRING)]
    return fields + special_fields(tokenizer, special)


# ------------------------------------------------------------------------------------------------ writing


def write_gguf(model, fields: list, path: str | Path, settings: GGUFSettings = GGUFSettings(),
               name: str = "pruned model", extra: dict | None = None) -> dict:
    """Write `model` (already pruned, Llama-shaped) with tokenizer `fields` to `path`; returns what was written:
    {"arch", "outtype", "params_stored", "bytes", "ffn", "heads", "kv_heads", "tensor_types" (parameters per type)}."""
    from gguf import GGML_QUANT_VERSION, GGUFValueType, GGUFWriter

    from diet.export.gguf.families import check_config, context_length, tensors, write_metadata

    plan = plan_for(model)
    cfg = model.config
    check_request(plan.family, plan.ffn, settings.outtype, int(cfg.hidden_size))
    check_config(cfg, plan)
    if settings.q8_scales not in ("max", "fit"):
        raise DietError(f"unknown Q8_0 scale rule {settings.q8_scales!r}: use max or fit")
    arrays = tensors(model, plan)  # before opening the file: a refusal leaves nothing behind
    if settings.sort_channels:
        from diet.export.gguf.quant import order_mlp_channels

        arrays = order_mlp_channels(arrays)
    encoded = [(n, *_encode(n, a, settings.outtype, settings.q8_scales)) for n, a in arrays]
    w = GGUFWriter(str(path), plan.arch)
    w.add_name(name)
    w.add_block_count(len(plan.ffn))
    w.add_context_length(context_length(cfg, plan))
    w.add_embedding_length(int(cfg.hidden_size))
    per_layer = plan.arch == PER_LAYER_ARCH
    w.add_feed_forward_length(plan.ffn if per_layer else plan.ffn[0])
    w.add_head_count(plan.heads if per_layer else plan.heads[0])
    w.add_head_count_kv(plan.kv_heads if per_layer else plan.kv_heads[0])
    w.add_key_length(plan.head_dim)
    w.add_value_length(plan.head_dim)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    write_metadata(w, cfg, plan)  # rope and what the family's architecture adds
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_file_type(_file_type(settings.outtype))
    w.add_quantization_version(GGML_QUANT_VERSION)  # as llama.cpp's converter writes it
    for key, value in (extra or {}).items():  # provenance (diet.*): llama.cpp ignores unknown keys
        w.add_key_value(key, value, GGUFValueType.STRING)
    for key, value, vtype, sub in fields:
        w.add_key_value(key, value, vtype, sub_type=sub)
    for n, data, qtype in encoded:
        w.add_tensor(n, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    types: dict[str, int] = {}  # parameters stored per tensor type
    for (_, a), (_, _, qtype) in zip(arrays, encoded):
        types[qtype.name] = types.get(qtype.name, 0) + int(a.size)
    return {"arch": plan.arch, "outtype": settings.outtype, "params_stored": int(sum(a.size for _, a in arrays)),
            "bytes": Path(path).stat().st_size, "ffn": plan.ffn, "heads": plan.heads, "kv_heads": plan.kv_heads,
            "tensor_types": types}


def check_file(path: str | Path) -> int:
    """Read a written GGUF file back with the `gguf` reader (pure Python, no llama.cpp): every tensor's data lies
    inside the file and an architecture is named. Returns the tensor count; a DietError names what is wrong.

    Why: when llama.cpp crashes on a file, this tells the file's fault from the engine's."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        size = Path(path).stat().st_size
        if "general.architecture" not in reader.fields or not reader.tensors:
            raise ValueError("no architecture or no tensors")
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError(f"tensor {t.name} ends past the end of the file")
    except Exception as e:  # noqa: BLE001 - any read error means the file is not usable
        raise DietError(f"{path} is not a valid GGUF file: {e}") from None
    return len(reader.tensors)


class GGUFWriter:
    """The `gguf` mode: one `model.gguf` (the family's architecture, or `deci` for per-layer widths)."""

    takes_bias = False
    engine_file = GGUF_NAME  # llama.cpp's tokens/s of it go on the card (diet.measure.engine_speed)
    records = ("outtype",)

    def check(self, lm, result, options: Options, say: Say) -> None:
        from diet.adapters import get_family

        ffn, _ = mlp_widths(lm, result)
        config = lm.model.config
        check_request(get_family(lm.model).name, ffn, options.outtype, int(config.hidden_size), config)

    def cut(self, model, keep: list, unit: str, release: bool):
        from diet.prune import prune_units

        return prune_units(model, keep, unit=unit, release=release)  # exact slicing; `write` makes it GGUF

    def write(self, model, lm, folder: Path, options: Options) -> dict:
        from diet.export.gguf.quant import file_tensor_types, tensor_type_words

        path = folder / GGUF_NAME
        info = write_gguf(model, tokenizer_fields(lm), path, GGUFSettings(outtype=options.outtype), name=options.name)
        return {**info, "tensor_words": tensor_type_words(file_tensor_types(path))}  # read back from the file
