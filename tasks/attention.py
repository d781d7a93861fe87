"""Causal attention for the prompt pass (tasks/prefill), ~30 % faster than PyTorch's CPU kernel.

Attention is a third of SmolLM2's prompt pass at 1,000 tokens, and PyTorch's CPU flash kernel does
half again the work causal attention needs: it multiplies whole 512-key blocks even where a query
block sees only part of one. ``causal_attention.cpp`` is the same online-softmax algorithm, reading
only the keys a query block sees and multiplying the query heads that share a key/value head as one
operand. Measured on a 1,017-token prompt (9 query heads, 3 kv heads, 2 threads): 6.4-7.8 ms a layer
against 8.9-11.4 ms; results equal PyTorch's to ~3e-7.

It is C++ compiled on first use with torch's extension builder (ninja and a C++ compiler; ~30 s, once
per machine and torch version, cached under ``~/.cache/torch_extensions`` or ``TORCH_EXTENSIONS_DIR``).
``make`` builds it at install (``python -m tasks.attention``). Where it cannot be built the prompt pass
keeps PyTorch's kernel, with one warning saying why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("causal_attention.cpp")
Q_BLOCK, KV_BLOCK = 64, 512  # query rows and keys per tile: the CPU flash kernel's own sizes below 768 queries


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, use_kernel: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, causal, for queries at the last ``len(q)`` positions of ``k``/``v``.

    q: queries x heads x dim, k and v: keys x kv_heads x dim (fp32, each row's heads contiguous).
    The compiled kernel when it is available and ``use_kernel``, else PyTorch's (the same result).
    """
    ext = kernel() if use_kernel else None
    if ext is None:
        return reference_attention(q, k, v)
    out = torch.empty(q.shape, dtype=q.dtype)
    ext.causal_attention(q, k, v, out, Q_BLOCK, KV_BLOCK)
    return out


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's SDPA over the same inputs: every position's query, then the last ``len(q)`` rows kept."""
    queries, keys = q.shape[0], k.shape[0]
    if queries != keys:  # SDPA's causal mask is aligned top-left: pad the cached positions' queries
        q = torch.cat([q.new_zeros(keys - queries, *q.shape[1:]), q])
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)
    return out[0].transpose(0, 1)[keys - queries :]


@lru_cache(maxsize=1)
def kernel() -> Any | None:
    """The compiled kernel module, built on first use; None (and one warning) where it cannot be built."""
    try:
        return _build()
    except Exception as exc:  # no compiler, no ninja, an unsupported platform: PyTorch's kernel serves
        log.warning("prompt-pass attention kernel unavailable, using PyTorch's (slower): %s",
                    str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        return None


def _build() -> Any:
    from torch.utils.cpp_extension import get_default_build_root, load

    _ninja_on_path()
    flags = ["-O3", "-march=native", "-fopenmp", *_vector_flags()]
    # -march=native: a build serves the CPU it was built on; the name keys the cache by CPU, torch and source.
    key = "\n".join([SOURCE.read_text(), torch.__version__, platform.machine(), _cpu_flags(), *flags])
    name = f"ragtune_attention_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
    if not (folder / f"{name}.so").is_file():
        log.info("building the prompt-pass attention kernel in %s (~30 s, once per machine)", folder)
    folder.mkdir(parents=True, exist_ok=True)
    return load(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=str(folder))


def _ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; a venv's scripts folder, where pip puts it, is not on it unless activated."""
    if shutil.which("ninja") is None:
        scripts = Path(sys.executable).parent
        if (scripts / "ninja").is_file():
            os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"


def _vector_flags() -> list[str]:
    """Which of ATen's vector implementations to compile against: AVX-512 or AVX2 where the CPU has them."""
    flags = set(_cpu_flags().split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma"} <= flags:
        return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


@lru_cache(maxsize=1)
def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags")), "")


if __name__ == "__main__":  # `make` builds the kernel at install, so the first answer does not wait for it
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ok = kernel() is not None
    print("attention kernel: " + ("ready" if ok else "unavailable (the prompt pass uses PyTorch's kernel)"))
    sys.exit(0)
