"""Embedding fast path: one model load per run, bf16 autocast, length-sorted batches, normalized.

bf16 autocast on an AVX-512 bf16 CPU is much faster than fp32 on some hosts and slower on others,
or on the same host under contention (docs/ingestion.md). So the choice is measured
(``_bf16_pays_off``), not assumed -- once, on the first call with enough texts to pay for it: a
one-document re-index embeds a handful of chunks, and a cold process should not spend seconds timing
both paths for them. Batches of similar token length waste no padding; torch threads never exceed
the free cores (more threads than free cores is ruinous on a busy machine), re-measured before every
forward pass: a run's parser processes take cores while they parse and give them back when they are done.

Queries (``freeze_for_queries``): one question is ~20 tokens, and eager PyTorch spends its time on
~300 small ops, 37 of them GEMMs that MKL runs at under half its large-matrix rate. The same network
traced, frozen and optimised for inference (TorchScript: constant weights, linears pre-packed for
oneDNN) encodes it in about half the time, with vectors equal to the eager ones up to float rounding
(checked on every freeze). MKL-packed weights in eager mode, ``torch.compile`` with freezing and
bf16/fp16 weights were measured and dropped (docs/retrieval.md, the query path).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from tasks.runtime.cpu import CpuGauge, configure_torch, cpu_has_bf16, threads_beside
from tasks.runtime.loading import load_encoder
from tasks.runtime.sources import embedding_source
from tasks.runtime.torch_thread import on_torch_thread
from tasks.settings import ModelSettings

_MAX_BATCH_TOKENS = 16384  # padded tokens per forward pass: keeps activations small for long texts
_CALIBRATE_MIN_TEXTS = 256  # fewer texts than this are embedded in fp32 without measuring bf16
_FROZEN_TOLERANCE = 1e-4  # largest |frozen - eager| accepted on the probe batch (measured: ~2e-6)
log = logging.getLogger(__name__)


class Embedder:
    """The embedding model, loaded once, with the fast path; vectors are float32 and unit length."""

    def __init__(self, models: ModelSettings, bf16: bool | None = None, threads: int | None = None):
        import torch

        fixed = models.torch_threads if threads is None else threads
        self.threads = configure_torch(fixed)
        self._gauge = CpuGauge() if not fixed else None  # auto: threads follow the free cores, pass by pass
        self.passes_by_threads: Counter[int] = Counter()
        source = embedding_source(models.embedding)
        self.name = source.name
        encoder = load_encoder(models.embedding)
        self.transformer = encoder.model
        self.calibration: dict[str, float] = {}
        self.tokenizer = encoder.tokenizer
        self.max_length = encoder.max_length
        self.dim = encoder.dim
        self._torch = torch
        self.bf16 = bf16 if bf16 is not None else _bf16_undecided(models)
        self._frozen: Any = None  # the traced encoder (freeze_for_queries), used instead of the eager one

    @property
    def model_dir(self) -> str:
        return str(embedding_source().path)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit vectors for ``texts`` in their order (length-sorted internally), computed on the process's one
        torch thread (``tasks.runtime.torch_thread.on_torch_thread``: a second thread's OpenMP pool would slow both)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return on_torch_thread(self._encode, texts, batch_size)

    def _encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        self.threads = configure_torch(self.threads)  # thread counts are per thread: set this one's
        if self.bf16 is None and len(texts) >= _CALIBRATE_MIN_TEXTS:
            self.bf16 = self._bf16_pays_off()
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=self.max_length)
        order = np.argsort([len(x) for x in ids["input_ids"]], kind="stable")
        batches = list(_batches(order, ids["input_ids"], batch_size))
        gauge = self._gauge if len(batches) > 1 else None  # one pass (a query, a small document): no sampling
        others = gauge.others(settle_s=0.05) if gauge else None  # cores busy right now
        with self._torch.inference_mode(), self._autocast():
            for batch in batches:
                self._fit_threads(others)
                out[batch] = self._forward([ids["input_ids"][i] for i in batch])
                others = gauge.others() if gauge else None  # during that pass
        return out

    def freeze_for_queries(self) -> bool:
        """Trace, freeze and optimise the encoder for many small calls (questions); False, and the eager model
        kept, where the model runs bf16 (autocast does not trace), tracing fails or the frozen outputs differ
        from the eager ones on a padded probe batch (a future transformers whose masks trace differently)."""
        if self.bf16 is not False or self._frozen is not None:
            return self._frozen is not None
        probe = [self.tokenizer(t)["input_ids"] for t in ("How do I reset it?", _PROBE_LONG)]
        try:
            frozen = self._trace(probe[0])
            with self._torch.inference_mode():
                diff = float(np.abs(self._forward(probe, frozen) - self._forward(probe)).max())
        except Exception as exc:  # tracing is an optimisation: any failure keeps the eager model
            log.warning("the query encoder stays eager: tracing it failed (%s)", exc)
            return False
        if diff > _FROZEN_TOLERANCE:
            log.warning("the query encoder stays eager: its frozen trace differs by %.1e on a probe", diff)
            return False
        self._frozen = frozen
        return True

    def _trace(self, ids: list[int]) -> Any:
        torch = self._torch
        example = (torch.tensor([ids]), torch.ones((1, len(ids)), dtype=torch.long))
        with warnings.catch_warnings(), torch.no_grad():
            # deprecated in favour of torch.compile, which measured slower and compiles for tens of seconds; the
            # tracer's "converted to a Python boolean" notes are the encoder's fixed branches (not causal,
            # no cache), and the probe check above catches a branch that should not have been fixed
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_last_hidden(self.transformer), example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def _fit_threads(self, others: float | None) -> None:
        """Auto threads: as many as the cores other processes (our parsers among them) left free."""
        if others is not None and (n := threads_beside(others)) != self.threads:
            self.threads = configure_torch(n)
        self.passes_by_threads[self.threads] += 1

    def _forward(self, sequences: list[list[int]], network: Any = None) -> np.ndarray:
        """Unit vectors of ``sequences``, through ``network`` (input_ids, mask -> last hidden state) when given,
        else the frozen encoder when there is one, else the eager one."""
        torch = self._torch
        network = network if network is not None else self._frozen
        width = max(len(s) for s in sequences)
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        if network is not None:
            hidden = network(input_ids, mask).float()
        else:
            hidden = self.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        # Mean pooling over real tokens, then L2 normalisation: the model's own Pooling + Normalize modules.
        summed = (hidden * mask.unsqueeze(-1)).sum(1)
        pooled = summed / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    def _bf16_pays_off(self) -> bool:
        """Time a realistic batch both ways (interleaved, best of two) and keep bf16 only if faster."""
        batch = [[101] + [1000 + (i * 7 + j) % 20000 for j in range(126)] + [102] for i in range(16)]
        best = {False: float("inf"), True: float("inf")}
        with self._torch.inference_mode():
            for use in (False, True, False, True):
                self.bf16 = use
                start = time.perf_counter()
                with self._autocast():
                    self._forward(batch)
                best[use] = min(best[use], time.perf_counter() - start)
        self.calibration = {"fp32_s": round(best[False], 4), "bf16_s": round(best[True], 4)}
        return best[True] < 0.9 * best[False]

    def _autocast(self) -> Any:
        if self.bf16:
            return self._torch.autocast("cpu", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()


_PROBE_LONG = "A longer probe sentence, padded beside the short one, so that the trace is checked with a mask."


def _last_hidden(transformer: Any) -> Any:
    """The encoder as a module of (input_ids, attention_mask) -> last hidden state, the signature traced."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden()


def _bf16_undecided(models: ModelSettings) -> bool | None:
    """False where bf16 is off or impossible; None = possible, measured on the first large ``encode`` call."""
    return None if models.bf16 and cpu_has_bf16() else False


def _batches(order: np.ndarray, sequences: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Consecutive runs of the length-sorted order, capped by count and by padded tokens."""
    batch: list[int] = []
    for i in order.tolist():
        width = len(sequences[i])  # sorted ascending: the newest is the widest
        if batch and (len(batch) >= batch_size or width * (len(batch) + 1) > _MAX_BATCH_TOKENS):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
