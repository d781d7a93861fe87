"""The prompt pass's attention kernel (tasks/attention) computes PyTorch's causal attention."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from tasks import attention

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernel")


def qkv(keys: int, heads: int, kv_heads: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q/k/v as tasks/prefill lays them out: views into one row-major [q | k | v] projection."""
    rows = torch.randn(keys, (heads + 2 * kv_heads) * dim, generator=torch.Generator().manual_seed(seed))
    q = rows[:, : heads * dim].view(keys, heads, dim)
    k = rows[:, heads * dim : (heads + kv_heads) * dim].view(keys, kv_heads, dim)
    v = rows[:, (heads + kv_heads) * dim :].view(keys, kv_heads, dim)
    return q, k, v


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's causal attention with every position's query."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)
    return out[0].transpose(0, 1)


@needs_compiler
@pytest.mark.parametrize(("keys", "cached", "heads", "kv_heads", "dim"), [
    (1017, 73, 9, 3, 64),  # SmolLM2's prompt pass: a shared prefix's rows come from the cache
    (1017, 0, 9, 3, 64),
    (1100, 0, 9, 3, 64),  # several key blocks past the diagonal
    (5, 0, 9, 3, 64),  # fewer rows than a block
    (130, 129, 9, 3, 64),  # one query after a cached prefix
    (200, 31, 4, 4, 24),  # no grouping; a dim that is not a multiple of the vector width
    (77, 10, 4, 2, 16),
])
@pytest.mark.parametrize("threads", [1, 3])  # 3: more threads than work items in the small shapes
def test_the_kernel_matches_pytorch(keys: int, cached: int, heads: int, kv_heads: int, dim: int, threads: int) -> None:
    assert attention.kernel() is not None, "the attention kernel did not build"
    q, k, v = qkv(keys, heads, kv_heads, dim)
    expected = sdpa(q, k, v)[cached:]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = attention.causal_attention(q[cached:], k, v)
    finally:
        torch.set_num_threads(before)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)


@needs_compiler
def test_the_kernel_rejects_what_it_cannot_compute() -> None:
    ext = attention.kernel()
    assert ext is not None
    q, k, v = qkv(10, 4, 2, 16)
    with pytest.raises(RuntimeError, match="more queries than keys"):
        ext.causal_attention(q, k[:5], v[:5], torch.empty(q.shape), 64, 512)
    with pytest.raises(RuntimeError, match="groups of kv heads"):
        ext.causal_attention(q[:, :3], k, v, torch.empty(10, 3, 16), 64, 512)
    with pytest.raises(RuntimeError, match="float32"):
        ext.causal_attention(q.double(), k, v, torch.empty(q.shape), 64, 512)


def test_without_the_kernel_pytorch_serves_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Ninja is required to load C++ extensions")

    attention.kernel.cache_clear()
    monkeypatch.setattr(attention, "_build", no_compiler)
    try:
        with caplog.at_level(logging.WARNING, logger="tasks.attention"):
            q, k, v = qkv(300, 9, 3, 64)
            got = attention.causal_attention(q[40:], k, v)
            attention.causal_attention(q[40:], k, v)
        torch.testing.assert_close(got, sdpa(q, k, v)[40:])
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["prompt-pass attention kernel unavailable, using PyTorch's (slower): "
                            "Ninja is required to load C++ extensions"]
    finally:
        attention.kernel.cache_clear()  # the next caller builds (or loads) the real kernel again
