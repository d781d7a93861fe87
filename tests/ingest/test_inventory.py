"""Listing, diffing and the deletion guard (pure functions), and the watcher's debounce."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tasks.ingest.inventory import LocalSource, SourceFile, deletion_refusal, diff_listing, local_name, open_source
from tasks.ingest.plan import relative_path
from tasks.ingest.watch import CHANGED, DELETED, watch_source
from tasks.settings import Settings
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
    assert source.skipped == {"hidden": 1, "symlink": 1}
    assert source.stat("../secret.txt") is None
    assert source.stat(str(tmp_path / "secret.txt")) is None


def test_local_listing_counts_every_entry_it_skips_by_reason(tmp_path: Path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside.md"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "kept.md").write_text("kept")
    outside.write_text("outside")
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("a hidden folder counts once, its files are never looked at")
    (src / ".env").write_text("SECRET=1")
    (src / "inside-link.md").symlink_to(src / "sub" / "kept.md")  # would index one file twice
    (src / "outside-link.md").symlink_to(outside)
    (src / "dangling.md").symlink_to(tmp_path / "gone.md")
    (src / "folder-link").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(src / "pipe.md")
    source = LocalSource(src)
    assert [f.path for f in source.list()] == ["sub/kept.md"]
    assert source.skipped == {"hidden": 2, "special file": 1, "symlink": 4}
    for name in ("inside-link.md", "outside-link.md", "dangling.md", "pipe.md", ".env", ".git/config",
                 "folder-link/outside.md"):
        assert source.stat(name) is None, name  # an event names nothing a listing would not list
    assert source.stat("sub/kept.md") == source.list()[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_files_and_folders_are_skipped_not_fatal(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "inner.md").write_text("inner")
    (src / "secret.md").write_text("secret")
    (src / "open.md").write_text("open")
    (src / "secret.md").chmod(0)
    (src / "locked").chmod(0)
    try:
        source = LocalSource(src)
        assert [f.path for f in source.list()] == ["open.md"]
        assert source.skipped == {"unreadable": 2}
        assert source.stat("secret.md") is None and source.stat("locked/inner.md") is None
    finally:
        (src / "locked").chmod(0o755)


NAMES = [b"caf\xe9.md", b"a b%20%#?.md", b"line\nbreak.md", "ünï·code.md".encode(), b"\xff\xfe.txt"]


def test_any_file_name_lists_reads_and_round_trips_through_its_uri(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(NAMES):
        (src / os.fsdecode(name)).write_bytes(f"body {i}".encode())
    source = LocalSource(src)
    listing = source.list()
    assert len(listing) == len(NAMES) and source.skipped == {}
    for f in listing:
        real = local_name(source.uri, f.uri)
        assert f.uri.isascii() and (src / real).exists()
        assert relative_path(source, f.uri) == real  # what an event-driven re-index opens
        assert source.stat(real) == f
        assert source.read(f) == (src / real).read_bytes()
        f.path.encode("utf-8")  # stored in Milvus: never a lone surrogate
    by_uri = {f.uri[len(source.uri) + 1:]: f.path for f in listing}
    assert by_uri == {"caf%E9.md": "caf\\xe9.md", "a%20b%2520%25%23%3F.md": "a b%20%#?.md",
                      "line%0Abreak.md": "line\nbreak.md", quote("ünï·code.md"): "ünï·code.md",
                      "%FF%FE.txt": "\\xff\\xfe.txt"}  # a UTF-8 name keeps the URI (and id) it always had
    assert len({f.doc_id for f in listing}) == len(NAMES)


def test_a_source_folder_named_with_odd_bytes_opens_from_its_uri(tmp_path: Path) -> None:
    src = tmp_path / os.fsdecode(b"d\xe9p\xf4t #1")
    src.mkdir()
    (src / "a.md").write_text("a")
    source = open_source(src.as_uri(), Settings())
    assert source.uri == src.as_uri() and [f.path for f in source.list()] == ["a.md"]


def test_reading_never_blocks_on_a_fifo_swapped_in_after_the_listing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("a")
    source = LocalSource(src)
    [listed] = source.list()
    (src / "a.md").unlink()
    os.mkfifo(src / "a.md")
    with pytest.raises(OSError, match="no longer a regular file"):
        source.read(listed)


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
