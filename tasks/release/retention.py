"""Retention: keep the last N published releases; delete what nothing kept refers to.

Planning is a pure function over the listing, so what would be deleted can be shown (``--dry-run``)
and tested without S3. Never deleted: production, its parent, anything a kept release references,
and any unreferenced object younger than the grace period (an in-flight promotion may be writing it).
Only the prefixes promotion owns are touched: ``releases/``, ``indexes/`` and the content-addressed
``checkpoints/sha256-*`` uploads. Incomplete multipart uploads there (a killed run, or S3 down mid-upload,
leaves them: their parts use storage but no object listing shows them) are aborted once older than the
grace period too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tasks.release.manifest import (
    POINTER_KEY,
    RELEASES,
    Pointer,
    ReleaseError,
    ReleaseManifest,
    manifest_key,
    read_manifest,
    read_pointer,
    release_ids,
)
from tasks.stores.s3 import ObjectInfo, S3Error, S3Store, Upload

OWNED_PREFIXES = (f"{RELEASES}/", "indexes/", "checkpoints/sha256-")
_GENERATION = re.compile(r"^(?P<alias>.+)__g(?P<n>\d+)$")
log = logging.getLogger(__name__)


@dataclass
class RetentionPlan:
    keep: list[str]
    drop_releases: list[str]
    half_written: list[str]
    delete_keys: list[str]
    drop_generations: list[str] = field(default_factory=list)
    abort_uploads: list[Upload] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"kept": self.keep, "dropped_releases": self.drop_releases, "half_written": self.half_written,
                "deleted_objects": len(self.delete_keys), "dropped_generations": self.drop_generations,
                "aborted_uploads": [u.key for u in self.abort_uploads]}


def kept_releases(pointer: Pointer | None, manifests: dict[str, ReleaseManifest], keep_last: int,
                  young: set[str]) -> list[str]:
    """The last ``keep_last`` published releases, plus production, its parent and in-flight ones."""
    served = sorted((r for r in manifests if pointer and r in pointer.ever_served()),
                    key=lambda r: (manifests[r].created, r))
    keep = set(served[-keep_last:]) | (young & set(manifests))
    if pointer and pointer.release_id in manifests:
        keep.add(pointer.release_id)
        parent = manifests[pointer.release_id].parent
        if parent in manifests:
            keep.add(parent)
    return sorted(keep, key=lambda r: (manifests[r].created, r))


def plan_retention(pointer: Pointer | None, manifests: dict[str, ReleaseManifest], objects: list[ObjectInfo],
                   keep_last: int, now: datetime, grace: timedelta,
                   generations: dict[str, list[str]] | None = None, uploads: list[Upload] | None = None,
                   ) -> RetentionPlan:
    """What to delete. ``generations``: alias -> its physical generations in Milvus, the live one included;
    ``uploads``: the incomplete multipart uploads on S3."""
    old = now - grace
    young = {o.key.split("/")[1] for o in objects if o.key.startswith(f"{RELEASES}/") and o.last_modified > old}
    keep = kept_releases(pointer, manifests, keep_last, young)
    referenced = {POINTER_KEY} | {manifest_key(r) for r in keep}
    referenced |= {f.key for r in keep for f in manifests[r].stored_files()}
    served = pointer.ever_served() if pointer else set()
    delete = sorted(o.key for o in objects
                    if o.key.startswith(OWNED_PREFIXES) and o.key not in referenced and o.last_modified <= old)
    dropped = {k.split("/")[1] for k in delete if k.startswith(f"{RELEASES}/")}
    return RetentionPlan(keep=keep, drop_releases=sorted(dropped & served), half_written=sorted(dropped - served),
                         delete_keys=delete, drop_generations=_old_generations(keep, manifests, generations or {}),
                         abort_uploads=stale_uploads(uploads or [], now, grace))


def stale_uploads(uploads: list[Upload], now: datetime, grace: timedelta) -> list[Upload]:
    """Incomplete multipart uploads under promotion's prefixes, started before the grace period: a run
    that died mid-upload. Younger ones may belong to a promotion still uploading."""
    return sorted((u for u in uploads if u.key.startswith(OWNED_PREFIXES) and u.initiated <= now - grace),
                  key=lambda u: (u.key, u.initiated))


def _old_generations(keep: list[str], manifests: dict[str, ReleaseManifest],
                     generations: dict[str, list[str]]) -> list[str]:
    """Generations older than every kept release's generation of the same alias (newer ones may be
    candidates still being built or evaluated, so they are left alone)."""
    floor: dict[str, int] = {}
    used = set()
    for release_id in keep:
        index = manifests[release_id].index
        if index and (m := _GENERATION.match(index.generation)):
            floor[index.alias] = min(floor.get(index.alias, 1 << 30), int(m["n"]))
            used.add(index.generation)
    drop = []
    for alias, names in generations.items():
        for name in names:
            m = _GENERATION.match(name)
            if m and alias in floor and int(m["n"]) < floor[alias] and name not in used:
                drop.append(name)
    return sorted(drop)


def apply_retention(plan: RetentionPlan, delete_objects: Callable[[list[str]], int],
                    drop_generation: Callable[[str], None], abort_upload: Callable[[Upload], None],
                    ) -> dict[str, object]:
    """Abort stale uploads, delete the planned objects, then drop the planned generations (each abort or
    drop failure is reported, not fatal)."""
    upload_errors = []
    for upload in plan.abort_uploads:
        try:
            abort_upload(upload)
        except RuntimeError as exc:
            upload_errors.append(f"{upload.key}: {exc}")
    deleted = delete_objects(plan.delete_keys) if plan.delete_keys else 0
    failed = []
    for name in plan.drop_generations:
        try:
            drop_generation(name)
        except RuntimeError as exc:  # e.g. an alias still serves it: leave it, say why
            failed.append(f"{name}: {exc}")
    return {**plan.summary(), "deleted_objects": deleted, "generation_errors": failed,
            "upload_errors": upload_errors}


def plan_from_store(store: S3Store, keep_last: int, grace: timedelta,
                    generations: dict[str, list[str]] | None = None, now: datetime | None = None) -> RetentionPlan:
    """List what promotion owns on S3 and plan; refuses when production's manifest cannot be read."""
    pointer = read_pointer(store)
    objects = [o for prefix in OWNED_PREFIXES for o in store.list(prefix)]
    manifests: dict[str, ReleaseManifest] = {}
    for release_id in release_ids(store):
        try:
            manifests[release_id] = read_manifest(store, release_id)
        except ReleaseError:
            if pointer and release_id in pointer.ever_served():
                raise  # a published release we cannot read: deleting around it could lose its files
    if pointer and pointer.release_id not in manifests:
        raise ReleaseError(f"production release {pointer.release_id} has no manifest: retention refuses to run")
    return plan_retention(pointer, manifests, objects, keep_last, now or datetime.now(UTC), grace, generations,
                          _uploads(store))


def _uploads(store: S3Store) -> list[Upload]:
    try:
        return [u for prefix in OWNED_PREFIXES for u in store.list_uploads(prefix)]
    except S3Error as exc:  # a server without ListMultipartUploads: the objects are still cleaned
        log.warning("incomplete multipart uploads cannot be listed, none aborted: %s", exc)
        return []
