"""Sources (a local folder or an S3 prefix) listed and diffed against the index's record.

A listing costs metadata only (size, mtime or ETag): a file whose size and version match its
record is unchanged without being read. Content hashes are computed only for files whose
metadata moved, so a ``touch`` costs a read and a hash but no parse or embed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlparse

from tasks.settings import Settings
from tasks.types import DocRecord, doc_id_for


@dataclass(frozen=True)
class SourceFile:
    uri: str  # the document's identity, also the resource id of its Prefect events
    source: str  # the root it was listed under
    path: str  # relative to the root
    size: int
    version: str  # mtime_ns (files) or ETag (S3)

    @property
    def doc_id(self) -> str:
        return doc_id_for(self.uri)

    @property
    def suffix(self) -> str:
        return Path(self.path).suffix.lower()


class Source(Protocol):
    uri: str

    def list(self) -> list[SourceFile]: ...

    def read(self, file: SourceFile) -> bytes: ...

    def stat(self, path: str) -> SourceFile | None: ...


class LocalSource:
    """A folder, recursively; hidden entries and links leaving the folder are skipped."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"source folder {root} does not exist")
        self.uri = self.root.as_uri()

    def list(self) -> list[SourceFile]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and (found := self.stat(os.path.join(dirpath, name))):
                    out.append(found)
        return out

    def stat(self, path: str) -> SourceFile | None:
        full = Path(path) if os.path.isabs(path) else self.root / path
        if ".." in Path(path).parts:
            return None  # a name from an event must not reach outside the source
        try:
            real = full.resolve()
            real.relative_to(self.root)  # a link pointing outside the source is not part of it
            info = real.stat()
        except (OSError, ValueError):
            return None
        if not real.is_file():
            return None
        rel = full.relative_to(self.root).as_posix()
        return SourceFile(f"{self.uri}/{quote(rel)}", self.uri, rel, info.st_size, str(info.st_mtime_ns))

    def read(self, file: SourceFile) -> bytes:
        return (self.root / file.path).read_bytes()


class S3Source:
    """Objects under ``s3://bucket/prefix`` through the project's S3 module."""

    def __init__(self, uri: str, settings: Settings):
        from tasks.stores.s3 import S3Location, S3Store

        loc = S3Location.parse(uri)
        self.store = S3Store(settings, bucket=loc.bucket, prefix=loc.prefix)
        self.uri = f"s3://{loc.bucket}/{self.store.prefix}".rstrip("/")

    def list(self) -> list[SourceFile]:
        return [SourceFile(f"{self.uri}/{o.key}", self.uri, o.key, o.size, o.etag)
                for o in self.store.list() if o.key and not o.key.endswith("/")]

    def stat(self, path: str) -> SourceFile | None:
        head = self.store.head(path)
        return None if head is None else SourceFile(f"{self.uri}/{path}", self.uri, path, head["size"], head["etag"])

    def read(self, file: SourceFile) -> bytes:
        return self.store.get_bytes(file.path, verify=False)


def open_source(spec: str, settings: Settings) -> Source:
    """A source from a CLI argument: ``s3://bucket/prefix``, ``file:///dir`` or a folder path."""
    if spec.startswith("s3://"):
        return S3Source(spec, settings)
    if spec.startswith("file://"):
        return LocalSource(Path(unquote(urlparse(spec).path)))
    return LocalSource(Path(spec))


@dataclass
class Diff:
    added: list[SourceFile] = field(default_factory=list)
    changed: list[SourceFile] = field(default_factory=list)  # metadata moved; content may not have
    unchanged: list[SourceFile] = field(default_factory=list)
    still_quarantined: list[SourceFile] = field(default_factory=list)
    removed: list[DocRecord] = field(default_factory=list)

    @property
    def todo(self) -> list[SourceFile]:
        return self.added + self.changed


def diff_listing(listing: Iterable[SourceFile], records: dict[str, DocRecord]) -> Diff:
    """Classify a listing against the record of the same source."""
    diff = Diff()
    seen = set()
    for file in listing:
        seen.add(file.doc_id)
        record = records.get(file.doc_id)
        same = record is not None and (record.size, record.version) == (file.size, file.version)
        if record is None:
            diff.added.append(file)
        elif same and record.status == "indexed":
            diff.unchanged.append(file)
        elif same and record.status == "quarantined":
            diff.still_quarantined.append(file)
        else:
            diff.changed.append(file)
    diff.removed = [r for doc_id, r in records.items() if doc_id not in seen]
    return diff


def deletion_refusal(diff: Diff, records: dict[str, DocRecord], max_share: float) -> str | None:
    """Why this diff must not delete (an empty or failed listing looks like a mass deletion)."""
    indexed = sum(1 for r in records.values() if r.status == "indexed")
    removing = sum(1 for r in diff.removed if r.status == "indexed")
    listed = len(diff.added) + len(diff.changed) + len(diff.unchanged) + len(diff.still_quarantined)
    if indexed and listed == 0:
        return f"the listing is empty but the index holds {indexed} documents from this source"
    if removing > max(1, max_share * indexed):
        return (f"the listing would delete {removing} of {indexed} documents ({removing / indexed:.0%} > "
                f"{max_share:.0%} guard)")
    return None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
