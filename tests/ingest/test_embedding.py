"""The embedder: sentence-transformers' own vectors, through length-bucketed batches, on the backend chosen.

Models other than the packaged MiniLM (CLS pooling, prompts): tests/ingest/test_embedding_models.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.ingest.embedding import _MIN_COSINE, Embedder
from tasks.runtime.cpu import CpuGauge, threads_beside
from tasks.runtime.loading import EmbeddingDeviceError, embedding_cache, load_embedder
from tasks.settings import Settings

TEXTS = ["Ray Serve scales deployments.", "A much longer sentence about autoscaling " * 12, "short", ""]
# real text, of the lengths chunks and questions have
SENTENCES = ["How do I configure autoscaling for a Ray Serve deployment?",
             "Ray Data streams blocks between operators, so a pipeline never holds the whole dataset in memory.",
             "Placement groups reserve resources across nodes atomically: either every bundle fits or none is "
             "reserved, and tasks scheduled into the group run on the bundles' nodes. " * 3,
             "What happens when an actor dies?", "The dashboard shows logs, metrics and the state of each task."]
# static int8's calibration set in these tests: a dozen chunk-like texts (a run takes its first 256 chunks)
CHUNKS = ["Ray Tune runs hyperparameter searches; each trial is an actor that reports metrics back to the driver.",
          "To install Ray with the dashboard, run pip install \"ray[default]\" on every node of the cluster.",
          "Objects in the object store are immutable. Pass references between tasks instead of copying the data.",
          "# Deploying on Kubernetes\n\nKubeRay's RayCluster resource describes the head node and worker groups.",
          "ray.init(address=\"auto\") connects the script to the running cluster instead of starting a new one.",
          "Fault tolerance: when a worker node fails, Ray retries its tasks and reconstructs lost objects.",
          "Serve's autoscaler reads each replica's queue length and targets a number of ongoing requests.",
          "Use num_cpus and num_gpus in @ray.remote to tell the scheduler what each task needs.",
          "Datasets read Parquet, CSV and JSON files lazily and execute the plan when it is consumed.",
          "The RLlib algorithm config sets the environment, the learners and the number of env runners.",
          "Logs of every worker are under /tmp/ray/session_latest/logs on the node that ran it.",
          "A placement group with STRICT_PACK puts all of its bundles on the same node."]


@pytest.fixture(scope="module")
def reference() -> Any:
    return load_embedder()


def test_vectors_match_sentence_transformers_in_input_order(settings: Settings, reference: Any) -> None:
    fast = Embedder(settings.models, threads=1, backend="torch")
    ours = fast.encode(TEXTS, batch_size=2)  # batches of two: length sorting must not reorder the output
    theirs = reference.encode_document(TEXTS, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() > 0.9999, cosine
    assert (fast.backend, fast.precision, fast.device) == ("torch", "fp32", "cpu")


def test_encoding_runs_on_the_torch_thread(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingestion's batches, like questions, run on the process's one torch thread (tasks.runtime.torch_thread)."""
    import threading

    embedder = Embedder(settings.models, threads=1, backend="torch")
    threads: list[str] = []
    real = embedder._pass
    monkeypatch.setattr(embedder, "_pass",
                        lambda *a, **k: threads.append(threading.current_thread().name) or real(*a, **k))
    assert embedder.encode(TEXTS, batch_size=2).shape == (len(TEXTS), 384)
    assert embedder.encode([]).shape == (0, 384)
    assert embedder.encode_queries(["a question"]).shape == (1, 384)
    assert len(threads) == 3 and all(name.startswith("ragtune-torch") for name in threads)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8", "openvino"])
def test_onnx_backends_stay_within_their_cosine_of_pytorch_fp32(settings: Settings, reference: Any,
                                                               backend: str) -> None:
    """fp32 ONNX and OpenVINO round (cosine >= 0.9999); dynamic int8 moves vectors, within the stated 0.985 on
    real text."""
    fast = Embedder(settings.models, threads=1, cache_dir=settings.cache_dir, backend=backend)
    assert (fast.backend, fast.precision) == (backend, "int8" if backend.endswith("int8") else "fp32")
    ours = np.concatenate([fast.encode(SENTENCES, batch_size=2), fast.encode_queries(SENTENCES[:2])])
    theirs = np.concatenate([reference.encode_document(SENTENCES, normalize_embeddings=True),
                             reference.encode_query(SENTENCES[:2], normalize_embeddings=True)])
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() >= _MIN_COSINE[backend], cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    if backend == "onnx-int8":
        assert cosine.min() < 0.9999  # it really runs the quantized model
    exported = embedding_cache(settings.cache_dir, Path(fast.model_dir))
    assert (exported / ("model_qint8.onnx" if backend == "onnx-int8" else "model.onnx")).exists()


def test_openvino_static_int8_is_calibrated_on_the_first_chunks_and_remembered(
        settings: Settings, reference: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Static int8 (NNCF on OpenVINO): calibrated on the first chunk texts it embeds, within the stated cosine of
    PyTorch fp32 on real text, and loaded by the next process instead of calibrating again."""
    import tasks.ingest.embedding as embedding

    monkeypatch.setattr(embedding, "CALIBRATION_TEXTS", len(CHUNKS))
    cache = settings.cache_dir / "private"  # not the shared models/ folder: this test's own calibration
    fast = Embedder(settings.models, threads=1, cache_dir=cache, backend="openvino-int8")
    assert (fast.backend, fast.precision) == ("openvino-int8", "int8")
    assert fast.encode_queries(SENTENCES[:1]).shape == (1, 384)  # questions never calibrate
    chunks = fast.encode(CHUNKS, batch_size=4)  # the first documents: the calibration set
    assert fast.calibration["openvino_int8_calibration_texts"] == len(CHUNKS)
    ours = np.concatenate([fast.encode(SENTENCES, batch_size=2), fast.encode_queries(SENTENCES[:2]), chunks])
    theirs = np.concatenate([reference.encode_document(SENTENCES, normalize_embeddings=True),
                             reference.encode_query(SENTENCES[:2], normalize_embeddings=True),
                             reference.encode_document(CHUNKS, normalize_embeddings=True)])
    cosine = (ours * theirs).sum(axis=1)
    # calibrated on 12 texts here (a run: 64): each vector within cosine 0.98 of fp32, 0.99 on average; the
    # embedder's own check on its probe sentences (>= 0.985) passed, or it would run fp32 (precision says so)
    assert fast.precision == "int8" and fast.agreement["openvino-int8"] >= _MIN_COSINE["openvino-int8"]
    assert 0.98 <= cosine.min() < 0.9999 and cosine.mean() >= 0.99, cosine  # int8, and close to fp32
    folder = embedding_cache(cache, Path(fast.model_dir))
    assert json.loads((folder / "calibration.json").read_text())["texts"] == len(CHUNKS)
    monkeypatch.setattr(embedding, "quantize_static", lambda *a: pytest.fail("calibrated twice"))
    again = Embedder(settings.models, threads=1, cache_dir=cache, backend="openvino-int8")
    np.testing.assert_allclose(again.encode(CHUNKS, batch_size=4), chunks, atol=1e-4)


def test_swapped_networks_only_on_a_tested_sentence_transformers(settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The ONNX/OpenVINO networks replace sentence-transformers' internals: on an untested release PyTorch runs."""
    import tasks.runtime.loading as loading

    monkeypatch.setattr(loading, "TESTED_SENTENCE_TRANSFORMERS", ("0.1",))
    monkeypatch.setattr(loading, "_refused", [])
    for backend in ("onnx-int8", "openvino-int8", "auto", "auto-queries"):
        fast = Embedder(settings.models, threads=1, cache_dir=settings.cache_dir, backend=backend)
        assert (fast.backend, fast.precision) == ("torch", "fp32")
    assert "ONNX/OpenVINO embedding backends are off (tested on 0.1)" in caplog.text


def test_auto_measures_once_per_host_and_remembers(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = settings.cache_dir / "private"  # not the shared models/ folder: this test's own choice file
    first = Embedder(settings.models, threads=1, cache_dir=cache)
    assert first.backend in ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
    assert set(first.calibration) == {"torch_s", "onnx_s", "onnx-int8_s", "openvino_s", "openvino-int8_s"}
    (choice,) = embedding_cache(cache, Path(first.model_dir)).glob("auto-*.json")
    assert json.loads(choice.read_text())["backend"] == first.backend
    monkeypatch.setattr(Embedder, "_measure", lambda self, path: pytest.fail("measured twice"))
    again = Embedder(settings.models, threads=1, cache_dir=cache)
    assert again.backend == first.backend and again.calibration == first.calibration
    assert Embedder(settings.models, threads=1).backend == "torch"  # no cache: nothing to export into


def test_questions_run_in_full_precision_under_auto(settings: Settings) -> None:
    from tasks.answer.retrieval import query_embedder

    questions = query_embedder(settings.model_copy(update={"models": settings.models.model_copy(
        update={"embedding_backend": "auto"})}))
    assert (questions.backend, questions.precision) == ("onnx", "fp32")
    assert Embedder(settings.models, threads=1, backend="auto-queries").backend == "torch"  # no cache: PyTorch


def test_a_backend_that_disagrees_with_fp32_is_refused_or_skipped(settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.ingest.embedding as embedding

    monkeypatch.setitem(embedding._MIN_COSINE, "onnx-int8", 1.01)  # no quantized model can pass this
    with pytest.raises(EmbeddingDeviceError, match="onnx-int8.*agrees with PyTorch fp32 only to cosine"):
        Embedder(settings.models, threads=1, cache_dir=settings.cache_dir, backend="onnx-int8")
    cache = settings.cache_dir / "private"
    assert Embedder(settings.models, threads=1, cache_dir=cache).backend in ("torch", "onnx", "openvino",
                                                                            "openvino-int8")


def test_an_unavailable_device_is_refused_with_the_reason(settings: Settings) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(EmbeddingDeviceError, match=f"models.device is '{device}' but torch sees 0 CUDA"):
            Embedder(settings.models.model_copy(update={"device": device}), threads=1)
    auto = Embedder(settings.models.model_copy(update={"device": "auto"}), threads=1, backend="torch")
    assert auto.device == "cpu"


def test_embedding_settings_refuse_unknown_values() -> None:
    from pydantic import ValidationError

    from tasks.settings import ModelSettings

    for field, value in (("device", "gpu"), ("device", "cuda:x"), ("embedding_backend", "tensorrt")):
        with pytest.raises(ValidationError):
            ModelSettings(**{field: value})


def test_threads_fit_beside_the_busy_cores() -> None:
    assert threads_beside(0.0, cores=2) == 2
    assert threads_beside(0.4, cores=2) == 2
    assert threads_beside(1.0, cores=2) == 1  # one parser process at work
    assert threads_beside(2.3, cores=2) == 1  # never fewer than one
    assert threads_beside(0.0, cores=1) == 1


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_gauge_counts_other_processes_not_this_one() -> None:
    gauge = CpuGauge()
    burn = "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", burn])
    time.sleep(0.1)
    gauge.others()
    time.sleep(0.4)  # this process idles while the child burns a core
    child_busy = gauge.others()
    child.wait()
    gauge.others()
    _spin(0.4)  # this process burns a core, nobody else does
    self_busy = gauge.others()
    assert child_busy is not None and self_busy is not None
    assert child_busy - self_busy > 0.4, (child_busy, self_busy)


def test_auto_threads_are_chosen_before_each_pass(settings: Settings) -> None:
    fast = Embedder(settings.models.model_copy(update={"torch_threads": 0}), backend="torch")
    fast.encode(TEXTS * 4, batch_size=4)
    assert sum(fast.passes_by_threads.values()) == 4
    assert all(1 <= n <= len(os.sched_getaffinity(0)) for n in fast.passes_by_threads)
