"""Ingestion throughput beside plain SentenceTransformer.encode, re-run cost, and event-to-searchable latency.

    python bench/ingest.py [CORPUS_DIR] [--raw-sample 1024] [--index-chunks 10000] [--keep DIR]
    python bench/ingest.py [CORPUS_DIR] --workers 2 [--docs 200]   # sharded ingestion: bench/shards.py

CORPUS_DIR defaults to the Ray docs (../shared/data/ray_docs_qa/docs). Every measured run is a fresh
process talking to one Prefect API (a temporary server started here), so the re-run proves the
record persists and no step pays for an in-process cache:

0. the embedder prepared once, as on a new host (ONNX export and int8 quantization into the cache, the
   "auto" backend measured and remembered): ``embedder_prepare_s``, not part of the runs below;
1. first ingestion of the corpus (end-to-end chunks/s, seconds per stage, the backend that ran; OpenVINO's
   static int8 is calibrated on this run's first chunk texts, inside the run: ``embedding.calibration``);
2. raw throughput of ``SentenceTransformer.encode`` (default settings, batch 32, PyTorch fp32 on the CPU)
   on the same chunk texts (a uniform random sample of ``--raw-sample`` of them; 0 = all), in its own process;
   with ``--backends``, ragtune's Embedder on the same texts with each backend, one process each (openvino-int8
   loads the model step 1 calibrated, if step 1 ran it; else it calibrates first, timed apart), and each
   backend's least cosine to PyTorch fp32 over those texts (``backend_cosine_min``, ``..._mean``);
3. an unchanged re-run: ``rerun_share`` = its time / the first run's time;
4. one document changed: time from its change event to the changed text being searchable, in a
   warm process (model and parsers loaded, as a long-lived worker holds them) and a cold one, on an
   index of at least ``--index-chunks`` chunks (a smaller corpus is topped up with synthetic rows:
   bench/query.py's random unit vectors and Zipf-word texts under their own document ids).

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "ray_docs_qa" / "docs"
MARKER = "Quetzalcoatlus benchmarks fly over the ingestion pipeline"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", default=str(DEFAULT_CORPUS))
    parser.add_argument("--raw-sample", type=int, default=1024, help="Chunk texts for the raw encode baseline.")
    parser.add_argument("--step", default="", help=argparse.SUPPRESS)
    parser.add_argument("--index-chunks", type=int, default=10_000, help="Index size for the event steps.")
    parser.add_argument("--keep", default="", help="Data dir to use and keep (default: a temporary one).")
    parser.add_argument("--workers", type=int, default=0, help="Instead: sharded ingestion, --shards N on N process "
                        "workers against one worker and an unsharded run (bench/shards.py).")
    parser.add_argument("--docs", type=int, default=200, help="With --workers: the corpus' first N files.")
    parser.add_argument("--backends", action="store_true", help="Also: chunks/s of each embedding backend on the "
                        "raw baseline's texts.")
    parser.add_argument("--backend", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        data = Path(args.keep or tmp)
        if args.workers:
            from bench.shards import compare_workers

            print(json.dumps(compare_workers(Path(args.corpus).resolve(), data, args.workers, args.docs)), flush=True)
        else:
            print(json.dumps(run_all(args, data)), flush=True)


BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")


def run_all(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    corpus = Path(args.corpus).resolve()
    work = data / "corpus"  # a private copy: step 4 edits one document
    data.mkdir(parents=True, exist_ok=True)
    shutil.copytree(corpus, work)
    with prefect_test_harness(server_startup_timeout=180):
        env = {**os.environ, "RAGTUNE_DATA_DIR": str(data), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        prepared = _step("prepare", work, env, args)
        first = _step("ingest", work, env, args)
        raw = _step("raw", work, env, args)
        backends = {b: _step("embed", work, env, args, b) for b in BACKENDS} if args.backends else {}
        rerun = _step("ingest", work, env, args)
        _step("pad", work, env, args)
        warm = _step("event", work, env, args)
        cold = _step("event-cold", work, env, args)
    r = first["report"]
    e2e = r["chunks_written"] / first["seconds"]
    return {
        "corpus": str(corpus), "documents": r["added"], "quarantined": r["quarantined"], "chunks": r["chunks_written"],
        "seconds": first["seconds"], "stage_seconds": r["seconds"], "chunks_per_s": round(e2e, 2),
        "raw_encode_chunks_per_s": round(raw["chunks_per_s"], 2), "raw_encode_sample": raw["texts"],
        "ratio_vs_raw_encode": round(e2e / raw["chunks_per_s"], 3),
        "embedding_backend": (r["embedding"] or {}).get("backend"), "embedder_prepare_s": prepared["seconds"],
        "backend_chunks_per_s": {b: round(x["chunks_per_s"], 2) for b, x in backends.items()},
        "backend_vs_raw_encode": {b: round(x["chunks_per_s"] / raw["chunks_per_s"], 3) for b, x in backends.items()},
        "backend_cosine_min": {b: x["cosine_min"] for b, x in backends.items()},
        "backend_cosine_mean": {b: x["cosine_mean"] for b, x in backends.items()},
        "backend_calibration": {b: x["calibration"] for b, x in backends.items() if x["calibration"]},
        "embedding": r["embedding"], "rerun_seconds": rerun["seconds"],
        "rerun_share": round(rerun["seconds"] / first["seconds"], 4),
        "rerun_unchanged": rerun["report"]["unchanged"], "index_chunks": warm["index_chunks"],
        "event_to_searchable_s": warm["event_to_searchable_s"],
        "event_to_searchable_cold_s": cold["event_to_searchable_s"], "load_avg": os.getloadavg()[0],
    }


def _step(name: str, corpus: Path, env: dict[str, str], args: argparse.Namespace, backend: str = "") -> dict[str, Any]:
    argv = [sys.executable, __file__, str(corpus), "--step", name, "--raw-sample", str(args.raw_sample),
            "--index-chunks", str(args.index_chunks), "--backend", backend]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name}: {json.dumps(result)[:400]}", file=sys.stderr, flush=True)
    return result


def step_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from flows.ingest import ingest_documents

    start = time.perf_counter()
    report = ingest_documents(args.corpus)
    return {"seconds": round(time.perf_counter() - start, 3),
            "report": report.model_dump(mode="json", exclude={"quarantine"})}


def step_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """The embedder as a new host first builds it: exports, quantization, the "auto" measurement (cached)."""
    from tasks.ingest.plan import embedder
    from tasks.settings import get_settings

    start = time.perf_counter()
    emb = embedder(get_settings())
    return {"seconds": round(time.perf_counter() - start, 3), "backend": emb.backend, "calibration": emb.calibration}


def step_raw(args: argparse.Namespace) -> dict[str, Any]:
    """Plain SentenceTransformer.encode, default settings (its own threads), batch 32, PyTorch fp32 on the CPU,
    same chunk texts: the baseline, whatever backend ragtune runs."""
    import numpy as np

    from tasks.runtime.loading import load_embedder
    from tasks.settings import get_settings

    texts = _sample(args)
    model = load_embedder(device="cpu")
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=32)
    seconds = time.perf_counter() - start
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(get_settings().data_dir / "raw_vectors.npy", vectors / norms)  # the reference of step_embed's cosine
    return {"texts": len(texts), "seconds": round(seconds, 3), "chunks_per_s": len(texts) / seconds}


def step_embed(args: argparse.Namespace) -> dict[str, Any]:
    """ragtune's Embedder with one backend on the raw baseline's texts (batch 64, threads following the cores),
    and its vectors' cosine to PyTorch fp32's (step_raw's, of the same texts)."""
    import numpy as np

    from tasks.ingest.embedding import CALIBRATION_TEXTS, Embedder
    from tasks.settings import get_settings

    settings = get_settings()
    texts = _sample(args)
    emb = Embedder(settings.models, cache_dir=settings.cache_dir, backend=args.backend)
    if emb._calibration_set is not None:  # openvino-int8 never calibrated here: do it first, timed apart
        emb.encode(texts[:CALIBRATION_TEXTS], settings.ingest.embed_batch_size)
    start = time.perf_counter()
    vectors = emb.encode(texts, settings.ingest.embed_batch_size)
    seconds = time.perf_counter() - start
    cosine = (vectors * np.load(settings.data_dir / "raw_vectors.npy")).sum(axis=1)
    return {"texts": len(texts), "seconds": round(seconds, 3), "chunks_per_s": len(texts) / seconds,
            "backend": emb.backend, "precision": emb.precision, "calibration": emb.calibration,
            "cosine_min": round(float(cosine.min()), 5), "cosine_mean": round(float(np.mean(cosine)), 5)}


def _sample(args: argparse.Namespace) -> list[str]:
    from tasks.settings import get_settings
    from tasks.stores.milvus import IndexClient

    settings = get_settings()
    with IndexClient.from_settings(settings) as index:
        texts = [r["text"] for batch in index.iter_rows(settings.milvus.collection, fields=["text"]) for r in batch]
    return random.Random(0).sample(texts, min(args.raw_sample, len(texts))) if args.raw_sample else texts


def step_pad(args: argparse.Namespace) -> dict[str, Any]:
    """Top the index up to ``--index-chunks`` rows with bench/query.py's synthetic chunks (flushed)."""
    from bench.query import synthetic_corpus, synthetic_row
    from tasks.settings import get_settings
    from tasks.stores.milvus import IndexClient

    settings = get_settings()
    with IndexClient.from_settings(settings) as index:
        name = settings.milvus.collection
        missing = max(0, args.index_chunks - index.count(name))
        vectors, texts = synthetic_corpus(missing)
        for lo in range(0, missing, 2000):
            rows = range(lo, min(lo + 2000, missing))
            index.insert_rows(name, [synthetic_row(i, vectors[i], texts[i]) for i in rows])
        index.flush(name)
        return {"added": missing, "index_chunks": index.count(name)}


def step_event(args: argparse.Namespace, warm: bool = True) -> dict[str, Any]:
    """Change one document, emit its event, re-index it as the trigger would, poll until searchable."""
    start_process = time.perf_counter()
    from flows.reindex import reindex_document
    from tasks.ingest.inventory import open_source
    from tasks.ingest.plan import embedder, warm_up
    from tasks.ingest.watch import CHANGED, emit_document_event
    from tasks.settings import get_settings
    from tasks.stores.milvus import IndexClient

    settings = get_settings()
    source = open_source(args.corpus, settings)
    target = next(f for f in sorted(source.list(), key=lambda f: f.size) if f.suffix == ".md" and f.size > 2000)
    if warm:  # a long-lived worker: model loaded and parser processes up before the event arrives
        warm_up(settings)
    marker = f"{MARKER} {'at dawn' if warm else 'at dusk'} on run {os.getpid()}"  # unique in a kept data dir
    path = Path(args.corpus) / target.path
    start = time.perf_counter() if warm else start_process
    path.write_text(path.read_text() + f"\n\n## Benchmark note\n\n{marker}.\n")
    now = source.stat(target.path)
    emit_document_event(CHANGED, target.uri, source.uri, (now.size, now.version) if now else None)
    report = reindex_document([target.uri], source=source.uri)
    vector = embedder(settings).encode([marker])[0]
    with IndexClient.from_settings(settings) as index:
        only_target = f'uri == "{target.uri}"'  # the document's own chunks: an earlier run's marker cannot answer
        while not any(marker in h.text for h in index.search_dense("docs", vector, 5, filter=only_target)):
            if time.perf_counter() - start > 120:
                raise SystemExit(f"{target.path}: the change is not searchable after 120 s; re-index said {report}")
            time.sleep(0.05)
        chunks = index.count("docs")
    return {"event_to_searchable_s": round(time.perf_counter() - start, 3), "index_chunks": chunks,
            "updated": report.updated, "document": target.path, "stage_seconds": report.seconds,
            "process_s": round(time.perf_counter() - start_process, 3)}


STEPS = {"prepare": step_prepare, "ingest": step_ingest, "raw": step_raw, "embed": step_embed, "pad": step_pad,
         "event": step_event, "event-cold": lambda a: step_event(a, warm=False)}

if __name__ == "__main__":
    main()
