"""The embedding fast path: same vectors as sentence-transformers, bf16 measured only when it can pay."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ragtune.settings import Settings
from tasks.embedding import _CALIBRATE_MIN_TEXTS, Embedder
from tasks.models import load_embedder

TEXTS = ["Ray Serve scales deployments.", "A much longer sentence about autoscaling " * 12, "short", ""]


@pytest.fixture(scope="module")
def reference() -> Any:
    return load_embedder()


def test_vectors_match_sentence_transformers_in_input_order(settings: Settings, reference: Any) -> None:
    fast = Embedder(settings, bf16=False, threads=1)
    ours = fast.encode(TEXTS, batch_size=2)  # batches of two: length sorting must not reorder the output
    theirs = reference.encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() > 0.9999, cosine


def test_a_few_texts_are_embedded_without_timing_bf16(settings: Settings) -> None:
    fast = Embedder(settings, threads=1)
    fast.encode(TEXTS)
    # a one-document re-index must not pay for the calibration: the decision waits for a large call
    assert fast.calibration == {}
    assert fast.bf16 in (None, False)


def test_a_large_call_decides_bf16_once(settings: Settings) -> None:
    fast = Embedder(settings, threads=1)
    if fast.bf16 is False:
        pytest.skip("bf16 is off in settings or this CPU has no AVX-512 bf16: nothing to decide")
    fast.encode(["a chunk of text"] * _CALIBRATE_MIN_TEXTS)
    assert fast.bf16 in (True, False)
    assert set(fast.calibration) == {"fp32_s", "bf16_s"}
    decided = fast.calibration
    fast.encode(["another chunk"] * _CALIBRATE_MIN_TEXTS)
    assert fast.calibration is decided  # measured once per model load
