"""What production serves, read from the release pointer and kept in a local cache.

Every load verifies: the manifest against the sha256 the pointer recorded, each checkpoint file against
the manifest's sha256 (a corrupt local copy is fetched again; a corrupt S3 object fails clearly). When
S3 cannot be reached, the last pointer this machine read keeps serving (with a warning), so an S3
outage never takes answering down; with no pointer anywhere, the caller serves its defaults.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.release.manifest import Pointer, ReleaseError, ReleaseManifest, read_manifest, read_pointer
from tasks.release.publish import download_files
from tasks.settings import Settings
from tasks.stores.s3 import S3Error, S3Store, file_sha256

log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_MEMO: dict[str, tuple[float, ProductionRelease | None]] = {}
_VERIFIED: dict[Path, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256) hashed in this process


@dataclass(frozen=True)
class ProductionRelease:
    release_id: str
    manifest: ReleaseManifest
    collection: str | None  # the physical generation the release binds
    model_path: Path | None  # a verified local copy of the checkpoint; None when the release has no model
    from_cache: bool = False  # S3 was unreachable: served from the last pointer read here


def cache_root(settings: Settings) -> Path:
    return settings.cache_dir / "releases"


def production_release(settings: Settings, store: S3Store | None = None) -> ProductionRelease | None:
    """The release the pointer names, materialized locally; re-read at most every ``pointer_ttl_s``."""
    key = f"{settings.s3_endpoint}|{settings.s3.bucket}|{settings.s3.prefix}|{settings.data_dir}"
    with _LOCK:
        hit = _MEMO.get(key)
        if hit and time.monotonic() - hit[0] < settings.release.pointer_ttl_s:
            return hit[1]
        found = _load(settings, store)
        _MEMO[key] = (time.monotonic(), found)
        return found


def forget() -> None:
    """Drop the in-process memo (after a promotion or rollback in this process)."""
    with _LOCK:
        _MEMO.clear()


def _load(settings: Settings, store: S3Store | None) -> ProductionRelease | None:
    root = cache_root(settings)
    try:
        store = store or S3Store(settings)
        pointer = read_pointer(store)
    except S3Error as exc:
        return _from_cache(root, str(exc))
    if pointer is None:
        return None
    manifest = read_manifest(store, pointer.release_id, pointer.manifest_sha256)
    model_path = _checkpoint(store, manifest, root)
    (root / pointer.release_id).mkdir(parents=True, exist_ok=True)
    (root / pointer.release_id / "manifest.json").write_bytes(manifest.to_bytes())
    (root / "pointer.json").write_text(pointer.model_dump_json(indent=2))
    return _release(manifest, model_path, from_cache=False)


def _checkpoint(store: S3Store, manifest: ReleaseManifest, root: Path) -> Path | None:
    if manifest.model is None:
        return None
    dest = root / "checkpoints" / manifest.model.checkpoint_id
    if all(_verified(dest / f.key.rsplit("/", 1)[1], f.size, f.sha256) for f in manifest.model.files):
        return dest
    try:
        return download_files(store, manifest.model.files, manifest.model.prefix, dest)
    except S3Error as exc:
        raise ReleaseError(f"release {manifest.release_id}: checkpoint cannot be loaded: {exc}") from None


def _from_cache(root: Path, why: str) -> ProductionRelease | None:
    try:
        pointer = Pointer.model_validate_json((root / "pointer.json").read_text())
        raw = (root / pointer.release_id / "manifest.json").read_bytes()
    except (OSError, ValueError):
        log.warning("no release pointer: %s; serving the defaults", why)
        return None
    if hashlib.sha256(raw).hexdigest() != pointer.manifest_sha256:
        raise ReleaseError(f"cached manifest of release {pointer.release_id} is corrupt and S3 is unreachable")
    manifest = ReleaseManifest.model_validate_json(raw)
    model_path = None
    if manifest.model is not None:
        model_path = root / "checkpoints" / manifest.model.checkpoint_id
        bad = [f.key for f in manifest.model.files
               if not _verified(model_path / f.key.rsplit("/", 1)[1], f.size, f.sha256)]
        if bad:
            raise ReleaseError(f"release {pointer.release_id}: local checkpoint copy fails verification "
                               f"({', '.join(bad)}) and S3 is unreachable: {why}")
    log.warning("S3 unreachable (%s): serving release %s from the local cache", why, pointer.release_id)
    return _release(manifest, model_path, from_cache=True)


def _release(manifest: ReleaseManifest, model_path: Path | None, from_cache: bool) -> ProductionRelease:
    collection = manifest.index.generation if manifest.index else None
    return ProductionRelease(manifest.release_id, manifest, collection, model_path, from_cache)


def _verified(path: Path, size: int, sha256: str) -> bool:
    """sha256 of a local file, hashed once per process unless the file changed since."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != size:
        return False
    seen = _VERIFIED.get(path)
    if seen and seen[:2] == (stat.st_size, stat.st_mtime_ns):
        return seen[2] == sha256
    digest = file_sha256(path)
    _VERIFIED[path] = (stat.st_size, stat.st_mtime_ns, digest)
    return digest == sha256
