"""Static int8's calibration set (tasks.ingest.embedding ``_collect``): chosen by the texts, whatever their order
or the calls they come in, and an embedder that never calibrated reports the OpenVINO fp32 that embedded."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

import tasks.ingest.embedding as embedding
from tasks.ingest.embedding import CALIBRATION_TEXTS, Embedder, _calibration_choice
from tasks.ingest.report import EmbeddingStats
from tasks.runtime.openvino_network import quantize_static
from tasks.settings import Settings
from tests.ingest.test_embedding import CHUNKS, SENTENCES

TEXTS = [f"Chunk {i}: task {i * 7 % 31} reads block {i * 13 % 97} of the dataset and reports its metrics."
         for i in range(CALIBRATION_TEXTS + 36)]


def _openvino_int8(settings: Settings) -> Embedder:
    return Embedder(settings.models, threads=1, cache_dir=settings.cache_dir, backend="openvino-int8")


@pytest.fixture
def uncalibrated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No calibration cached for the model (another test's or run's would be loaded instead)."""
    monkeypatch.setattr(embedding, "calibrated", lambda folder: None)


def test_the_same_texts_calibrate_the_same_set_in_any_order_and_split(settings: Settings, uncalibrated: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[list[str]] = []
    monkeypatch.setattr(Embedder, "_calibrate", lambda self, texts: chosen.append(texts))
    shuffled = random.Random(7).sample(TEXTS, len(TEXTS))
    for calls in ([TEXTS], [shuffled], [TEXTS[:30], TEXTS[30:]], [shuffled[:50], shuffled[50:60], shuffled[60:]]):
        fast = _openvino_int8(settings)
        for texts in calls:
            fast.encode(texts)
    assert len(chosen) == 4 and len(set(chosen[0])) == CALIBRATION_TEXTS
    assert all(texts == chosen[0] for texts in chosen), "the calibration set moved with the texts' order"


def test_a_text_more_or_less_moves_at_most_one_place_of_the_set() -> None:
    """A document quarantined in one run and not the next must not reshuffle the whole calibration set."""
    full = _calibration_choice(set(TEXTS))
    for dropped in TEXTS[::9]:
        assert len(set(full) - set(_calibration_choice(set(TEXTS) - {dropped}))) <= 1


def test_a_corpus_too_small_to_calibrate_reports_the_openvino_fp32_that_embedded_it(
        settings: Settings, uncalibrated: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding, "quantize_static", lambda *a: pytest.fail("calibrated on too few texts"))
    tiny = _openvino_int8(settings)
    vectors = tiny.encode(SENTENCES)
    fp32 = Embedder(settings.models, threads=1, cache_dir=settings.cache_dir, backend="openvino")
    np.testing.assert_allclose(vectors, fp32.encode(SENTENCES), atol=1e-5)
    report = EmbeddingStats(**tiny.stats())
    assert (report.backend, report.precision) == ("openvino", "fp32")
    assert report.calibration["openvino_int8_fp32_texts"] == len(SENTENCES)


def test_an_embedder_calibrated_after_its_first_texts_reports_int8_and_counts_them(
        settings: Settings, uncalibrated: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedding, "CALIBRATION_TEXTS", len(CHUNKS))
    monkeypatch.setattr(embedding, "quantize_static", lambda source, samples, folder: quantize_static(
        source, samples, tmp_path))  # the shared model folder keeps no test calibration
    monkeypatch.setattr(embedding, "remember", lambda *a: None)
    fast = _openvino_int8(settings)
    fast.encode(SENTENCES)  # too few: OpenVINO fp32
    vectors = fast.encode(CHUNKS)  # enough: calibrated before these
    fp32 = Embedder(settings.models, threads=1, cache_dir=settings.cache_dir, backend="openvino")
    assert ((vectors * fp32.encode(CHUNKS)).sum(axis=1) < 0.9999).any()  # int8 embedded them
    stats = fast.stats()
    assert (stats["backend"], stats["precision"]) == ("openvino-int8", "int8")
    assert stats["calibration"]["openvino_int8_fp32_texts"] == len(SENTENCES)
    assert stats["calibration"]["openvino_int8_calibration_texts"] == len(CHUNKS)
