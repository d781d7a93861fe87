"""Dataset versions on S3 and in the local cache: content-addressed, immutable, manifest written last.

``datasets/<sha256>/{train.jsonl, eval.jsonl, validation.json, manifest.json}``: the id is the sha256 of
the two split files, so the same rows always give the same version and a rebuild writes nothing new.
``datasets/accepted/<name>.json`` names the last accepted version of a dataset (the drift baseline);
it is the only mutable object and is written after the version is complete. A refused build writes
only ``quarantine/<run_id>/`` (rows with reasons, the GX result, the report).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.settings import Settings

DATASETS = "datasets"
ACCEPTED = f"{DATASETS}/accepted"
QUARANTINE = "quarantine"
SPLIT_FILES = ("train.jsonl", "eval.jsonl")
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class DatasetError(RuntimeError):
    """A dataset version is missing, corrupt or refused; the message says which and why."""


class GateFailedError(DatasetError):
    """The gate refused the examples; ``failed`` names the critical expectations that did not hold."""

    def __init__(self, message: str, failed: list[str], quarantine: dict[str, str]):
        super().__init__(message)
        self.failed = failed
        self.quarantine = quarantine


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def train_path(self) -> Path:
        return self.path / "train.jsonl"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.jsonl"

    @property
    def passed(self) -> bool:
        """True only when the gate ran and every critical expectation held."""
        return bool(self.manifest.get("gate", {}).get("success"))

    def require_passed(self) -> DatasetVersion:
        if not self.passed:
            raise DatasetError(f"dataset {self.version} did not pass its gate: refusing to use it")
        return self


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")
    return name


def name_for(uri: str) -> str:
    """A default dataset name from the examples file name: ``.../ragtune_qa.jsonl`` -> ``ragtune_qa``."""
    stem = Path(uri.rstrip("/").rsplit("/", 1)[-1]).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "examples"


def encode_jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def version_id(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in SPLIT_FILES:
        digest.update(f"{name}\0{len(files[name])}\0".encode())
        digest.update(files[name])
    return digest.hexdigest()


def file_entries(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in sorted(files.items())}


def local_dir(settings: Settings, version: str) -> Path:
    return settings.cache_dir / DATASETS / version


def write_local(settings: Settings, version: str, files: dict[str, bytes]) -> Path:
    """All files into a temp dir, then one rename: a reader never sees half a version."""
    target = local_dir(settings, version)
    if (target / "manifest.json").is_file():
        return target
    tmp = target.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def publish_version(settings: Settings, name: str, files: dict[str, bytes], manifest: dict[str, Any]) -> tuple[
        DatasetVersion, bool]:
    """Upload a passed version (skipped when it exists), cache it locally, point ``name`` at it.

    Returns the version and whether it already existed (then its stored manifest wins).
    """
    from tasks.stores.s3 import S3Store

    version, store = manifest["version"], S3Store(settings)
    store.ensure_bucket()
    key = f"{DATASETS}/{version}/manifest.json"
    reused = store.exists(key)
    if reused:
        manifest = json.loads(store.get_bytes(key))
    else:
        for file_name, data in files.items():  # split files and validation.json first, manifest last
            store.put_bytes(f"{DATASETS}/{version}/{file_name}", data)
        store.put_bytes(key, _json(manifest), "application/json")
    pointer = {"name": name, "version": version, "updated": datetime.now(UTC).isoformat()}
    store.put_bytes(f"{ACCEPTED}/{check_name(name)}.json", _json(pointer), "application/json")
    path = write_local(settings, version, {**files, "manifest.json": _json(manifest)})
    return DatasetVersion(version, path, manifest), reused


def accepted_version(settings: Settings, name: str) -> str | None:
    from tasks.stores.s3 import S3Store

    store = S3Store(settings)
    key = f"{ACCEPTED}/{check_name(name)}.json"
    return json.loads(store.get_bytes(key))["version"] if store.exists(key) else None


def resolve_version(settings: Settings, ref: str) -> str:
    """A full version id, or a dataset name (its last accepted version)."""
    ref = ref.strip()
    if _VERSION.match(ref):
        return ref
    version = accepted_version(settings, ref) if _NAME.match(ref) else None
    if version is None:
        raise DatasetError(f"{ref!r} is neither a dataset version (64 hex) nor the name of an accepted dataset")
    return version


def load_dataset_version(settings: Settings, version: str) -> DatasetVersion:
    """A version from the local cache, fetched from S3 first when missing; every file is checked by sha256."""
    version = resolve_version(settings, version)
    path = local_dir(settings, version)
    if not (path / "manifest.json").is_file():
        path = _fetch(settings, version)
    manifest = json.loads((path / "manifest.json").read_text())
    for file_name, entry in manifest.get("files", {}).items():
        data = (path / file_name).read_bytes() if (path / file_name).is_file() else b""
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise DatasetError(f"{path / file_name} does not match its manifest: delete {path} to refetch it")
    return DatasetVersion(version, path, manifest)


def _fetch(settings: Settings, version: str) -> Path:
    from tasks.stores.s3 import S3Error, S3Store

    store = S3Store(settings)
    try:
        manifest_bytes = store.get_bytes(f"{DATASETS}/{version}/manifest.json")
    except S3Error as exc:
        raise DatasetError(f"dataset {version} is not in the cache nor at {store.uri(DATASETS)}: {exc}") from None
    files = {n: store.get_bytes(f"{DATASETS}/{version}/{n}") for n in json.loads(manifest_bytes)["files"]}
    return write_local(settings, version, {**files, "manifest.json": manifest_bytes})


def write_quarantine(settings: Settings, run_id: str, files: dict[str, bytes]) -> dict[str, str]:
    """The refused build's report, locally under the data dir and on S3 under ``quarantine/<run_id>/``."""
    from tasks.stores.s3 import S3Store

    local = settings.data_dir / QUARANTINE / run_id
    local.mkdir(parents=True, exist_ok=True)
    for file_name, data in files.items():
        (local / file_name).write_bytes(data)
    store = S3Store(settings)
    store.ensure_bucket()
    for file_name, data in files.items():
        store.put_bytes(f"{QUARANTINE}/{run_id}/{file_name}", data)
    return {"local": str(local), "s3": store.uri(f"{QUARANTINE}/{run_id}/")}


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")
