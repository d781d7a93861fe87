"""Sources (a local folder or an S3 prefix) listed and diffed against the index's record.

A listing costs metadata only (size, mtime or ETag): a file whose size and version match its
record is unchanged without being read. Content hashes are computed only for files whose
metadata moved, so a ``touch`` costs a read and a hash but no parse or embed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote_to_bytes, urlparse

from tasks.settings import Settings
from tasks.types import DocRecord, doc_id_for


@dataclass(frozen=True)
class SourceFile:
    uri: str  # the document's identity, also the resource id of its Prefect events
    source: str  # the root it was listed under
    path: str  # relative to the root, printable (``printable``): to show and store; the URI names the bytes
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
    skipped: dict[str, int]  # reason -> entries the last listing left out on purpose

    def list(self) -> list[SourceFile]: ...

    def read(self, file: SourceFile) -> bytes: ...

    def stat(self, path: str) -> SourceFile | None: ...


class LocalSource:
    """A folder, recursively. Only regular files are documents: hidden entries, symbolic links (any, so
    that nothing outside the folder is ever read and no file is indexed twice), special files and
    unreadable entries are skipped and counted in ``skipped`` by reason.

    File names are bytes: the URI percent-encodes the raw bytes (a name that is not UTF-8 round-trips),
    ``SourceFile.path`` is a printable rendering of them, and reading decodes the real name from the URI.
    """

    def __init__(self, root: Path):
        self.root = root.resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"source folder {root} does not exist")
        self.uri = self.root.as_uri()
        self.skipped: dict[str, int] = {}

    def list(self) -> list[SourceFile]:
        out, skipped = [], Counter[str]()
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=lambda _: skipped.update(["unreadable"])):
            for name in sorted(dirnames):
                if reason := _skip_reason(os.path.join(dirpath, name), name):
                    skipped[reason] += 1
                    dirnames.remove(name)  # not descended into
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if reason := _skip_reason(full, name):
                    skipped[reason] += 1
                elif found := self._file(full):
                    out.append(found)
        self.skipped = dict(sorted(skipped.items()))
        return out

    def stat(self, path: str) -> SourceFile | None:
        """The document at ``path`` (relative, or absolute under the folder), under the listing's rules."""
        full = os.path.normpath(self.root / path)
        rel = Path(full).relative_to(self.root) if Path(full).is_relative_to(self.root) else None
        if rel is None or ".." in Path(path).parts or os.path.realpath(full) != full:
            return None  # outside the folder, or through a symbolic link
        inner = [self.root.joinpath(*rel.parts[:i + 1]) for i in range(len(rel.parts))]
        if any(_skip_reason(str(p), p.name) for p in inner):
            return None
        return self._file(full)

    def read(self, file: SourceFile) -> bytes:
        return _read_regular(self.root / local_name(self.uri, file.uri))

    def _file(self, full: str) -> SourceFile | None:
        try:
            info = os.lstat(full)
        except OSError:
            return None  # gone since it was listed
        rel = Path(full).relative_to(self.root).as_posix()
        uri = f"{self.uri}/{quote(os.fsencode(rel))}"
        return SourceFile(uri, self.uri, printable(rel), info.st_size, str(info.st_mtime_ns))


def _skip_reason(path: str, name: str) -> str | None:
    """Why a folder entry is not a document (or a folder to descend into); None when it is."""
    if name.startswith("."):
        return "hidden"
    try:
        info = os.lstat(path)
    except OSError:
        return "unreadable"
    if stat.S_ISLNK(info.st_mode):
        return "symlink"
    if stat.S_ISDIR(info.st_mode):
        return None if os.access(path, os.R_OK | os.X_OK) else "unreadable"
    if not stat.S_ISREG(info.st_mode):
        return "special file"  # fifo, socket, device: reading one could block or never end
    return None if os.access(path, os.R_OK) else "unreadable"


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file; never follows a link or blocks on a fifo swapped in since the listing."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{printable(str(path))} is no longer a regular file")
        return fh.read()


def local_name(source_uri: str, uri: str) -> str:
    """The file system name (relative to the folder) of a ``file:`` document URI: percent-decoded bytes."""
    if not uri.startswith(source_uri + "/"):
        raise ValueError(f"document {uri} is not under source {source_uri}")
    return os.fsdecode(unquote_to_bytes(uri[len(source_uri) + 1:]))


def printable(name: str) -> str:
    """A file name as text any store accepts: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class S3Source:
    """Objects under ``s3://bucket/prefix`` through the project's S3 module."""

    def __init__(self, uri: str, settings: Settings):
        from tasks.stores.s3 import S3Location, S3Store

        loc = S3Location.parse(uri)
        self.store = S3Store(settings, bucket=loc.bucket, prefix=loc.prefix)
        self.uri = f"s3://{loc.bucket}/{self.store.prefix}".rstrip("/")
        self.skipped: dict[str, int] = {}  # every key is an object; folder markers are not entries

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
        return LocalSource(Path(os.fsdecode(unquote_to_bytes(urlparse(spec).path))))
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
