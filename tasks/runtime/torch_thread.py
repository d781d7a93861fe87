"""The process's one torch thread: every torch op of a ragtune process runs there."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_TORCH_THREAD = "ragtune-torch"
_TORCH_POOL: ThreadPoolExecutor | None = None
_TORCH_POOL_LOCK = threading.Lock()


def on_torch_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the process's one answering thread and return its result (its exception re-raised).

    Every torch op of a ragtune process runs on this one thread: embedding (ingestion batches and
    questions), model loads, the prompt pass, decoding and model evaluation.
    libgomp keeps an idle OpenMP pool for each thread that ever ran a parallel op, and once the pools'
    threads outnumber the cores it throttles every pool's spin-wait: each of decoding's ~200 small
    parallel ops a token then waits for a futex wake-up: decoding in a second thread ran at about two
    thirds of its speed in the thread that had run the prompt pass (docs/retrieval.md, session 7).
    """
    if in_torch_thread():
        return fn(*args, **kwargs)
    return torch_pool().submit(fn, *args, **kwargs).result()


def in_torch_thread() -> bool:
    """Whether the caller already is the answering thread (work submitted from it would wait on itself)."""
    return threading.current_thread().name.startswith(_TORCH_THREAD)


def torch_pool() -> ThreadPoolExecutor:
    """The single-thread executor behind ``on_torch_thread`` (for work that streams, submit and iterate)."""
    global _TORCH_POOL
    with _TORCH_POOL_LOCK:
        if _TORCH_POOL is None:
            _TORCH_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_TORCH_THREAD)
        return _TORCH_POOL

