"""A real corpus breaks nothing: every hostile entry at once, through the real ingest flow.

Each good document is searchable afterwards; each bad one is either quarantined with its reason or
skipped (counted by reason in the report); the counts add up; a second run changes nothing.
Real Milvus Lite, real parsers and model, the Prefect test harness (as tests/ingest/test_ingest_flow.py).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tasks.settings import Settings
from tasks.stores.milvus import IndexClient

pytestmark = pytest.mark.flow
AS_ROOT = os.geteuid() == 0  # root reads a file whatever its mode: no unreadable file to make

# name (bytes: any name the file system allows) -> text (str: written as UTF-8) or bytes, and a question it answers
GOOD: dict[bytes, tuple[str | bytes, str]] = {
    b"walruses.md": ("# Walruses\n\nWalruses haul out on sea ice to rest.\n", "where do walruses rest"),
    b"notes.txt": ("Okapis have striped legs like a zebra.\n", "which animal has zebra legs"),
    b"caf\xe9.md": ("# Caf\xe9\n\nThe espresso grinder hums before dawn.\n", "espresso grinder noise"),
    b"odd name %20 #1?.md": ("# Odd\n\nPangolins roll into an armoured ball.\n", "pangolin armour ball"),
    b"two\nlines.md": ("# Lines\n\nNarwhals carry a single spiral tusk.\n", "narwhal spiral tusk"),
    "ünïcödé.md".encode(): ("# Unicode\n\nAxolotls regrow their lost limbs.\n", "axolotl limb regrowth"),
    b"sub/deep.md": ("# Deep\n\nTardigrades survive the vacuum of space.\n", "tardigrade vacuum survival"),
    b"utf16.txt": ("Dugongs graze on seagrass meadows at night.\n".encode("utf-16"), "what do dugongs eat"),
    b"legacy.md": ("# R\xe9sum\xe9\n\nThe caf\xe9's na\xefve barista spilled cr\xe8me br\xfbl\xe9e worth 5 \u20ac.\n"
                   .encode("cp1252"), "barista spilled creme brulee"),
    b"sub/gecko.mdx": ("---\ntitle: Gecko care\n---\nimport Note from './note';\n\n<Note type=\"tip\">Geckos lick "
                       "their own eyeballs to clean them.</Note>\n", "gecko licks its eyes clean"),
}
QUARANTINED = {  # name -> the start of its quarantine reason
    "empty.md": "empty file",
    "blank.md": "no text extracted",
    "heading-only.md": "no text: the parser found headings only",
    "junk.pdf": "pdf parser failed",
    "data.xyz": "unsupported file type '.xyz'",
    "huge.txt": "file too large",
    "binary.txt": "undecodable text: no encoding decodes it",
}
SKIPPED = {"hidden": 2, "symlink": 4, "special file": 1, **({} if AS_ROOT else {"unreadable": 1})}


def write_corpus(src: Path, outside: Path) -> None:
    """Good documents with arbitrary names, documents that cannot be indexed, entries that are not documents."""
    (src / "sub").mkdir(parents=True)
    for name, (text, _) in GOOD.items():
        (src / os.fsdecode(name)).write_bytes(text if isinstance(text, bytes) else text.encode())
    (src / "empty.md").write_bytes(b"")
    (src / "blank.md").write_text("   \n\n\t\n")
    (src / "heading-only.md").write_text("# Just a heading\n")
    (src / "junk.pdf").write_bytes(os.urandom(20_000))
    (src / "data.xyz").write_text("a format no parser knows\n")
    (src / "binary.txt").write_bytes(random.Random(21).randbytes(30_000))
    with (src / "huge.txt").open("wb") as fh:
        fh.truncate(33 * 2**20)  # sparse: over the 32 MiB default bound at no disk cost
    (src / ".hidden.md").write_text("# Hidden\n\nHidden marmots whistle.\n")
    (src / ".cache" / "deep").mkdir(parents=True)
    (src / ".cache" / "deep" / "x.md").write_text("# Cached\n\nA hidden folder counts once.\n")
    outside.write_text("# Outside\n\nSecret lemurs live outside the source.\n")
    (src / "inside-link.md").symlink_to(src / "walruses.md")
    (src / "outside-link.md").symlink_to(outside)
    (src / "dangling.md").symlink_to(src / "gone.md")
    (src / "outside-folder").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(src / "pipe.md")
    if not AS_ROOT:
        (src / "locked.md").write_text("# Locked\n\nNobody reads this.\n")
        (src / "locked.md").chmod(0)


def _search(settings: Settings, text: str) -> list[tuple[str, str]]:
    """(record path, URI) of the top hits."""
    from tasks.ingest.plan import embedder

    vector = embedder(settings).encode([text])[0]
    with IndexClient.from_settings(settings) as index:
        return [(h.path, h.uri) for h in index.search_dense("docs", vector, 3)]


def test_a_hostile_corpus_indexes_every_good_document_and_accounts_for_every_bad_one(
        env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from tasks.ingest.inventory import LocalSource, local_name

    src = tmp_path / "src"
    write_corpus(src, tmp_path / "outside.md")
    source_uri = LocalSource(src).uri
    report = ingest_documents(str(src))

    reasons = {local_name(source_uri, q.uri): q.reason for q in report.quarantine}
    assert set(reasons) == set(QUARANTINED)
    for name, start in QUARANTINED.items():
        assert reasons[name].startswith(start), (name, reasons[name])
    assert report.skipped == SKIPPED
    assert (report.added, report.quarantined, report.updated, report.deleted) == (len(GOOD), len(QUARANTINED), 0, 0)
    for name, (_, question) in GOOD.items():
        path, uri = _search(env, question)[0]
        assert local_name(source_uri, uri) == os.fsdecode(name), question  # the URI names the file's bytes
        assert path == name.decode("utf-8", "backslashreplace")  # the stored path is printable text
    assert all("lemurs" not in path for path, _ in _search(env, "secret lemurs outside"))
    with IndexClient.from_settings(env) as index:
        records = index.read_records("docs")
    statuses = sorted(r.status for r in records.values())
    assert statuses == sorted(["indexed"] * len(GOOD) + ["quarantined"] * len(QUARANTINED))
    assert all(r.chunk_count > 0 for r in records.values() if r.status == "indexed")

    os.utime(src / "heading-only.md")  # touched, not changed: still quarantined, not parsed again
    rerun = ingest_documents(str(src))
    assert (rerun.unchanged, rerun.still_quarantined, rerun.quarantined, rerun.added) == (
        len(GOOD), len(QUARANTINED), 0, 0)
    assert rerun.skipped == SKIPPED and rerun.chunks_written == 0
    assert "parse" not in rerun.seconds and "embed" not in rerun.seconds


def test_an_event_for_a_byte_named_document_reindexes_it(env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from flows.reindex import reindex_document
    from tasks.ingest.inventory import LocalSource

    src = tmp_path / "src"
    src.mkdir()
    name = os.fsdecode(b"r\xe9sum\xe9 #2.md")
    (src / name).write_text("# Notes\n\nKiwis lay enormous eggs.\n")
    (src / "other.md").write_text("# Other\n\nIbexes climb dams.\n")
    assert ingest_documents(str(src)).added == 2
    [listed] = [f for f in LocalSource(src).list() if f.path != "other.md"]
    assert listed.uri.endswith("/r%E9sum%E9%20%232.md")

    (src / name).write_text("# Notes\n\nKiwis are nocturnal birds of New Zealand.\n")
    report = reindex_document([listed.uri])
    assert (report.updated, report.added, report.deleted, report.unchanged) == (1, 0, 0, 0)
    assert _search(env, "nocturnal birds of New Zealand")[0] == ("r\\xe9sum\\xe9 #2.md", listed.uri)
    (src / name).unlink()
    assert reindex_document([listed.uri]).deleted == 1
