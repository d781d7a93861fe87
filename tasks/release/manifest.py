"""Releases on S3: immutable manifests, one mutable pointer, listing, rollback and the gate decision.

Layout (under the store's prefix)::

    releases/<release_id>/manifest.json   immutable; binds index snapshot, checkpoint files, evals
    releases/production.json              the only mutable object; written last, after every file verified

A release exists for readers only once the pointer has named it: a manifest that no pointer event ever
named is what a killed run leaves behind; it is never served and retention removes it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.stores.checksums import Expected
from tasks.stores.s3 import S3Error, S3Store

RELEASES = "releases"
POINTER_KEY = f"{RELEASES}/production.json"
HISTORY_LIMIT = 1000  # pointer events kept: a release older than that counts as unpublished
_RELEASE_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


class ReleaseError(RuntimeError):
    """A release cannot be read, written or switched to; the message says which and why."""


class StoredFile(BaseModel):
    """One object a release needs, with what it must hash to and what S3 said once it verified."""

    key: str
    size: int
    sha256: str
    etag: str = ""
    checksum: str = Field(default="", description="S3's x-amz-checksum-sha256 (composite '-N' for multipart).")

    def expected(self) -> Expected:
        return Expected(self.size, self.sha256, self.etag, self.checksum)


class IndexSnapshot(BaseModel):
    snapshot_id: str
    prefix: str
    rows: int
    files: list[StoredFile]


class IndexRef(BaseModel):
    alias: str
    generation: str
    meta: dict[str, Any] = Field(default_factory=dict, description="tasks.types.IndexMeta as a dict")
    snapshot: IndexSnapshot | None = None


class CheckpointRef(BaseModel):
    checkpoint_id: str
    prefix: str
    files: list[StoredFile]
    info: dict[str, Any] = Field(default_factory=dict, description="the checkpoint's own training.json, if any")


class DatasetRef(BaseModel):
    version: str
    gx_success: bool | None = None
    gx: dict[str, Any] = Field(default_factory=dict)


class GateDecision(BaseModel):
    promote: bool
    forced: bool = False
    reasons: list[str]
    candidate: dict[str, float] = Field(default_factory=dict)
    production: dict[str, float] = Field(default_factory=dict)
    tolerances: dict[str, float] = Field(default_factory=dict)
    production_release: str | None = None
    baseline: str = Field(default="", description="What the production metrics were measured on: a release, "
                          "or (first release) the base model and no index.")


class ReleaseManifest(BaseModel):
    format: int = 1
    release_id: str
    created: datetime
    parent: str | None
    code_revision: str
    index: IndexRef | None = None
    model: CheckpointRef | None = None
    served_model: str | None = Field(default=None, description="The name an OpenAI-compatible engine serves this "
                                     "release's model under (a model, or a LoRA adapter the way vLLM and "
                                     "llama-server name them); None = the engine's configured model.")
    dataset: DatasetRef | None = None
    gate: GateDecision
    forced: bool = False

    def stored_files(self) -> list[StoredFile]:
        files = list(self.model.files) if self.model else []
        if self.index and self.index.snapshot:
            files += self.index.snapshot.files
        return files

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


class PointerEvent(BaseModel):
    release_id: str
    at: datetime
    action: str  # promote | rollback | repair


class Pointer(BaseModel):
    release_id: str
    manifest_sha256: str
    updated: datetime
    history: list[PointerEvent] = Field(default_factory=list)

    def ever_served(self) -> set[str]:
        return {event.release_id for event in self.history} | {self.release_id}


class ReleaseInfo(BaseModel):
    manifest: ReleaseManifest
    production: bool
    served: bool  # named by the pointer at some time: a complete, published release


def manifest_key(release_id: str) -> str:
    return f"{RELEASES}/{release_id}/manifest.json"


def new_release_id(content: str, now: datetime | None = None) -> str:
    """Sortable by time, unique by content: ``20260101T120000Z-1a2b3c4d``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{hashlib.sha256(content.encode()).hexdigest()[:8]}"


def check_release_id(release_id: str) -> str:
    if not _RELEASE_ID.match(release_id):
        raise ReleaseError(f"not a release id: {release_id!r} (expected like 20260101T120000Z-1a2b3c4d)")
    return release_id


def code_revision(repo: Path | None = None) -> str:
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def read_pointer(store: S3Store) -> Pointer | None:
    if not store.exists(POINTER_KEY):
        return None
    try:
        return Pointer.model_validate_json(store.get_bytes(POINTER_KEY))
    except ValueError as exc:
        raise ReleaseError(f"{store.uri(POINTER_KEY)} is not a valid pointer: {exc}") from None


def read_manifest(store: S3Store, release_id: str, sha256: str | None = None) -> ReleaseManifest:
    """The manifest, verified against the sha256 the pointer recorded when one is given."""
    check_release_id(release_id)
    try:
        raw = store.get_bytes(manifest_key(release_id))
    except S3Error as exc:
        raise ReleaseError(f"release {release_id} cannot be read: {exc}") from None
    if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
        raise ReleaseError(f"manifest of release {release_id} does not match the pointer's sha256: corrupt")
    try:
        return ReleaseManifest.model_validate_json(raw)
    except ValueError as exc:
        raise ReleaseError(f"manifest of release {release_id} is not valid: {exc}") from None


def write_manifest(store: S3Store, manifest: ReleaseManifest) -> str:
    """Write once: an existing manifest with other bytes is never replaced (manifests are immutable)."""
    key, data = manifest_key(check_release_id(manifest.release_id)), manifest.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    head = store.head(key)
    if head is not None:
        if head.get("sha256") != digest:
            raise ReleaseError(f"release {manifest.release_id} already exists with other content")
        return digest
    return store.put_bytes(key, data, content_type="application/json")


def flip_pointer(store: S3Store, release_id: str, manifest_sha256: str, action: str,
                 expected: str | None | bool = False) -> Pointer:
    """Point production at a release: the one write that switches serving.

    ``expected`` (a release id, or None for "no production yet") refuses the flip when another run
    moved the pointer since this run read it; False skips the check.
    """
    current = read_pointer(store)
    if expected is not False and (current.release_id if current else None) != expected:
        raise ReleaseError(f"production moved to {current.release_id if current else None} during this run "
                           f"(expected {expected}); nothing switched")
    now = datetime.now(UTC)
    history = (current.history if current else [])[-(HISTORY_LIMIT - 1):]
    pointer = Pointer(release_id=release_id, manifest_sha256=manifest_sha256, updated=now,
                      history=[*history, PointerEvent(release_id=release_id, at=now, action=action)])
    store.put_bytes(POINTER_KEY, pointer.model_dump_json(indent=2).encode(), content_type="application/json")
    return pointer


def restore_pointer(store: S3Store, previous: Pointer | None) -> None:
    """Undo a flip (a rollback hook): put back exactly the previous pointer, or none."""
    if previous is None:
        store.delete([POINTER_KEY])
    else:
        store.put_bytes(POINTER_KEY, previous.model_dump_json(indent=2).encode(), content_type="application/json")


def production(store: S3Store) -> tuple[Pointer, ReleaseManifest] | None:
    pointer = read_pointer(store)
    if pointer is None:
        return None
    return pointer, read_manifest(store, pointer.release_id, pointer.manifest_sha256)


def release_ids(store: S3Store) -> list[str]:
    """Ids with a manifest, oldest first (ids sort by creation time)."""
    found = {info.key.split("/")[1] for info in store.list(f"{RELEASES}/") if info.key.endswith("/manifest.json")}
    return sorted(i for i in found if _RELEASE_ID.match(i))


def list_releases(store: S3Store, include_unserved: bool = False) -> list[ReleaseInfo]:
    pointer = read_pointer(store)
    served = pointer.ever_served() if pointer else set()
    infos = []
    for release_id in release_ids(store):
        if release_id not in served and not include_unserved:
            continue
        infos.append(ReleaseInfo(manifest=read_manifest(store, release_id),
                                 production=bool(pointer and pointer.release_id == release_id),
                                 served=release_id in served))
    return sorted(infos, key=lambda i: (i.manifest.created, i.manifest.release_id))


def verify_stored(store: S3Store, files: list[StoredFile]) -> list[str]:
    """Problems with a release's objects (missing, wrong size, bytes changed): empty when all verify.

    From each object's HEAD response (S3 sha256 checksum, or MD5 ETag, or the ETag recorded at publish),
    so an overwrite is seen without a download; read back only where the response proves nothing.
    """
    problems = []
    for entry in files:
        found = store.verify(entry.key, entry.expected())
        if found is None:
            problems.append(f"{entry.key}: missing")
        elif not found.ok:
            problems.append(f"{entry.key}: checksum mismatch (corrupt or overwritten)")
    return problems


def rollback_target(store: S3Store, target: str | None = None) -> tuple[Pointer, ReleaseManifest, str]:
    """The release to roll back to (the production release's parent by default), verified on S3."""
    current = production(store)
    if current is None:
        raise ReleaseError("no production release: nothing to roll back")
    pointer, manifest = current
    target = target or manifest.parent
    if target is None:
        raise ReleaseError(f"release {manifest.release_id} has no parent: name the release to roll back to")
    if target == pointer.release_id:
        raise ReleaseError(f"release {target} is already production")
    if target not in pointer.ever_served():
        raise ReleaseError(f"release {target} was never published (a half-written release is never served)")
    target_manifest = read_manifest(store, target)
    problems = verify_stored(store, target_manifest.stored_files())
    if problems:
        raise ReleaseError(f"release {target} cannot be served: " + "; ".join(problems))
    return pointer, target_manifest, hashlib.sha256(target_manifest.to_bytes()).hexdigest()
