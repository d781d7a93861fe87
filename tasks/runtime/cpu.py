"""How many cores are free, and whether bf16 pays on this CPU: torch's thread count follows both."""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any


def free_cores() -> int:
    """Cores not busy right now: more torch threads than that is ruinous (docs/ingestion.md).

    Sampled for 0.1 s (``CpuGauge``), not read from the 1-minute load average, which still counts a
    process that ended a minute ago: bench/query.py started right after another bench took 1 thread
    on an idle machine. The load average stays the fallback where /proc/stat is missing.
    """
    busy = CpuGauge().others(settle_s=0.1)
    return threads_beside(os.getloadavg()[0] if busy is None else busy)


class CpuGauge:
    """Cores the rest of the machine kept busy since the last reading: /proc/stat's busy time less this process's.

    The load average lags by a minute and counts this process's own threads: an embedder that sized
    its threads by it when it loaded, while its own parser processes were starting, kept one thread
    for a whole run, long after parsing had ended (docs/ingestion.md). Read
    between forward passes, this follows the parser processes (children, not this process) and any
    other program as they start and stop. ``others`` is None where /proc/stat is missing.
    """

    def __init__(self) -> None:
        self._last = _cpu_times()

    def others(self, settle_s: float = 0.0) -> float | None:
        """Busy cores outside this process since the last call (after ``settle_s`` of sampling, if given)."""
        if settle_s:
            self._last = _cpu_times()
            time.sleep(settle_s)
        now, last = _cpu_times(), self._last
        self._last = now
        if now is None or last is None or now[2] - last[2] < 0.01:
            return None
        return max(0.0, (now[0] - last[0] - (now[1] - last[1])) / (now[2] - last[2]))


def _cpu_times() -> tuple[float, float, float] | None:
    """(busy seconds of the cores this process may run on, its own CPU seconds, monotonic clock), or None.

    Only the cores in this process's affinity count: a container pinned to 2 cores of a 64-core host
    must not read the host's other 62 as busy neighbours.
    """
    mine = os.sched_getaffinity(0)
    busy = 0
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            name, *ticks = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in mine:
                user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in ticks[:7])
                busy += user + nice + system + irq + softirq
    except (OSError, ValueError):
        return None
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()


def threads_beside(others: float, cores: int | None = None) -> int:
    """Torch threads that fit beside ``others`` busy cores: at least one, never more than the cores."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, min(cores, int(cores - others + 0.5)))


def configure_torch(threads: int = 0) -> int:
    import torch

    n = threads or free_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@lru_cache
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache
def cpu_bf16_pays(threads: int = 0) -> bool:
    """bf16 on this CPU only if a model-sized matmul measures faster than fp32 (about 0.5 s, once per process).

    Having the instructions is not enough: one AVX-512 bf16 VM ran bf16 GEMMs at 0.54-0.65x fp32 and
    SmolLM2 training at 0.65x (docs/training.md); elsewhere the same model trains 2x faster in bf16.
    """
    if not cpu_has_bf16():
        return False
    import torch

    previous = torch.get_num_threads()
    configure_torch(threads)
    try:
        fp32, bf16 = (_matmul_seconds(torch, dtype) for dtype in (torch.float32, torch.bfloat16))
    finally:
        torch.set_num_threads(previous)
    return bf16 < 0.9 * fp32


def _matmul_seconds(torch: Any, dtype: Any) -> float:
    """Best of five rounds of ten (512 x 576) @ (576 x 1536) products: SmolLM2's MLP shape."""
    a, b = torch.randn(512, 576).to(dtype), torch.randn(576, 1536).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, time.perf_counter() - start)
    return best

