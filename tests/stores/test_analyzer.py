"""BM25 analysis: English stems, Lucene's stop words, identifier parts."""

from __future__ import annotations

from tasks.stores.analyzer import analyze, terms


def test_stems_and_stop_words() -> None:
    assert terms("Scaling the replicas") == ["scale", "replica"]
    assert analyze("How is scaling configured?") == analyze("how IS scale configure")


def test_identifiers_add_their_parts_and_digits_stay_attached() -> None:
    assert terms("ray.data.Dataset.map_batches") == ["ray", "data", "dataset", "map_batch", "map", "batch"]
    assert terms("RayServeHandle") == ["rayservehandl", "ray", "serv", "handl"]
    assert terms("KB4194872 x86_64") == ["kb4194872", "x86_64", "x86", "64"]
    assert terms("") == [] and terms("the a of") == []
