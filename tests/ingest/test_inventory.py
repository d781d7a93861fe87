"""Listing, diffing and the deletion guard (pure functions), and the watcher's debounce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.ingest.inventory import LocalSource, SourceFile, deletion_refusal, diff_listing
from tasks.ingest.watch import CHANGED, DELETED, watch_source
from tasks.types import DocRecord


def _file(name: str, size: int = 10, version: str = "1") -> SourceFile:
    return SourceFile(f"file:///src/{name}", "file:///src", name, size, version)


def _record(f: SourceFile, status: str = "indexed") -> DocRecord:
    return DocRecord(f.doc_id, f.uri, f.source, f.path, f.size, f.version, "hash", 3, status)


def test_diff_classifies_by_size_and_version_without_reading() -> None:
    a, b, c, q = _file("a.md"), _file("b.md"), _file("c.md"), _file("q.pdf")
    records = {r.doc_id: r for r in (_record(a), _record(b), _record(c), _record(q, "quarantined"))}
    listing = [a, _file("b.md", version="2"), _file("new.md"), q]
    diff = diff_listing(listing, records)
    assert [f.path for f in diff.unchanged] == ["a.md"]
    assert [f.path for f in diff.changed] == ["b.md"]
    assert [f.path for f in diff.added] == ["new.md"]
    assert [f.path for f in diff.still_quarantined] == ["q.pdf"]
    assert [r.path for r in diff.removed] == ["c.md"]


def test_pending_documents_are_always_redone() -> None:
    a = _file("a.md")
    diff = diff_listing([a], {a.doc_id: _record(a, "pending")})
    assert diff.changed == [a]


def test_guard_refuses_empty_listings_and_mass_deletions() -> None:
    files = [_file(f"{i}.md") for i in range(10)]
    records = {r.doc_id: r for r in map(_record, files)}
    assert "listing is empty" in str(deletion_refusal(diff_listing([], records), records, 0.2))
    assert "3 of 10" in str(deletion_refusal(diff_listing(files[:7], records), records, 0.2))
    assert deletion_refusal(diff_listing(files[:8], records), records, 0.2) is None
    assert deletion_refusal(diff_listing([], {}), {}, 0.2) is None  # a new, empty source is fine


def test_local_listing_skips_hidden_files_and_links_out_of_the_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.md").write_text("a")
    (src / "sub" / "b é.md").write_text("b")
    (src / ".hidden.md").write_text("h")
    (tmp_path / "secret.txt").write_text("s")
    (src / "link.txt").symlink_to(tmp_path / "secret.txt")
    source = LocalSource(src)
    assert [f.path for f in source.list()] == ["a.md", "sub/b é.md"]
    assert source.list()[1].uri.endswith("/sub/b%20%C3%A9.md")
    assert source.stat("../secret.txt") is None


def test_watch_debounces_a_burst_and_reports_deletions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("a")
    (src / "b.md").write_text("b")
    source = LocalSource(src)
    calls: list[tuple[Any, ...]] = []
    polls = iter(range(100))

    def emit(event: str, uri: str, source_uri: str, state: Any) -> dict[str, Any]:
        calls.append((event, uri.rsplit("/", 1)[1]))
        return {"event": event, "uri": uri}

    def burst() -> None:  # runs between polls: three writes to a.md, b.md removed
        n = next(polls)
        if n < 3:
            (src / "a.md").write_text("a" * (n + 2))
        if n == 0:
            (src / "b.md").unlink()

    source.list = _after(source.list, burst)  # type: ignore[method-assign]
    watch_source(source, 0.0, 0.2, polls=6, emit=emit, echo=lambda _: None)
    assert sorted(calls) == [(CHANGED, "a.md"), (DELETED, "b.md")]


def _after(list_fn: Any, hook: Any) -> Any:
    first = [True]

    def wrapped() -> Any:
        if not first[0]:
            hook()
        first[0] = False
        return list_fn()

    return wrapped
