"""The embedding fast path: same vectors as sentence-transformers, bf16 measured only when it can pay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from tasks.ingest.embedding import _CALIBRATE_MIN_TEXTS, Embedder
from tasks.runtime.cpu import CpuGauge, threads_beside
from tasks.runtime.loading import UnsupportedEmbeddingModelError, load_embedder, load_encoder
from tasks.settings import Settings

TEXTS = ["Ray Serve scales deployments.", "A much longer sentence about autoscaling " * 12, "short", ""]


@pytest.fixture(scope="module")
def reference() -> Any:
    return load_embedder()


def test_vectors_match_sentence_transformers_in_input_order(settings: Settings, reference: Any) -> None:
    fast = Embedder(settings.models, bf16=False, threads=1)
    ours = fast.encode(TEXTS, batch_size=2)  # batches of two: length sorting must not reorder the output
    theirs = reference.encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() > 0.9999, cosine


def test_encoding_runs_on_the_torch_thread(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingestion's batches, like questions, run on the process's one torch thread (tasks.runtime.torch_thread)."""
    import threading

    embedder = Embedder(settings.models, bf16=False, threads=1)
    threads: list[str] = []
    real = embedder._forward
    monkeypatch.setattr(embedder, "_forward",
                        lambda *a, **k: threads.append(threading.current_thread().name) or real(*a, **k))
    assert embedder.encode(TEXTS, batch_size=2).shape == (len(TEXTS), 384)
    assert embedder.encode([]).shape == (0, 384)
    assert len(threads) == 2 and all(name.startswith("ragtune-torch") for name in threads)


def test_the_frozen_query_encoder_matches_the_eager_one(settings: Settings) -> None:
    eager = Embedder(settings.models, bf16=False, threads=1)
    frozen = Embedder(settings.models, bf16=False, threads=1)
    assert frozen.freeze_for_queries()
    # one question, padded batches of other lengths; repeated past TorchScript's profiling runs, after which
    # it swaps in a graph optimised for the shapes it saw
    for texts in (["How do I configure autoscaling?"], TEXTS) * 3:
        np.testing.assert_allclose(frozen.encode(texts, batch_size=2), eager.encode(texts, batch_size=2), atol=1e-5)
    assert Embedder(settings.models, bf16=True, threads=1).freeze_for_queries() is False  # autocast does not trace


def test_a_frozen_encoder_that_disagrees_is_dropped(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trace that fixed a branch wrongly (say, masks ignored) must not serve: the probe catches it."""
    embedder = Embedder(settings.models, bf16=False, threads=1)
    wrong = embedder._trace(embedder.tokenizer("a question")["input_ids"])
    monkeypatch.setattr(embedder, "_trace", lambda ids: lambda input_ids, mask: wrong(input_ids, mask.fill_(1)))
    assert embedder.freeze_for_queries() is False
    reference = Embedder(settings.models, bf16=False, threads=1)
    np.testing.assert_array_equal(embedder.encode(TEXTS), reference.encode(TEXTS))


def test_embedding_does_not_import_sentence_transformers(settings: Settings) -> None:
    """Its import alone took ~4.4 s here: a cold one-document re-index or `ragtune ask` must not pay it."""
    code = ("import sys; from tasks.settings import get_settings; from tasks.ingest.embedding import Embedder; "
            "Embedder(get_settings().models, threads=1).encode(['a question']); "
            "sys.exit('sentence_transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.parametrize(("modules", "pooling", "match"), [
    (["Transformer", "Pooling", "Normalize"], {"pooling_mode_cls_token": True}, "pooling_mode_cls_token"),
    (["Transformer", "Pooling", "Dense"], {"pooling_mode_mean_tokens": True}, "Dense"),
])
def test_an_embedding_model_pooled_otherwise_is_refused(tmp_path: Any, modules: list[str], pooling: dict[str, bool],
                                                        match: str) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    entries = [{"idx": i, "name": str(i), "path": "1_Pooling" if kind == "Pooling" else "",
                "type": f"sentence_transformers.models.{kind}"} for i, kind in enumerate(modules)]
    (tmp_path / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(UnsupportedEmbeddingModelError, match=match):
        load_encoder(str(tmp_path))


def test_a_few_texts_are_embedded_without_timing_bf16(settings: Settings) -> None:
    fast = Embedder(settings.models, threads=1)
    fast.encode(TEXTS)
    # a one-document re-index must not pay for the calibration: the decision waits for a large call
    assert fast.calibration == {}
    assert fast.bf16 in (None, False)


def test_a_large_call_decides_bf16_once(settings: Settings) -> None:
    fast = Embedder(settings.models, threads=1)
    if fast.bf16 is False:
        pytest.skip("bf16 is off in settings or this CPU has no AVX-512 bf16: nothing to decide")
    fast.encode(["a chunk of text"] * _CALIBRATE_MIN_TEXTS)
    assert fast.bf16 in (True, False)
    assert set(fast.calibration) == {"fp32_s", "bf16_s"}
    decided = fast.calibration
    fast.encode(["another chunk"] * _CALIBRATE_MIN_TEXTS)
    assert fast.calibration is decided  # measured once per model load


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
    fast = Embedder(settings.models.model_copy(update={"torch_threads": 0}),
                    bf16=False)
    fast.encode(TEXTS * 4, batch_size=4)
    assert sum(fast.passes_by_threads.values()) == 4
    assert all(1 <= n <= len(os.sched_getaffinity(0)) for n in fast.passes_by_threads)
