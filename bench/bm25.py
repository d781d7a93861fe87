"""BM25 latency in Milvus Lite at 100k chunks: ragtune's numpy scorer beside upstream's, in the same run.

    python bench/bm25.py [--rows 100000] [--repeats 20] [--uri PATH]

The collection is bench/query.py's (its ``synthetic_corpus``: Zipf word texts; its file
``query-<rows>.db`` under the data dir, built once and reused; ``--uri`` points at a copy when another
process holds it). Query words are picked by document frequency in that corpus: the words whose chunk
counts are nearest 40, 18,000 and 80,000 (``rare``, ``mid``, ``common``), and ``mix``, a question of
five words from rare to common. Each is timed as ``IndexClient.search_bm25`` (k=10; ``mix`` also as
``search_hybrid``, dense + BM25 as `ragtune ask` searches) in three blocks, each after one untimed
warm-up search per query:

- ``bm25_*_ms``: ragtune's patch (tasks/stores/milvus_lite/search.py: validity masks, and the numpy scorer in
  tasks/stores/milvus_lite/bm25.py); ``bm25_*_first_ms``: the first search of each word, which builds its
  posting arrays (that block runs first, on a fresh client: segments load in its warm-up search);
- ``scorer_upstream_bm25_*_ms``: ragtune's masks with upstream's per-posting scorer (the scorer's share);
- ``upstream_bm25_*_ms``: all of milvus-lite's own search code.

p50 over ``repeats`` searches each; ``load_1m`` is the load average before and after. The last stdout
line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from query import _timed, build_collection, synthetic_corpus  # noqa: E402

from tasks.settings import get_settings  # noqa: E402
from tasks.stores import milvus
from tasks.stores.milvus_lite import replacements  # noqa: E402
from tasks.stores.milvus_lite import search as milvus_lite_speedup  # noqa: E402

K = 10
TARGETS = {"rare": 40, "mid": 18_000, "common": 80_000}
MODES = ("patched", "scorer_upstream", "upstream")


def pick_words(texts: list[str]) -> dict[str, tuple[str, int]]:
    """label -> (word, chunks holding it), nearest each target document frequency; ``mix``: five words
    from rare to common (and its postings, summed)."""
    df = Counter(w for t in texts for w in set(t.split()))
    by_df = sorted(df.items(), key=lambda item: item[1])
    picked = {label: min(by_df, key=lambda item: abs(item[1] - target)) for label, target in TARGETS.items()}
    between = [min(by_df, key=lambda item: abs(item[1] - len(texts) * share)) for share in (0.02, 0.25)]
    mix = [picked["rare"], between[0], picked["mid"], between[1], picked["common"]]
    picked["mix"] = (" ".join(w for w, _ in mix), sum(n for _, n in mix))
    return picked


@contextlib.contextmanager
def search_code(mode: str) -> Iterator[None]:
    """Which search code Milvus Lite runs: ragtune's patch, its masks with upstream's scorer, or upstream's."""
    from milvus_lite.index.sparse_inverted import SparseInvertedIndex

    if mode == "upstream":
        milvus_lite_speedup.disable()
    else:
        assert milvus_lite_speedup.enable(), "the speedup is off on this milvus-lite: nothing to compare"
        if mode == "scorer_upstream":
            SparseInvertedIndex.search = replacements.UPSTREAM["bm25"]
    try:
        yield
    finally:
        milvus_lite_speedup.disable()
        milvus_lite_speedup.enable()  # re-installs the patched scorer too


def time_mode(index: milvus.IndexClient, name: str, searches: dict[str, Callable[[], Any]], repeats: int,
              ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Seconds of each label's first search, then ``repeats`` timings each, in a block per label."""
    first = {label: _timed(fn) for label, fn in searches.items()}
    return first, {label: [_timed(fn) for _ in range(repeats)] for label, fn in searches.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--uri", default="", help="the Lite file (default: bench/query.py's under the data dir)")
    args = parser.parse_args()
    settings = get_settings()
    vectors, texts = synthetic_corpus(args.rows)
    words = pick_words(texts)
    uri = args.uri or str(settings.data_dir / "bench" / f"query-{args.rows}.db")
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    name, build_s = build_collection(uri, vectors, texts)
    vector = vectors[0].tolist()
    load_before = os.getloadavg()[0]
    first: dict[str, float] = {}
    times: dict[str, dict[str, list[float]]] = {}
    with milvus.IndexClient(uri) as index:
        index.ensure_loaded(name)
        # segments load and their BM25 scorers build (shared by all modes); a word in no chunk, so that no
        # posting arrays are built before the patched block's first searches
        index.search_bm25(name, "nosuchword", K)
        searches: dict[str, Callable[[], Any]] = {
            label: functools.partial(index.search_bm25, name, w, K) for label, (w, _n) in words.items()}
        searches["hybrid_mix"] = functools.partial(index.search_hybrid, name, words["mix"][0], vector, K, 50)
        for mode in MODES:
            with search_code(mode):
                mode_first, times[mode] = time_mode(index, name, searches, args.repeats)
                if mode == "patched":
                    first = mode_first
    result: dict[str, Any] = {"rows": args.rows, "k": K, "repeats": args.repeats, "numpy": np.__version__,
                              "lite_speedup": milvus_lite_speedup.active(),
                              "words": {label: {"word": w, "postings": n} for label, (w, n) in words.items()}}
    for mode in MODES:
        prefix = "" if mode == "patched" else f"{mode}_"
        for label, runs in times[mode].items():
            result[f"{prefix}{_key(label)}_ms"] = _ms(statistics.median(runs))
    for label, seconds in first.items():
        result[f"{_key(label)}_first_ms"] = _ms(seconds)
    for label in times["patched"]:
        key = _key(label)
        result[f"speedup_{key}"] = round(result[f"upstream_{key}_ms"] / result[f"{key}_ms"], 1)
    result.update({"lite_build_s": round(build_s, 1), "load_1m": [round(load_before, 2),
                                                                  round(os.getloadavg()[0], 2)]})
    print(", ".join(f"{label} ({w!r}, {n} postings): {result[f'bm25_{label}_ms']} ms vs upstream "
                    f"{result[f'upstream_bm25_{label}_ms']} ms" for label, (w, n) in words.items()))
    print(json.dumps(result))


def _key(label: str) -> str:
    """The JSON key stem of a search label: ``hybrid_mix`` as it is, a word's label as ``bm25_<label>``."""
    return label if label.startswith("hybrid") else f"bm25_{label}"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


if __name__ == "__main__":
    main()
