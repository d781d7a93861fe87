"""Upload a release's files to S3 and prove they landed; download them back, verified, for serving.

Keys are content-addressed (``checkpoints/sha256-<hash>/...``, ``indexes/<gen>/<snapshot_id>/...``),
so a re-run re-uploads nothing that already verifies and a promotion is idempotent. Uploads carry S3's
sha256 checksum; verification (``tasks.stores.checksums``) compares the server's checksum, else its MD5 ETag,
with the values computed locally, and reads the bytes back only where neither proves anything
(SSE-KMS/SSE-C without S3 checksums). The manifest records size, sha256, ETag and checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tasks.release.manifest import CheckpointRef, StoredFile
from tasks.stores.checksums import Expected
from tasks.stores.s3 import S3Store, file_sha256

log = logging.getLogger(__name__)
# Training state (optimizer, scheduler, RNG) is for resuming, not serving: it is not released.
_TRAINING_STATE = ("optimizer", "scheduler", "rng_state", "random_states", "scaler", "trainer_state")


@dataclass(frozen=True)
class LocalFile:
    name: str
    path: Path
    expected: Expected

    @property
    def sha256(self) -> str:
        return self.expected.sha256


@dataclass
class UploadReport:
    files: list[StoredFile]
    uploaded: int = 0
    reused: int = 0
    replaced: list[str] = field(default_factory=list)  # existing objects that no longer verified
    proofs: dict[str, str] = field(default_factory=dict)  # key -> how its bytes were proven (tasks.stores.checksums)


def describe_files(store: S3Store, root: Path, names: list[str]) -> list[LocalFile]:
    out = []
    for name in sorted(names):
        path = root / name
        out.append(LocalFile(name, path, store.expected(path)))
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
    """Upload each file unless an identical object is already there; every object verified."""
    report = UploadReport(files=[])
    for f in files:
        key = f"{prefix}/{f.name}"
        found = store.verify(key, f.expected)
        if found is not None and found.ok:
            report.reused += 1
        else:
            if found is not None:
                log.warning("%s exists but does not verify (%s): uploading it again", key, found.check.how)
                report.replaced.append(key)
            found = store.upload_verified(key, f.path, f.expected)  # raises S3Error when it does not verify
            report.uploaded += 1
        report.proofs[key] = found.check.how
        report.files.append(StoredFile(key=key, size=f.expected.size, sha256=f.sha256, etag=found.head["etag"],
                                       checksum=found.head.get("checksum_sha256") or ""))
    return report


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
