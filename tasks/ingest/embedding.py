"""Embedding: any sentence-transformers model, on a GPU or the fastest CPU backend measured, length-bucketed.

The model is sentence-transformers' own (``SentenceTransformer`` from its folder): pooling, normalisation,
extra modules and the prompts its config names (``query: `` / ``passage: ``...) are the library's, and
documents and questions go through ``encode_document`` / ``encode_query``. What the library does not do
stays here: batches of similar token length capped by padded tokens (``_batches``), torch and ONNX Runtime
threads that never exceed the free cores, re-measured between passes (a run's parser processes take
cores while they parse and give them back), and the choice of backend.

Backends on a CPU (``models.embedding_backend``): PyTorch fp32, the same network exported to ONNX Runtime in
fp32 or dynamically quantized to int8 (tasks.runtime.loading.onnx_network; exported once into the cache), or
that export on OpenVINO in fp32 or statically quantized to int8 by NNCF (tasks.runtime.openvino_network),
calibrated on the corpus' own chunk texts (``_collect``: the same corpus, the same set; OpenVINO fp32 runs
until then, and the run report says so; the calibrated model is cached and later processes load it). Each is
checked against PyTorch fp32 on probe sentences when it loads (``_MIN_COSINE``: int8 moves vectors, fp32 only
rounds them); "auto" keeps the fastest of those that pass on a realistic batch, measured once per host and model
and remembered in the cache (a cold one-document re-index must not time five backends); questions under "auto"
run fp32 ONNX instead (``QUERY_AUTO``). On CUDA the model runs in PyTorch, bf16 or fp16. The networks stand in for the
transformers model inside sentence-transformers only on a release they were tested in
(``network_swap_tested``); on another every CPU backend is PyTorch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.runtime.cpu import CpuGauge, configure_torch, threads_beside
from tasks.runtime.loading import (
    BACKENDS,
    EmbeddingDeviceError,
    embedding_cache,
    load_embedder,
    network_swap_tested,
    onnx_network,
    openvino_network,
    resolve_device,
)
from tasks.runtime.openvino_network import calibrated, quantize_static, remember
from tasks.runtime.sources import embedding_source
from tasks.runtime.torch_thread import on_torch_thread
from tasks.settings import ModelSettings

_MAX_BATCH_TOKENS = 16384  # padded tokens per forward pass: keeps activations small for long texts
# least cosine to PyTorch fp32 over the probe sentences: fp32 ONNX only rounds; int8 measured 0.991-0.995 on them
# (0.96 on a two-letter text: short texts move most) and SciFact's nDCG@10 moved by docs/ingestion.md's figure
_MIN_COSINE = {"onnx": 0.9999, "onnx-int8": 0.985, "openvino": 0.9999, "openvino-int8": 0.985}
PRECISION = {"torch": "fp32", "onnx": "fp32", "onnx-int8": "int8", "openvino": "fp32", "openvino-int8": "int8"}
CALIBRATION_TEXTS = 64  # chunk texts static int8 calibrates on: as close to fp32 as 128 or 256, in a third of the time
# Questions under "auto": full precision, ONNX (a short question: 4 ms against eager PyTorch's 13). int8 questions
# cost SciFact nDCG@10 0.006, int8 documents with fp32 questions none (docs/ingestion.md).
QUERY_AUTO = "auto-queries"
log = logging.getLogger(__name__)


class Embedder:
    """The embedding model, loaded once; vectors are float32 and unit length, in the order of the texts."""

    def __init__(self, models: ModelSettings, bf16: bool | None = None, threads: int | None = None,
                 cache_dir: Path | None = None, backend: str | None = None):
        """``bf16=False``: no half precision on CUDA either. ``cache_dir``: where ONNX exports and the "auto"
        choice live; without one only PyTorch runs. ``backend`` overrides ``models.embedding_backend``."""
        fixed = models.torch_threads if threads is None else threads
        self.threads = configure_torch(fixed)
        self._gauge = CpuGauge() if not fixed else None  # auto: threads follow the free cores, pass by pass
        self.passes_by_threads: Counter[int] = Counter()
        source = embedding_source(models.embedding)
        self.name, self._dir, self._cache_dir = source.name, source.path, cache_dir
        self.device = resolve_device(models.device)
        self.model = load_embedder(models.embedding, self.device)
        self.tokenizer = self.model.tokenizer
        self.max_length = int(self.model.max_seq_length or self.tokenizer.model_max_length)
        self.dim = int(self.model.get_embedding_dimension() or 0)
        self.calibration: dict[str, float] = {}
        self.agreement: dict[str, float] = {}  # least cosine of each loaded backend to PyTorch fp32
        self._transformer: Any = self.model[0]
        self._networks: dict[str, Any] = {"torch": self._transformer.model}
        self._calibration_set: set[str] | None = None  # openvino-int8 before calibration: the texts seen
        self._fp32_documents = 0  # document texts openvino-int8 embedded in OpenVINO fp32 before it was calibrated
        if self.device != "cpu":
            self.backend, self.precision = "torch", self._half(models.bf16 and bf16 is not False)
        else:
            self.backend = self._choose(backend or models.embedding_backend)
            self.precision = PRECISION[self.backend]

    @property
    def model_dir(self) -> str:
        return str(self._dir)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def stats(self) -> dict[str, Any]:
        """What the ingest report's ``embedding`` says about this embedder: the backend and precision that
        embedded its documents (``_embedded_by``)."""
        backend, precision = self._embedded_by()
        calibration = {**self.calibration, **({"openvino_int8_fp32_texts": self._fp32_documents}
                                               if self._fp32_documents else {})}
        return {"backend": backend, "device": self.device, "precision": precision, "bf16": self.bf16,
                "threads": self.threads, "passes_by_threads": dict(self.passes_by_threads),
                "calibration": calibration}

    def _embedded_by(self) -> tuple[str, str]:
        """openvino-int8 that never embedded a document in int8 (a corpus of fewer than ``CALIBRATION_TEXTS``
        texts, or a calibration that failed) embedded in OpenVINO fp32, and says so; one that was calibrated
        after its first texts counts those in ``openvino_int8_fp32_texts``."""
        pending = self._calibration_set is not None and self._fp32_documents > 0
        if self.backend == "openvino-int8" and (pending or self.precision == "fp32"):
            return "openvino", "fp32"
        return self.backend, self.precision

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit document vectors (the model's document prompt, if any) for ``texts`` in their order, computed
        on the process's one torch thread (``tasks.runtime.torch_thread``: a second thread's OpenMP pool
        would slow both)."""
        return self._on_thread(texts, batch_size, "document")

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit query vectors: as ``encode``, with the model's query prompt (if it defines one)."""
        return self._on_thread(texts, batch_size, "query")

    def _on_thread(self, texts: Sequence[str], batch_size: int, kind: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return on_torch_thread(self._encode, texts, batch_size, kind)

    def _encode(self, texts: Sequence[str], batch_size: int, kind: str) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        self.threads = configure_torch(self.threads)  # thread counts are per thread: set this one's
        prompt = self._prompt(kind)
        lengths = self.tokenizer([prompt + t for t in texts], truncation=True, max_length=self.max_length,
                                 return_length=True)["length"]
        batches = list(_batches(np.argsort(lengths, kind="stable"), lengths, batch_size))
        if kind == "document" and self.backend == "openvino-int8" and self._calibration_set is not None:
            self._collect(texts)
            if self._calibration_set is not None:  # still too few texts: OpenVINO fp32 embeds these
                self._fp32_documents += len(texts)
        gauge = self._gauge if len(batches) > 1 else None  # one pass (a query, a small document): no sampling
        others = gauge.others(settle_s=0.05) if gauge else None  # cores busy right now
        for batch in batches:
            self._fit_threads(others)
            out[batch] = self._pass([texts[i] for i in batch], kind)
            others = gauge.others() if gauge else None  # during that pass
        return out

    def _pass(self, texts: list[str], kind: str, backend: str | None = None) -> np.ndarray:
        """One forward pass through sentence-transformers, with ``backend``'s network (default: the chosen)."""
        self._transformer.model = self._networks[backend or self.backend]
        encode = self.model.encode_query if kind == "query" else self.model.encode_document
        vectors = encode(texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def _prompt(self, kind: str) -> str:
        """The prompt sentence-transformers prepends for ``kind``, as encode_query/encode_document choose it
        (only to measure lengths for the batches: the library adds it itself)."""
        prompts = self.model.prompts
        names = ["query"] if kind == "query" else ["document", "passage", "corpus"]
        name = next((n for n in names if n in prompts), self.model.default_prompt_name)
        return str(prompts.get(name or "", "") or "")

    def _fit_threads(self, others: float | None) -> None:
        """Auto threads: as many as the cores other processes (our parsers among them) left free."""
        if others is not None and (n := threads_beside(others)) != self.threads:
            self.threads = configure_torch(n)
        if self.backend != "torch":
            self._networks[self.backend].threads = self.threads
        self.passes_by_threads[self.threads] += 1

    def _half(self, bf16: bool) -> str:
        import torch

        dtype = torch.bfloat16 if bf16 and torch.cuda.is_bf16_supported() else torch.float16
        self.model.to(dtype)
        return "bf16" if dtype == torch.bfloat16 else "fp16"

    def _choose(self, wanted: str) -> str:
        """The backend to run: the one asked for (refused with the reason if it cannot load or disagrees with
        PyTorch fp32), for "auto" the fastest that agrees, remembered per host and model in the cache, and for
        "auto-queries" ONNX fp32 where it loads, else PyTorch (``QUERY_AUTO``)."""
        if wanted == QUERY_AUTO:
            usable = self._cache_dir is not None and network_swap_tested()
            return "onnx" if usable and self._load("onnx") else "torch"
        if wanted not in ("auto", *BACKENDS):
            raise EmbeddingDeviceError(f"unknown embedding backend {wanted!r}: use auto, {', '.join(BACKENDS)}")
        if wanted != "torch" and not network_swap_tested():
            return "torch"
        if wanted != "auto":
            if wanted != "torch":
                self._load(wanted, strict=True)
            return wanted
        if self._cache_dir is None:
            return "torch"
        remembered = self._choice_file()
        if remembered.exists():
            choice = json.loads(remembered.read_text())
            if choice.get("backend") in BACKENDS and (choice["backend"] == "torch" or self._load(choice["backend"])):
                self.calibration = {**choice.get("seconds", {}), **self.calibration}
                return str(choice["backend"])
        return self._measure(remembered)

    def _load(self, backend: str, strict: bool = False) -> bool:
        """Load ``backend``'s network and check its vectors against PyTorch fp32's on the probe sentences."""
        if backend in self._networks:
            return True
        self._transformer.model = self._networks["torch"]  # what the export reads
        try:
            self._networks[backend] = self._network(backend)
        except ImportError as exc:
            if strict:
                needs = "openvino nncf" if backend.startswith("openvino") else "onnxruntime onnx"
                raise EmbeddingDeviceError(f"embedding backend {backend!r} needs {needs} ({exc}): "
                                           f"pip install {needs}") from None
            return False
        cosine = self._agreement(backend)
        if cosine >= _MIN_COSINE[backend]:
            return True
        del self._networks[backend]
        why = f"embedding backend {backend!r} agrees with PyTorch fp32 only to cosine {cosine:.4f} " \
              f"(needs {_MIN_COSINE[backend]}) on {self.name}"
        if strict:
            raise EmbeddingDeviceError(why + ": use RAGTUNE_MODELS__EMBEDDING_BACKEND=torch")
        log.warning("%s: not used", why)
        return False

    def _network(self, backend: str) -> Any:
        if not backend.startswith("openvino"):
            return onnx_network(self.model, self._dir, self._need_cache(), int8=backend.endswith("int8"))
        network = openvino_network(self.model, self._dir, self._need_cache())
        if backend == "openvino-int8":
            if importlib.util.find_spec("nncf") is None:
                raise ImportError("No module named 'nncf'")
            if found := calibrated(embedding_cache(self._need_cache(), self._dir)):
                network.use(found[0])
                self.calibration["openvino_int8_calibration_texts"] = found[1].get("texts", 0)
            else:
                self._calibration_set = set()  # fp32 until enough chunk texts arrived (``_collect``)
        return network

    def _agreement(self, backend: str) -> float:
        """Least cosine of ``backend``'s vectors to PyTorch fp32's over the probe sentences."""
        cosine = float((self._pass(_PROBES, "document", backend) * self._pass(_PROBES, "document", "torch"))
                       .sum(axis=1).min())
        self.agreement[backend] = round(cosine, 5)
        return cosine

    def _collect(self, texts: Sequence[str]) -> None:
        """Static int8's calibration set: once the distinct document texts seen reach ``CALIBRATION_TEXTS``, the
        ``CALIBRATION_TEXTS`` of them with the smallest SHA-256 (``_calibration_choice``); then calibrate, before
        this call's vectors.

        Chosen by digest, not by position: the same texts give the same set in any order and however the calls
        split them, and a document more or less in the first batches (a parse that timed out) changes only its
        own texts' places, not a stride over all of them. The first call rarely holds 64 texts alone
        (tasks.ingest.plan.batched: batches of 4, 8, 16 then ``batch_docs`` documents; ~38 chunks in the Ray
        docs' first four, ~8 in SciFact's), so the set spans a run's first calls, embedded in OpenVINO fp32
        meanwhile (``_embedded_by``). Calibrating sooner on fewer texts would make the corpus' cached calibration
        worse for good: on Ray docs paragraphs, probe cosine 0.9976 / mean 0.9962 to fp32 on 128 others with 64
        texts, 0.9951 / 0.9950 with 16, 0.9902 / 0.9914 with 8, 0.955 with 4 (refused)."""
        assert self._calibration_set is not None
        self._calibration_set.update(texts)
        if len(self._calibration_set) >= CALIBRATION_TEXTS:
            texts, self._calibration_set = _calibration_choice(self._calibration_set), None
            try:
                self._calibrate(texts)
            except Exception as exc:  # a run must not fail for a faster path: OpenVINO fp32 embeds on
                self.precision = "fp32"
                log.warning("static int8 calibration failed (%s: %s): embedding in OpenVINO fp32",
                            type(exc).__name__, exc)

    def _calibrate(self, texts: list[str]) -> None:
        """Quantize the OpenVINO network on ``texts`` (as the model tokenizes documents); keep it if it agrees
        with PyTorch fp32 (then later processes load it), else stay in fp32 and say why."""
        start = time.perf_counter()
        network = self._networks["openvino-int8"]
        folder = embedding_cache(self._need_cache(), self._dir)
        int8, fp32 = quantize_static(folder / "model.onnx", self._samples(texts), folder), network.source
        network.use(int8)
        cosine = self._agreement("openvino-int8")
        seconds = round(time.perf_counter() - start, 3)
        self.calibration.update(openvino_int8_calibration_texts=len(texts), openvino_int8_calibration_s=seconds)
        if cosine >= _MIN_COSINE["openvino-int8"]:
            remember(folder, int8, {"texts": len(texts), "agreement": round(cosine, 5), "seconds": seconds})
            return
        network.use(fp32)
        self.precision = "fp32"
        log.warning("static int8 calibrated on %d texts agrees with PyTorch fp32 only to cosine %.4f (needs %s) "
                    "on %s: embedding in OpenVINO fp32", len(texts), cosine, _MIN_COSINE["openvino-int8"], self.name)

    def _samples(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """One calibration sample per text, tokenized as the model tokenizes documents (prompt included)."""
        names, prompt = self._networks["openvino-int8"].names, self._prompt("document") or None
        return [{k: v.numpy() for k, v in self.model.preprocess([t], prompt=prompt).items() if k in names}
                for t in texts]

    def _need_cache(self) -> Path:
        if self._cache_dir is None:
            raise EmbeddingDeviceError("ONNX embedding backends export the model into the cache: no cache_dir given")
        return self._cache_dir

    def _measure(self, remembered: Path) -> str:
        """Time a realistic batch (16 texts of ~128 tokens) on each agreeing backend, interleaved, best of two."""
        candidates = ["torch", *(b for b in BACKENDS[1:] if self._load(b))]
        batch = [" ".join(f"word{(i * 7 + j) % 500}" for j in range(60)) for i in range(16)]
        best = dict.fromkeys(candidates, float("inf"))
        uncalibrated = self._networks["openvino-int8"] if "openvino-int8" in candidates and \
            self._calibration_set is not None else None
        if uncalibrated is not None:  # no corpus seen yet: its speed, calibrated on the timing batch itself
            fp32, folder = uncalibrated.source, embedding_cache(self._need_cache(), self._dir)
            uncalibrated.use(quantize_static(folder / "model.onnx", self._samples(batch), folder))
        for _ in range(2):
            for backend in candidates:
                start = time.perf_counter()
                self._pass(batch, "document", backend)
                best[backend] = min(best[backend], time.perf_counter() - start)
        if uncalibrated is not None:
            uncalibrated.use(fp32)
        self.calibration.update({f"{b}_s": round(s, 4) for b, s in best.items()})
        choice = min(best, key=lambda b: best[b])
        tmp = remembered.with_name(f"{remembered.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"backend": choice, "seconds": self.calibration, "agreement": self.agreement}))
        tmp.rename(remembered)
        return choice

    def _choice_file(self) -> Path:
        """One remembered choice per model folder, CPU model and core count (another host measures again)."""
        host = f"{platform.machine()}-{_cpu_model()}-{len(os.sched_getaffinity(0))}".replace(" ", "_")
        folder = embedding_cache(self._need_cache(), self._dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"auto-v2-{host[:100]}.json"  # v2: with the OpenVINO backends (v1 chose among three)


_PROBES = ["How do I scale a deployment?", "Ray Serve replicas handle requests in parallel across the cluster.",
           "Autoscaling adds replicas when the queue grows, and removes them when traffic falls. " * 4,
           "The actor pool restarts failed workers.", "Datasets stream blocks between operators."]


def _calibration_choice(texts: set[str]) -> list[str]:
    """The ``CALIBRATION_TEXTS`` texts with the smallest SHA-256 (Python's ``hash`` is salted per process)."""
    return sorted(texts, key=lambda t: hashlib.sha256(t.encode()).digest())[:CALIBRATION_TEXTS]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _batches(order: np.ndarray, lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive runs of the length-sorted order, capped by count and by padded tokens."""
    batch: list[int] = []
    for i in order.tolist():
        width = lengths[i]  # sorted ascending: the newest is the widest
        if batch and (len(batch) >= batch_size or width * (len(batch) + 1) > _MAX_BATCH_TOKENS):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
