"""The ingestion flows end to end: real Milvus Lite, real parsers and model, Prefect test harness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.settings import Settings, get_settings
from tasks.stores.milvus import IndexClient, MilvusIndexError
from tasks.types import Chunk, IndexMeta, doc_id_for
from tests.conftest import REPO
from tests.ingest.ingest_files import write_good, write_hostile

pytestmark = pytest.mark.flow
TOPICS = ["walruses", "ibexes", "okapis", "tapirs", "kiwis", "lemurs"]


def _write_docs(folder: Path, topics: list[str] = TOPICS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for topic in topics:
        text = f"# All about {topic}\n\n## Habitat\n\nThe {topic} lives in zoo {topic}-7.\n"
        (folder / f"{topic}.md").write_text(text)


def _search(settings: Settings, text: str) -> list[str]:
    from tasks.ingest.plan import embedder

    vector = embedder(settings).encode([text])[0]
    with IndexClient.from_settings(settings) as index:
        return [h.path for h in index.search_dense("docs", vector, 3)]


def _consistent(settings: Settings) -> dict[str, int]:
    """No duplicates, no orphans: every indexed document has exactly its recorded chunk ids."""
    from tasks.ingest.verify import verify_index

    with IndexClient.from_settings(settings) as index:
        report = verify_index(index, "docs", repair=False, sample=1000)
        ids = [r["id"] for batch in index.iter_rows("docs", fields=["id"]) for r in batch]
    assert report["ok"], report
    assert len(ids) == len(set(ids)) == report["chunks"]
    return {"documents": report["documents"], "chunks": report["chunks"]}


def test_add_change_remove_round_trip_and_unchanged_rerun(env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from tasks.ingest import plan

    docs = tmp_path / "docs"
    _write_docs(docs)
    first = ingest_documents(str(docs))
    assert (first.added, first.quarantined, first.collection) == (6, 0, "docs__g1")
    assert _search(env, "where does the okapi live")[0] == "okapis.md"

    plan._EMBEDDERS.clear()  # as in a fresh process: an unchanged re-run must not load the model
    again = ingest_documents(str(docs))
    assert (again.unchanged, again.added, again.updated, again.chunks_written) == (6, 0, 0, 0)
    assert "embed" not in again.seconds and "parse" not in again.seconds  # nothing parsed or embedded
    assert again.embedding is None and not plan._EMBEDDERS

    (docs / "okapis.md").write_text("# All about okapis\n\n## Diet\n\nOkapis eat leaves of the forest.\n")
    (docs / "tapirs.md").unlink()
    _write_docs(docs, ["pandas"])
    third = ingest_documents(str(docs))
    assert (third.added, third.updated, third.deleted, third.unchanged) == (1, 1, 1, 4)
    assert _search(env, "what do okapis eat")[0] == "okapis.md"
    assert "tapirs.md" not in _search(env, "where does the tapir live")
    assert _consistent(env)["documents"] == 6


def test_guard_refuses_an_empty_listing_and_force_overrides(env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from tasks.ingest.plan import DeletionGuardError

    docs = tmp_path / "docs"
    _write_docs(docs)
    ingest_documents(str(docs))
    before = _consistent(env)
    for path in docs.iterdir():
        path.unlink()
    with pytest.raises(DeletionGuardError, match="listing is empty.*nothing was deleted.*--force"):
        ingest_documents(str(docs))
    assert _consistent(env) == before
    assert ingest_documents(str(docs), force=True).deleted == 6
    assert _consistent(env)["chunks"] == 0


def test_shard_runs_split_the_work_and_leave_deletions_to_the_parent(env: Settings, tmp_path: Path) -> None:
    """Each shard run indexes its own documents only and never deletes, not even on an empty listing (the
    deletion guard is the parent's); the parent then deletes what the whole listing lost."""
    from flows.ingest import ingest_documents

    docs = tmp_path / "docs"
    _write_docs(docs)
    ingest_documents(str(docs))
    (docs / "okapis.md").write_text("# All about okapis\n\n## Diet\n\nOkapis eat leaves of the forest.\n")
    (docs / "tapirs.md").unlink()
    _write_docs(docs, ["pandas"])
    parts = [ingest_documents(str(docs), shard=f"{i}/2") for i in range(2)]
    assert [sum(getattr(p, key) for p in parts) for key in ("added", "updated", "unchanged", "deleted")] == \
        [1, 1, 4, 0]
    assert _consistent(env)["documents"] == 7  # tapirs.md still indexed: only the parent deletes
    parent = ingest_documents(str(docs))
    assert (parent.added, parent.updated, parent.deleted, parent.unchanged) == (0, 0, 1, 6)

    for path in docs.iterdir():
        path.unlink()
    assert [ingest_documents(str(docs), shard=f"{i}/2").deleted for i in range(2)] == [0, 0]
    assert _consistent(env)["documents"] == 6


def test_hostile_files_are_quarantined_and_good_ones_searchable(env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents

    docs = tmp_path / "docs"
    write_hostile(docs, big_mb=40)  # over the default 32 MiB file bound
    write_good(docs)
    report = ingest_documents(str(docs))
    reasons = {Path(q.uri).name: q.reason for q in report.quarantine}
    assert set(reasons) == {"truncated.pdf", "bomb.docx", "junk.txt", "empty.md", "one-line.txt", "fake.docx"}
    assert report.added == 5
    assert _search(env, "narwhal tusk")[0] == "paper.pdf"
    assert _search(env, "axolotl limbs regenerate")[0] == "report.docx"
    assert _search(env, "pangolin scales")[0] == "notes..%2f..%2fetc%2fpasswd.md"
    rerun = ingest_documents(str(docs))  # unchanged quarantined files are not retried
    assert (rerun.quarantined, rerun.still_quarantined, rerun.unchanged) == (0, 6, 5)


@pytest.fixture
def prefect_server_api(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A real `prefect server start`: unlike the test harness it runs the repossessor, which frees the
    concurrency slot of a run that was killed once its lease lapses (checked every 2 s here)."""
    from ragtune import stack
    port = stack.free_port()
    service = stack.prefect_server(settings.model_copy(update={"prefect": settings.prefect.model_copy(
        update={"port": port})}), home=tmp_path / "stack")
    service.env["PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS"] = "2"
    stack.start(service)
    yield f"http://127.0.0.1:{port}/api"
    stack.stop(service)


@pytest.mark.integration
def test_a_run_killed_mid_way_leaves_no_duplicates_after_the_next_run(
        env: Settings, prefect_server_api: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    _write_docs(docs, [f"{t}{i}" for t in TOPICS for i in range(3)])  # 18 documents, batches of 1
    child_env = {**os.environ, "PREFECT_API_URL": prefect_server_api, "RAGTUNE_INGEST__BATCH_DOCS": "1",
                 "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "flows.ingest", str(docs)], cwd=REPO, env=child_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finished, output = 0, []
    assert child.stdout is not None
    for line in child.stdout:  # kill the whole process group after its third batch: some documents done
        output.append(line)
        finished += "index-batch" in line and "Completed" in line
        if finished == 3:
            os.killpg(child.pid, signal.SIGKILL)
            break
    child.wait(60)
    assert finished == 3 and child.returncode == -signal.SIGKILL, "".join(output[-30:])
    # The rerun also runs in its own process: this process's Prefect clients stay on the test harness,
    # so no lease service here keeps talking to the real server (a later harness test would block).
    rerun = subprocess.run([str(Path(sys.executable).parent / "ragtune"), "ingest", str(docs), "--json"], cwd=REPO,
                           env={**child_env, "RAGTUNE_INGEST__BATCH_DOCS": "4"}, capture_output=True, text=True,
                           timeout=600)  # waits until the dead run's lock lease lapses
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert report["added"] + report["updated"] + report["unchanged"] == 18
    assert report["unchanged"] >= 2  # batches completed before the kill are not redone
    assert _consistent(env)["documents"] == 18


def test_an_emitted_event_reindexes_exactly_one_document(env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from flows.reindex import reindex_document
    from tasks.ingest.inventory import open_source
    from tasks.ingest.watch import watch_source

    docs = tmp_path / "docs"
    _write_docs(docs)
    ingest_documents(str(docs))
    with IndexClient.from_settings(env) as index:
        before = index.read_records("docs")

    source = open_source(str(docs), env)
    emitted: list[dict[str, object]] = []
    watcher = threading.Thread(target=lambda: emitted.extend(watch_source(source, 2.0, 0.0, polls=2, echo=print)))
    watcher.start()
    time.sleep(0.5)  # after the watcher's baseline listing
    (docs / "kiwis.md").write_text("# All about kiwis\n\nKiwis are nocturnal and lay huge eggs.\n")
    watcher.join(60)
    events = _read_events(source.uri, 1)
    assert [(e.event, e.resource.id) for e in events] == [("ragtune.document.changed", f"{source.uri}/kiwis.md")]

    uris = [e.resource.id for e in events] * 2  # a repeated event for the same version
    report = reindex_document(uris, source=events[0].resource["ragtune.source"])
    assert (report.updated, report.added, report.deleted, report.unchanged) == (1, 0, 0, 0)
    with IndexClient.from_settings(env) as index:
        after = index.read_records("docs")
    changed = {d for d in after if after[d].updated_at != before[d].updated_at}
    assert changed == {doc_id_for(f"{source.uri}/kiwis.md")}
    assert _search(env, "nocturnal birds with huge eggs")[0] == "kiwis.md"
    assert reindex_document(uris).unchanged == 1  # same version again: nothing to do

    (docs / "lemurs.md").unlink()
    assert reindex_document([f"{source.uri}/lemurs.md"]).deleted == 1
    assert _consistent(env)["documents"] == 5


def _read_events(uri_prefix: str, expected: int, timeout_s: float = 30.0) -> list:  # type: ignore[type-arg]
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(filter=EventFilter(event=EventNameFilter(prefix=["ragtune.document."]),
                                                         resource=EventResourceFilter(id_prefix=[uri_prefix])),
                                      limit=50)
            if len(page.events) >= expected or time.monotonic() > deadline:
                return list(page.events)
            time.sleep(0.5)


def test_writing_with_another_embedding_model_is_refused(env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents

    with IndexClient.from_settings(env) as index:
        index.ensure_generation("docs", IndexMeta("someone/else-model", 384, {"name": "sections"}))
    _write_docs(tmp_path / "docs", ["geckos"])
    with pytest.raises(MilvusIndexError, match="built with embedding model 'someone/else-model'.*--rebuild"):
        ingest_documents(str(tmp_path / "docs"))


def test_verify_finds_and_repairs_orphans_and_missing_chunks(env: Settings, tmp_path: Path) -> None:
    import numpy as np

    from flows.ingest import ingest_documents
    from tasks.ingest.verify import verify_index

    docs = tmp_path / "docs"
    _write_docs(docs)
    ingest_documents(str(docs))
    with IndexClient.from_settings(env) as index:
        index.delete_documents("docs", [doc_id_for(f"{docs.resolve().as_uri()}/ibexes.md")])
        orphan = Chunk("f" * 32, 0, "stray text", "file:///gone.md")
        index.upsert_chunks("docs", [orphan], np.eye(1, 384, dtype=np.float32))
        index.flush("docs")
        found = verify_index(index, "docs", repair=True)
        assert (found["ok"], found["orphan_documents"], len(found["mismatched_documents"])) == (False, 1, 1)
    redo = ingest_documents(str(docs))  # the mismatched document was marked pending: it is re-indexed
    assert (redo.added + redo.updated, redo.unchanged) == (1, 5)
    assert _consistent(env)["documents"] == 6


def test_s3_prefix_source(env: Settings, s3_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest_documents
    from tasks.stores.s3 import S3Store

    for key, value in {"ENDPOINT_URL": s3_settings.s3_endpoint, "BUCKET": s3_settings.s3.bucket}.items():
        monkeypatch.setenv(f"RAGTUNE_S3__{key}", value)
    get_settings.cache_clear()
    store = S3Store(s3_settings, prefix=f"{s3_settings.s3.prefix}/kb")
    store.ensure_bucket()
    for topic in ("meerkats", "bison", "nested/odd name é#1"):  # S3 refuses "..": odd characters instead
        store.put_bytes(f"{topic}.md", f"# {topic}\n\nThe {topic} graze near river {topic}.\n".encode())
    uri = f"s3://{store.bucket}/{store.prefix}"
    assert ingest_documents(uri).added == 3
    assert _search(get_settings(), "where do meerkats graze")[0] == "meerkats.md"
    store.delete(["bison.md"])
    assert ingest_documents(uri).deleted == 1
