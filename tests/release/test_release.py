"""Releases: the gate decision, retention planning (pure), and manifests, pointer, uploads and index
snapshots against a real SeaweedFS and Milvus Lite."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.release import gate
from tasks.release import manifest as rel
from tasks.release.publish import download_files, upload_checkpoint
from tasks.release.retention import apply_retention, plan_from_store, plan_retention, stale_uploads
from tasks.release.snapshot import SnapshotError, export_snapshot, restore_snapshot, upload_snapshot
from tasks.settings import Settings
from tasks.stores.milvus import IndexClient
from tasks.stores.s3 import ObjectInfo, S3Error, S3Store, Upload
from tasks.types import Chunk, DocRecord, IndexMeta

TOL = {"retrieval.hit@k": 0.02, "model.loss": 0.05}


# --- the gate decision (pure) -------------------------------------------------------------------------
def test_first_release_is_gated_against_the_baseline() -> None:
    """No production release: production's metrics are the base model's and no index's, compared like any."""
    baseline = {"retrieval.hit@k": 0.0, "model.loss": 1.90}
    worse = gate.decide({"retrieval.hit@k": 0.5, "model.loss": 2.40}, baseline, TOL, baseline="the base model")
    assert not worse.promote and worse.production_release is None and worse.baseline == "the base model"
    assert "first release is gated against the base model" in worse.reasons[0]
    assert any(r.startswith("REGRESSED: model.loss 1.9000 -> 2.4000") for r in worse.reasons)
    better = gate.decide({"retrieval.hit@k": 0.5, "model.loss": 1.80}, baseline, TOL, baseline="the base model")
    assert better.promote and better.production == baseline
    assert "production: the base model" in gate.decision_markdown(better)
    later = gate.decide({"model.loss": 1.8}, {"model.loss": 1.9}, TOL, production_release="r1")
    assert later.baseline == "release r1" and not later.reasons[0].startswith("no production")


def test_regression_beyond_tolerance_is_refused_with_a_reason_per_metric() -> None:
    decision = gate.decide({"retrieval.hit@k": 0.60, "model.loss": 2.00},
                          {"retrieval.hit@k": 0.70, "model.loss": 1.90}, TOL, production_release="r1")
    assert not decision.promote
    text = "\n".join(decision.reasons)
    assert "REGRESSED: model.loss 1.9000 -> 2.0000 (+0.1000, tolerance 0.05)" in text  # lower is better
    assert "REGRESSED: retrieval.hit@k 0.7000 -> 0.6000 (-0.1000, tolerance 0.02)" in text
    assert "REFUSE" in gate.decision_markdown(decision)


def test_within_tolerance_and_improvements_are_promoted() -> None:
    decision = gate.decide({"retrieval.hit@k": 0.69, "model.loss": 1.5},
                          {"retrieval.hit@k": 0.70, "model.loss": 1.9}, TOL)
    assert decision.promote
    assert sum(r.startswith("ok:") for r in decision.reasons) == 2


def test_missing_candidate_metric_refuses_and_force_is_recorded() -> None:
    refused = gate.decide({}, {"retrieval.hit@k": 0.7}, TOL, production_release="r1")
    assert not refused.promote and refused.reasons[0].startswith("MISSING")
    forced = gate.decide({}, {"retrieval.hit@k": 0.7}, TOL, force=True, production_release="r1")
    assert forced.promote and forced.forced and forced.reasons[-1].startswith("FORCED")


def test_unconfigured_metrics_do_not_gate() -> None:
    assert gate.decide({"other": 0.0}, {"other": 1.0}, TOL).promote


# --- retention (pure) ---------------------------------------------------------------------------------
NOW = datetime(2026, 1, 10, tzinfo=UTC)


def _manifest(release_id: str, parent: str | None, generation: str, files: list[str], age_h: float = 48,
              ) -> rel.ReleaseManifest:
    stored = [rel.StoredFile(key=k, size=1, sha256="0" * 64) for k in files]
    return rel.ReleaseManifest(
        release_id=release_id, created=NOW - timedelta(hours=age_h), parent=parent, code_revision="x",
        index=rel.IndexRef(alias="docs", generation=generation),
        model=rel.CheckpointRef(checkpoint_id="sha256-x", prefix="checkpoints/sha256-x", files=stored),
        gate=rel.GateDecision(promote=True, reasons=[]))


def _obj(key: str, age_h: float = 48) -> ObjectInfo:
    return ObjectInfo(key, 1, "e", NOW - timedelta(hours=age_h))


def _ids(n: int) -> list[str]:
    return [f"2026010{n}T000000Z-0000000{n}" for n in range(1, n + 1)]


def test_retention_keeps_last_n_production_and_parent_and_cleans_half_written() -> None:
    r1, r2, r3, r4, r5 = _ids(5)
    manifests = {r: _manifest(r, p, f"docs__g{i + 1}", [f"checkpoints/sha256-{i}/m.safetensors"], age_h=50 - i)
                 for i, (r, p) in enumerate([(r1, None), (r2, r1), (r3, r2), (r4, r3), (r5, r1)])}
    # r5 is a killed run: a manifest no pointer ever named. Production was rolled back to r2.
    manifests.pop(r5)
    history = [rel.PointerEvent(release_id=r, at=NOW, action="promote") for r in (r1, r2, r3, r4)]
    pointer = rel.Pointer(release_id=r2, manifest_sha256="x", updated=NOW, history=history)
    objects = [_obj(rel.manifest_key(r)) for r in (r1, r2, r3, r4, r5)]
    objects += [_obj(f"checkpoints/sha256-{i}/m.safetensors") for i in range(5)]
    objects += [_obj("checkpoints/sha256-9/fresh", age_h=0.1), _obj("datasets/abc/train.jsonl")]
    plan = plan_retention(pointer, manifests, objects, keep_last=1, now=NOW, grace=timedelta(hours=1),
                          generations={"docs": ["docs__g1", "docs__g2", "docs__g3", "docs__g4", "docs__g5"]})
    assert plan.keep == [r1, r2, r4]  # last 1 (r4) + production (r2) + its parent (r1)
    assert plan.drop_releases == [r3] and plan.half_written == [r5]
    assert "checkpoints/sha256-2/m.safetensors" in plan.delete_keys  # r3's only
    assert "checkpoints/sha256-4/m.safetensors" in plan.delete_keys  # r5's, never referenced
    assert "checkpoints/sha256-9/fresh" not in plan.delete_keys  # younger than the grace period
    assert "datasets/abc/train.jsonl" not in plan.delete_keys  # not promotion's to delete
    assert rel.manifest_key(r2) not in plan.delete_keys
    # g3 (dropped r3) lies between kept generations; only generations older than all kept ones go, and
    # g5 (newer: maybe a candidate being built) stays.
    assert plan.drop_generations == []


def test_retention_drops_only_generations_older_than_every_kept_one() -> None:
    r1, r2, r3 = _ids(3)
    manifests = {r: _manifest(r, p, g, [], age_h=50 - i)
                 for i, (r, p, g) in enumerate([(r1, None, "docs__g1"), (r2, r1, "docs__g2"), (r3, r2, "docs__g3")])}
    history = [rel.PointerEvent(release_id=r, at=NOW, action="promote") for r in (r1, r2, r3)]
    pointer = rel.Pointer(release_id=r3, manifest_sha256="x", updated=NOW, history=history)
    plan = plan_retention(pointer, manifests, [_obj(rel.manifest_key(r)) for r in (r1, r2, r3)], keep_last=1,
                          now=NOW, grace=timedelta(0),
                          generations={"docs": ["docs__g1", "docs__g2", "docs__g3", "docs__g4"], "x": ["x__g1"]})
    assert plan.keep == [r2, r3]
    assert plan.drop_generations == ["docs__g1"]
    assert plan.delete_keys == [rel.manifest_key(r1)]


def test_stale_multipart_uploads_under_promotions_prefixes_are_aborted() -> None:
    uploads = [Upload("checkpoints/sha256-1/model.safetensors", "old", NOW - timedelta(hours=3)),
               Upload("indexes/docs__g1/snap-1/part-00000.parquet", "young", NOW - timedelta(minutes=5)),
               Upload("datasets/abc/train.jsonl", "not-ours", NOW - timedelta(hours=3))]
    assert [u.upload_id for u in stale_uploads(uploads, NOW, timedelta(hours=1))] == ["old"]
    plan = plan_retention(None, {}, [], keep_last=1, now=NOW, grace=timedelta(hours=1), uploads=uploads)
    assert plan.summary()["aborted_uploads"] == ["checkpoints/sha256-1/model.safetensors"]


# --- manifests and the pointer on SeaweedFS -----------------------------------------------------------
@pytest.fixture
def store(s3_settings: Settings) -> S3Store:
    s = S3Store(s3_settings)
    s.ensure_bucket()
    return s


def _publish(store: S3Store, parent: str | None, content: str, files: list[rel.StoredFile] | None = None,
             ) -> rel.ReleaseManifest:
    manifest = rel.ReleaseManifest(
        release_id=rel.new_release_id(content), created=datetime.now(UTC), parent=parent,
        code_revision=rel.code_revision(), gate=rel.GateDecision(promote=True, reasons=["test"]),
        model=rel.CheckpointRef(checkpoint_id="c", prefix="checkpoints/c", files=files or []))
    digest = rel.write_manifest(store, manifest)
    rel.flip_pointer(store, manifest.release_id, digest, "promote", expected=parent)
    return manifest


def test_pointer_flip_listing_and_rollback_target(store: S3Store) -> None:
    assert rel.read_pointer(store) is None and rel.list_releases(store) == []
    first = _publish(store, None, "a")
    second = _publish(store, first.release_id, "b")
    half = rel.ReleaseManifest(release_id=rel.new_release_id("c"), created=datetime.now(UTC),
                               parent=second.release_id, code_revision="x", gate=rel.GateDecision(promote=True,
                                                                                                  reasons=[]))
    rel.write_manifest(store, half)  # a killed run: manifest written, pointer never flipped
    listed = rel.list_releases(store)
    assert [i.manifest.release_id for i in listed] == [first.release_id, second.release_id]
    assert [i.production for i in listed] == [False, True]
    assert len(rel.list_releases(store, include_unserved=True)) == 3
    pointer, target, _ = rel.rollback_target(store)
    assert pointer.release_id == second.release_id and target.release_id == first.release_id
    with pytest.raises(rel.ReleaseError, match="never published"):
        rel.rollback_target(store, half.release_id)
    with pytest.raises(rel.ReleaseError, match="production moved"):
        rel.flip_pointer(store, half.release_id, "x", "promote", expected=first.release_id)
    assert rel.read_pointer(store).release_id == second.release_id  # type: ignore[union-attr]


def test_manifests_are_immutable_and_verified_against_the_pointer(store: S3Store) -> None:
    first = _publish(store, None, "a")
    changed = first.model_copy(update={"code_revision": "other"})
    with pytest.raises(rel.ReleaseError, match="already exists"):
        rel.write_manifest(store, changed)
    store.put_bytes(rel.manifest_key(first.release_id), changed.to_bytes())  # overwritten behind our back
    with pytest.raises(rel.ReleaseError, match="does not match the pointer"):
        rel.production(store)


# --- checkpoint upload: multipart, verified, idempotent, self-healing ------------------------------------
def _checkpoint(root: Path, weights_mb: int = 0) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "tiny"}')
    (root / "tokenizer.json").write_text('{"v": 1}')
    (root / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(weights_mb * 1024 * 1024 + 17))
    (root / "optimizer.bin").write_bytes(b"training state, not released")
    return root


def test_checkpoint_upload_multipart_verified_and_rerun_reuses(s3_settings: Settings, tmp_path: Path) -> None:
    settings = s3_settings.model_copy(update={"s3": s3_settings.s3.model_copy(update={"multipart_threshold_mb": 5})})
    store = S3Store(settings)
    store.ensure_bucket()
    ckpt = _checkpoint(tmp_path / "ckpt", weights_mb=11)
    ref, report = upload_checkpoint(store, ckpt)
    assert report.uploaded == 3 and report.reused == 0
    assert sorted(f.key.rsplit("/", 1)[1] for f in ref.files) == ["config.json", "model.safetensors", "tokenizer.json"]
    weights = next(f for f in ref.files if f.key.endswith(".safetensors"))
    assert weights.etag.endswith("-3") and weights.checksum.endswith("-3")  # three 5 MiB parts: multipart
    assert set(report.proofs.values()) == {"x-amz-checksum-sha256"}  # SeaweedFS keeps S3 sha256 checksums
    assert rel.verify_stored(store, ref.files) == []
    again, report2 = upload_checkpoint(store, ckpt)
    assert again == ref and report2.uploaded == 0 and report2.reused == 3
    store.put_bytes(weights.key, b"corrupt")  # bytes overwritten (with a matching sha256 of its own)
    assert rel.verify_stored(store, ref.files) == [f"{weights.key}: checksum mismatch (corrupt or overwritten)"]
    _, healed = upload_checkpoint(store, ckpt)
    assert healed.replaced == [weights.key] and rel.verify_stored(store, ref.files) == []
    out = download_files(store, ref.files, ref.prefix, tmp_path / "dl")
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() == weights.sha256


def test_download_detects_a_corrupt_object(store: S3Store, tmp_path: Path) -> None:
    ref, _ = upload_checkpoint(store, _checkpoint(tmp_path / "ckpt"))
    store.put_bytes(ref.files[0].key, b"{}")
    with pytest.raises(S3Error, match="checksum mismatch"):
        download_files(store, ref.files, ref.prefix, tmp_path / "dl")


def test_not_a_checkpoint_is_refused(store: S3Store, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a checkpoint"):
        upload_checkpoint(store, tmp_path / "empty")


# --- index snapshots: Milvus Lite -> S3 -> a fresh Milvus Lite ------------------------------------------
def assert_restored(source: IndexClient, restored: IndexClient, alias: str, vectors: np.ndarray) -> None:
    """The restored collection answers as the source does: same ids, scores, texts, metadata and record."""
    queries = vectors[:8] + 0.1
    before, after = source.search_dense_many("docs", queries, k=5), restored.search_dense_many(alias, queries, k=5)
    assert [[h.id for h in hits] for hits in after] == [[h.id for h in hits] for hits in before]
    assert np.allclose([[h.score for h in hits] for hits in after], [[h.score for h in hits] for hits in before],
                       atol=1e-5)
    assert after[0][0].text == before[0][0].text and after[0][0].metadata == before[0][0].metadata
    assert restored.read_records(alias) == source.read_records("docs")


def bulk_restore(store: S3Store, server: IndexClient, tmp_path: Path, **storage: Any) -> tuple[IndexClient, str, str]:
    """40 chunks in Milvus Lite -> S3 snapshot -> ``server`` by its bulk import (``storage``: ``bulk_dir`` or
    ``bulk_bucket``), checked to answer as the source does; the source client, the snapshot id and the alias."""
    source, vectors = _index(tmp_path / "a.db")
    snap = upload_snapshot(store, export_snapshot(source, "docs", tmp_path / "work", rows_per_shard=15))
    alias = f"t{uuid.uuid4().hex[:8]}"
    result = restore_snapshot(store, snap, server, tmp_path / "restore", alias=alias, name=f"{alias}__g1", serve=True,
                              **storage)
    assert result.rows == 40
    assert_restored(source, server, alias, vectors)
    return source, snap.snapshot_id, alias


def _index(path: Path, n: int = 40, dim: int = 16) -> tuple[IndexClient, np.ndarray]:
    client = IndexClient(str(path))
    gen = client.ensure_generation("docs", IndexMeta("test-embedder", dim, {"max_tokens": 64}))
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((n, dim)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [Chunk(doc_id=f"doc{i // 4}", chunk_index=i % 4, text=f"chunk {i} of doc {i // 4} — ünïcode",
                    uri=f"file:///docs/{i // 4}.md", title=f"Doc {i // 4}", section="Intro", page=i % 3)
              for i in range(n)]
    client.upsert_chunks(gen, chunks, vectors)
    client.write_records(gen, [DocRecord(doc_id=f"doc{d}", uri=f"file:///docs/{d}.md", source="file:///docs",
                                         path=f"{d}.md", size=10, version="1", content_hash=f"h{d}", chunk_count=4)
                               for d in range(n // 4)])
    client.flush(gen)
    client.flush_records(gen)
    return client, vectors


def test_snapshot_restore_into_fresh_milvus_answers_identically(store: S3Store, tmp_path: Path) -> None:
    source, vectors = _index(tmp_path / "a.db")
    local = export_snapshot(source, "docs", tmp_path / "work", rows_per_shard=15)
    assert local.rows == 40 and local.names[:3] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    snap = upload_snapshot(store, local)
    assert snap.prefix == f"indexes/docs__g1/{local.snapshot_id}" and rel.verify_stored(store, snap.files) == []
    assert upload_snapshot(store, export_snapshot(source, "docs", tmp_path / "work2", 15)) == snap  # idempotent
    with IndexClient(str(tmp_path / "fresh.db")) as fresh:
        result = restore_snapshot(store, snap, fresh, tmp_path / "restore", alias="docs", serve=True)
        assert (result.collection, result.rows) == ("docs__g1", 40)
        queries = vectors[:8] + 0.1
        before = source.search_dense_many("docs", queries, k=5)
        after = fresh.search_dense_many("docs", queries, k=5)
        assert [[h.id for h in hits] for hits in after] == [[h.id for h in hits] for hits in before]
        assert np.allclose([[h.score for h in hits] for hits in after], [[h.score for h in hits] for hits in before])
        assert after[0][0].text == before[0][0].text and after[0][0].metadata == before[0][0].metadata
        assert fresh.read_records("docs") == source.read_records("docs")
        assert fresh.index_meta("docs") == source.index_meta("docs")
        with pytest.raises(SnapshotError, match="already exists"):
            restore_snapshot(store, snap, fresh, tmp_path / "restore", alias="docs")
    source.close()


def test_restore_refuses_a_corrupt_shard(store: S3Store, tmp_path: Path) -> None:
    source, _ = _index(tmp_path / "a.db", n=8)
    snap = upload_snapshot(store, export_snapshot(source, "docs", tmp_path / "work", rows_per_shard=100))
    source.close()
    store.put_bytes(snap.files[0].key, b"PAR1 not really")
    with IndexClient(str(tmp_path / "fresh.db")) as fresh, pytest.raises(S3Error, match="checksum mismatch"):
        restore_snapshot(store, snap, fresh, tmp_path / "restore", alias="docs")
    with IndexClient(str(tmp_path / "fresh.db")) as fresh:
        assert fresh.resolve("docs") is None  # nothing half-restored


def test_retention_on_s3_cleans_a_half_written_release(store: S3Store, tmp_path: Path) -> None:
    first = _publish(store, None, "a")
    ref, _ = upload_checkpoint(store, _checkpoint(tmp_path / "ckpt"))  # a killed run's upload, no manifest
    second = _publish(store, first.release_id, "b")
    plan = plan_from_store(store, keep_last=5, grace=timedelta(0))
    assert plan.keep == [first.release_id, second.release_id]
    assert sorted(plan.delete_keys) == sorted(f.key for f in ref.files)
    young = plan_from_store(store, keep_last=5, grace=timedelta(hours=1))
    assert young.delete_keys == []  # an in-flight run may still be writing them


KILLED_UPLOAD = """
import sys
from pathlib import Path
from tasks.settings import get_settings
from tasks.stores.s3 import S3Store
S3Store(get_settings()).put_file(sys.argv[1], Path(sys.argv[2]))
"""


def test_retention_aborts_the_multipart_upload_of_a_killed_run(s3_settings: Settings, store: S3Store,
                                                               tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    big = tmp_path / "model.safetensors"
    big.write_bytes(np.random.default_rng(0).bytes(96 * 1024 * 1024))
    key = "checkpoints/sha256-killed/model.safetensors"
    variables = {"RAGTUNE_DATA_DIR": str(tmp_path / "data"), "RAGTUNE_S3__PORT": str(s3_settings.s3.port),
                 "RAGTUNE_S3__BUCKET": s3_settings.s3.bucket, "RAGTUNE_S3__PREFIX": s3_settings.s3.prefix,
                 "RAGTUNE_S3__MULTIPART_THRESHOLD_MB": "5"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOAD, key, str(big)], cwd=REPO,
                            env={**os.environ, **variables})
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(store.list_uploads("checkpoints/")):
        time.sleep(0.01)
    proc.kill()  # SIGKILL mid-upload: s3transfer gets no chance to abort its multipart upload
    assert proc.wait() == -9
    left = list(store.list_uploads("checkpoints/"))
    assert [u.key for u in left] == [key] and not store.exists(key)  # parts stored, no object listed
    assert plan_from_store(store, keep_last=5, grace=timedelta(hours=1)).abort_uploads == []  # maybe in flight
    plan = plan_from_store(store, keep_last=5, grace=timedelta(0))
    assert plan.abort_uploads == left
    done = apply_retention(plan, store.delete, lambda name: None, store.abort_upload)
    assert done["aborted_uploads"] == [key] and done["upload_errors"] == []
    assert list(store.list_uploads("")) == []


# --- the CLI: releases, rollback (seconds, nothing uploaded), errors without tracebacks ---------------------
def test_cli_lists_releases_and_rolls_back(s3_settings: Settings, store: S3Store,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import time

    from typer.testing import CliRunner

    from ragtune.cli import app
    from tasks.settings import get_settings

    first = _publish(store, None, "a")
    second = _publish(store, first.release_id, "b")
    for name, value in {"RAGTUNE_S3__PORT": s3_settings.s3.port, "RAGTUNE_S3__BUCKET": s3_settings.s3.bucket,
                        "RAGTUNE_S3__PREFIX": s3_settings.s3.prefix}.items():
        monkeypatch.setenv(name, str(value))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        listed = runner.invoke(app, ["releases", "--json"])
        rows = json.loads(listed.stdout.strip().splitlines()[-1])["releases"]
        assert [(r["release_id"], r["production"]) for r in rows] == [(first.release_id, False),
                                                                       (second.release_id, True)]
        objects = len(list(store.list("")))
        started = time.monotonic()
        rolled = runner.invoke(app, ["rollback", "--json"])
        assert rolled.exit_code == 0, rolled.output
        assert time.monotonic() - started < 10  # seconds, and nothing uploaded besides the pointer
        assert json.loads(rolled.stdout.strip().splitlines()[-1])["release_id"] == first.release_id
        assert len(list(store.list(""))) == objects
        assert "* " + first.release_id in runner.invoke(app, ["releases"]).stdout
        again = runner.invoke(app, ["rollback"])
        assert again.exit_code == 1 and "has no parent" in again.stderr and "Traceback" not in again.output
        forward = runner.invoke(app, ["rollback", second.release_id, "--json"])
        assert forward.exit_code == 0 and rel.read_pointer(store).release_id == second.release_id  # type: ignore[union-attr]
        bad = runner.invoke(app, ["index", "restore", "nonsense", "--uri", "/tmp/x.db"])
        assert bad.exit_code == 1 and "not a release id" in bad.stderr
        lite = runner.invoke(app, ["index", "restore", "production", "--uri", "/tmp/x.db", "--bulk-dir", "/tmp"])
        assert lite.exit_code == 1 and "Milvus Lite has no bulk import" in lite.stderr
    finally:
        get_settings.cache_clear()


@pytest.mark.integration
def test_snapshot_restores_into_a_milvus_server(store: S3Store, tmp_path: Path, milvus_server: str) -> None:
    """Lite -> S3 -> a real Milvus 2.3 server (no BM25 there: the generation is restored dense-only)."""
    import uuid

    source, vectors = _index(tmp_path / "a.db")
    snap = upload_snapshot(store, export_snapshot(source, "docs", tmp_path / "work", rows_per_shard=15))
    alias = f"t{uuid.uuid4().hex[:8]}"
    with IndexClient(milvus_server) as server:
        result = restore_snapshot(store, snap, server, tmp_path / "restore", alias=alias, name=f"{alias}__g1",
                                  serve=True)
        assert result.rows == 40 and not server.has_bm25(alias)
        queries = vectors[:8] + 0.1
        before, after = source.search_dense_many("docs", queries, k=5), server.search_dense_many(alias, queries, k=5)
        assert [[h.id for h in hits] for hits in after] == [[h.id for h in hits] for hits in before]
        assert np.allclose([[h.score for h in hits] for hits in after], [[h.score for h in hits] for hits in before],
                           atol=1e-5)
        assert server.read_records(alias) == source.read_records("docs")
    source.close()


@pytest.mark.integration
def test_snapshot_bulk_imports_into_a_milvus_server(store: S3Store, tmp_path: Path, milvus_server: str,
                                                    milvus_import_dir: Path) -> None:
    """Lite -> S3 -> Milvus 2.3's own bulk import of the Parquet shards (staged in its storage folder)."""
    from tasks.release.snapshot import BULK_STAGE
    from tasks.stores.milvus import MilvusIndexError

    with IndexClient(milvus_server) as server:
        source, _, alias = bulk_restore(store, server, tmp_path, bulk_dir=milvus_import_dir)
        with pytest.raises(MilvusIndexError, match="no such file"):  # the server's own error, said clearly
            server.bulk_import(alias, [str(tmp_path / "missing.parquet")])
    assert not list((milvus_import_dir / BULK_STAGE).iterdir())  # staged copies removed
    source.close()
