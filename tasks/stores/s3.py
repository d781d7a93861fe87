"""The one module that speaks boto3: S3 verbs over SeaweedFS locally, AWS S3 or any S3 elsewhere.

Everything else uses these verbs and the project's types; errors come out as ``S3Error`` with a
message that names the endpoint and bucket but never a credential.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.utils import ChunksizeAdjuster

from tasks.settings import Settings
from tasks.stores.checksums import Check, Expected, Verdict, check_head, file_checksums

SHA256_META = "sha256"


class S3Error(RuntimeError):
    """S3 unreachable, credentials refused, object missing or corrupt — with a clear message."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class Upload:
    """An incomplete multipart upload: its parts cost storage but no listing of objects shows them."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class Verified:
    check: Check
    head: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.check.verdict is Verdict.VERIFIED


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        return cls(bucket, prefix)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.prefix}"


class S3Store:
    """A bucket (and key prefix) with the verbs ragtune needs."""

    def __init__(self, settings: Settings, bucket: str | None = None, prefix: str | None = None):
        self.endpoint = settings.s3_endpoint
        self.bucket = bucket or settings.s3.bucket
        self.prefix = (settings.s3.prefix if prefix is None else prefix).strip("/")
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=settings.s3.region,
            aws_access_key_id=settings.s3.access_key_id.get_secret_value(),
            aws_secret_access_key=settings.s3.secret_access_key.get_secret_value(),
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                          s3={"addressing_style": "path"}),
        )
        threshold = settings.s3.multipart_threshold_mb * 1024 * 1024
        self._transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def uri(self, relative: str) -> str:
        return f"s3://{self.bucket}/{self.key(relative)}"

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ClientError as exc:
            raise self._client_error(what, exc) from None
        except BotoCoreError as exc:
            raise S3Error(f"S3 {what} failed at {self.endpoint}: {type(exc).__name__}: {exc}") from None

    def _client_error(self, what: str, exc: ClientError) -> S3Error:
        code = exc.response.get("Error", {}).get("Code", "?")
        return S3Error(f"S3 {what} failed at {self.endpoint} bucket {self.bucket!r}: {code}{_hint(code)}")

    def ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise self._client_error("head_bucket", exc) from None
            self._call("create_bucket", self._client.create_bucket, Bucket=self.bucket)
        except BotoCoreError as exc:
            raise S3Error(f"S3 unreachable at {self.endpoint}: {type(exc).__name__}") from None

    def put_bytes(self, relative: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write an object; the server checks the sha256 it receives (an additional checksum)."""
        digest = hashlib.sha256(data).hexdigest()
        self._call("put", self._client.put_object, Bucket=self.bucket, Key=self.key(relative), Body=data,
                   ContentType=content_type, Metadata={SHA256_META: digest}, ChecksumAlgorithm="SHA256")
        return digest

    def get_bytes(self, relative: str, verify: bool = True) -> bytes:
        resp = self._call("get " + relative, self._client.get_object, Bucket=self.bucket, Key=self.key(relative),
                          ChecksumMode="ENABLED")
        data: bytes = resp["Body"].read()
        expected = resp.get("Metadata", {}).get(SHA256_META)
        if verify and expected and hashlib.sha256(data).hexdigest() != expected:
            raise S3Error(f"checksum mismatch for {self.uri(relative)}: the object is corrupt")
        return data

    def put_file(self, relative: str, path: Path, expected: Expected | None = None) -> str:
        """Upload (multipart above the threshold) and verify what the server holds; returns the sha256."""
        expected = expected or self.expected(path)
        self.upload_verified(relative, path, expected)
        return expected.sha256

    def upload_verified(self, relative: str, path: Path, expected: Expected | None = None) -> Verified:
        """Upload with S3's sha256 checksum (per part for multipart), then prove the stored bytes: by that
        checksum, by an MD5 ETag, or by reading them back (``tasks.stores.checksums``)."""
        expected = expected or self.expected(path)
        self._call("upload " + relative, self._client.upload_file, Filename=str(path), Bucket=self.bucket,
                   Key=self.key(relative), Config=self._transfer,
                   ExtraArgs={"Metadata": {SHA256_META: expected.sha256}, "ChecksumAlgorithm": "SHA256"})
        verified = self.verify(relative, expected)
        if verified is None or not verified.ok:
            how = verified.check.how if verified else "missing after upload"
            raise S3Error(f"upload of {self.uri(relative)} did not verify ({how} differs)")
        return verified

    def expected(self, path: Path) -> Expected:
        """Size, sha256, ETag and S3 checksum an upload of ``path`` by this store gets (same part size)."""
        return file_checksums(path, self.part_size(path.stat().st_size))

    def part_size(self, size: int) -> int | None:
        """The part size of a multipart upload of ``size`` bytes; None below the threshold (one PUT)."""
        if size < self._transfer.multipart_threshold:
            return None
        return int(ChunksizeAdjuster().adjust_chunksize(self._transfer.multipart_chunksize, size))

    def verify(self, relative: str, expected: Expected) -> Verified | None:
        """Whether the stored object is ``expected`` (None: no such object); reads it back only when its
        HEAD response proves nothing (SSE-KMS/SSE-C without an S3 checksum)."""
        head = self.head(relative)
        if head is None:
            return None
        check = check_head(head, expected)
        if check.verdict is Verdict.READ_BACK:
            same = self.read_sha256(relative) == expected.sha256
            check = Check(Verdict.VERIFIED if same else Verdict.MISMATCH, "sha256 of the bytes read back")
        return Verified(check, head)

    def read_sha256(self, relative: str) -> str:
        resp = self._call("get " + relative, self._client.get_object, Bucket=self.bucket, Key=self.key(relative))
        digest = hashlib.sha256()
        try:
            for block in resp["Body"].iter_chunks(1 << 20):
                digest.update(block)
        except BotoCoreError as exc:
            raise S3Error(f"S3 read of {relative} failed at {self.endpoint}: {type(exc).__name__}") from None
        return digest.hexdigest()

    def download_file(self, relative: str, path: Path, sha256: str | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        self._call("download " + relative, self._client.download_file, Bucket=self.bucket,
                   Key=self.key(relative), Filename=str(tmp), Config=self._transfer)
        if sha256 and file_sha256(tmp) != sha256:
            tmp.unlink(missing_ok=True)
            raise S3Error(f"checksum mismatch for {self.uri(relative)}: the object is corrupt")
        tmp.replace(path)
        return path

    def head(self, relative: str) -> dict[str, Any] | None:
        """Size, ETag, sha256 metadata, S3 sha256 checksum and encryption of an object (None: absent)."""
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self.key(relative), ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._client_error(f"head {relative}", exc) from None
        except BotoCoreError as exc:
            raise S3Error(f"S3 unreachable at {self.endpoint}: {type(exc).__name__}") from None
        return {"size": resp["ContentLength"], "etag": resp["ETag"].strip('"'),
                "sha256": resp.get("Metadata", {}).get(SHA256_META), "checksum_sha256": resp.get("ChecksumSHA256"),
                "sse": resp.get("ServerSideEncryption"), "sse_customer": resp.get("SSECustomerAlgorithm")}

    def exists(self, relative: str) -> bool:
        return self.head(relative) is not None

    def list(self, relative_prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under a prefix; keys are returned relative to this store's prefix."""
        for key, obj in self._listing("list", "list_objects_v2", "Contents", relative_prefix):
            yield ObjectInfo(key, obj["Size"], obj["ETag"].strip('"'), obj["LastModified"])

    def delete(self, relatives: Sequence[str]) -> int:
        for start in range(0, len(relatives), 1000):
            batch = [{"Key": self.key(r)} for r in relatives[start:start + 1000]]
            self._call("delete", self._client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch})
        return len(relatives)

    def copy_to(self, relative: str, dest: S3Store, dest_relative: str) -> None:
        """Server-side copy into another bucket/prefix of the same S3 (multipart copy for large objects)."""
        self._call("copy " + relative, self._client.copy, CopySource={"Bucket": self.bucket, "Key": self.key(relative)},
                   Bucket=dest.bucket, Key=dest.key(dest_relative))

    def list_uploads(self, relative_prefix: str = "") -> Iterator[Upload]:
        """Incomplete multipart uploads under a prefix (a killed or failed upload leaves them)."""
        for key, up in self._listing("list_multipart_uploads", "list_multipart_uploads", "Uploads", relative_prefix):
            yield Upload(key, up["UploadId"], up["Initiated"])

    def abort_upload(self, upload: Upload) -> None:
        """Abort an incomplete multipart upload: the server frees its parts."""
        self._call("abort_multipart_upload", self._client.abort_multipart_upload, Bucket=self.bucket,
                   Key=self.key(upload.key), UploadId=upload.upload_id)

    def _listing(self, what: str, operation: str, field: str, relative_prefix: str) -> Iterator[tuple[str, Any]]:
        """(key relative to this store's prefix, item) for each ``field`` item of a paginated listing."""
        paginator = self._client.get_paginator(operation)
        strip = len(self.key("")) if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(relative_prefix)):
                for item in page.get(field, []):
                    yield item["Key"][strip:], item
        except ClientError as exc:
            raise self._client_error(what, exc) from None
        except BotoCoreError as exc:
            raise S3Error(f"S3 unreachable at {self.endpoint}: {type(exc).__name__}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hint(code: str) -> str:
    if code in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
        return " (credentials refused: check RAGTUNE_S3__ACCESS_KEY_ID and RAGTUNE_S3__SECRET_ACCESS_KEY)"
    return ""
