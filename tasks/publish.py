"""Upload a release's files to S3 and prove they landed; download them back, verified, for serving.

Keys are content-addressed (``checkpoints/sha256-<hash>/...``, ``indexes/<gen>/<snapshot_id>/...``),
so a re-run re-uploads nothing that already verifies and a promotion is idempotent. Verification
compares the server's ETag (its MD5 of the bytes it holds; for multipart, the MD5 of the part MD5s)
with the one computed locally: an object whose bytes were overwritten is caught without a download.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tasks.release import CheckpointRef, StoredFile
from tasks.s3 import S3Error, S3Store, file_sha256

log = logging.getLogger(__name__)
# Training state (optimizer, scheduler, RNG) is for resuming, not serving: it is not released.
_TRAINING_STATE = ("optimizer", "scheduler", "rng_state", "random_states", "scaler", "trainer_state")


@dataclass(frozen=True)
class LocalFile:
    name: str
    path: Path
    size: int
    sha256: str
    etag: str


@dataclass
class UploadReport:
    files: list[StoredFile]
    uploaded: int = 0
    reused: int = 0
    replaced: list[str] = field(default_factory=list)  # existing objects that no longer verified


def describe_files(store: S3Store, root: Path, names: list[str]) -> list[LocalFile]:
    out = []
    for name in sorted(names):
        path = root / name
        out.append(LocalFile(name, path, path.stat().st_size, file_sha256(path), store.expected_etag(path)))
    return out


def checkpoint_names(root: Path) -> list[str]:
    """The files a served checkpoint needs: the top-level files of its directory, minus training state."""
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    names = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(_TRAINING_STATE)]
    if not any(n.endswith((".safetensors", ".bin")) for n in names) and not (root / "config.json").exists():
        raise ValueError(f"{root} holds no model weights or config.json: not a checkpoint")
    return sorted(names)


def content_id(files: list[LocalFile]) -> str:
    listing = "\n".join(f"{f.name} {f.sha256}" for f in files)
    return "sha256-" + hashlib.sha256(listing.encode()).hexdigest()[:16]


def upload_files(store: S3Store, prefix: str, files: list[LocalFile]) -> UploadReport:
    """Upload each file unless an identical object is already there; verify every object afterwards."""
    report = UploadReport(files=[])
    for f in files:
        key = f"{prefix}/{f.name}"
        head = store.head(key)
        if head is not None and _matches(head, f.size, f.sha256, f.etag):
            report.reused += 1
        else:
            if head is not None:
                log.warning("%s exists but does not verify (corrupt or overwritten): uploading it again", key)
                report.replaced.append(key)
            store.put_file(key, f.path, sha256=f.sha256)
            report.uploaded += 1
            head = store.head(key)
            if head is None or not _matches(head, f.size, f.sha256, f.etag):
                raise S3Error(f"{store.uri(key)} did not verify after upload (ETag/size/sha256 differ)")
        report.files.append(StoredFile(key=key, size=f.size, sha256=f.sha256, etag=f.etag))
    return report


def _matches(head: dict[str, object], size: int, sha256: str, etag: str) -> bool:
    return head.get("size") == size and head.get("sha256") == sha256 and head.get("etag") == etag


def upload_checkpoint(store: S3Store, root: Path) -> tuple[CheckpointRef, UploadReport]:
    files = describe_files(store, root, checkpoint_names(root))
    checkpoint_id = content_id(files)
    report = upload_files(store, f"checkpoints/{checkpoint_id}", files)
    info = _read_json(root / "training.json")
    return CheckpointRef(checkpoint_id=checkpoint_id, prefix=f"checkpoints/{checkpoint_id}", files=report.files,
                         info=info), report


def download_files(store: S3Store, files: list[StoredFile], prefix: str, dest: Path) -> Path:
    """Materialize objects under ``dest`` (kept by name), each verified by sha256; local copies that
    still verify are not downloaded again."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in files:
        path = dest / entry.key.removeprefix(prefix).lstrip("/")
        if path.exists() and path.stat().st_size == entry.size and file_sha256(path) == entry.sha256:
            continue
        store.download_file(entry.key, path, sha256=entry.sha256)
    return dest


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
