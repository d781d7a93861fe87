"""Fixtures shared by the ingestion flow tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tasks.settings import Settings, get_settings


@pytest.fixture
def env(settings: Settings, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The flows read get_settings(): point it at this test's data dir, one parser, one torch thread."""
    for key, value in {"INGEST__PARSE_WORKERS": "1", "INGEST__BATCH_DOCS": "4", "MODELS__TORCH_THREADS": "1",
                       "MODELS__BF16": "false"}.items():
        monkeypatch.setenv(f"RAGTUNE_{key}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
