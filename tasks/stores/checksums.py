"""How an object's bytes on S3 are proven to be the bytes we meant, as pure functions over a HEAD response.

Three proofs, strongest first:

1. S3's additional checksum (``x-amz-checksum-sha256``, requested with ``ChecksumMode=ENABLED``): the
   server hashed what it received. A multipart upload gets a *composite* value, the sha256 of the parts'
   sha256 digests with ``-<parts>`` appended, so it is computed locally with the same part size.
2. The ETag, which is the MD5 of the bytes (or of the part MD5s, ``-<parts>``) only for unencrypted and
   SSE-S3 objects: under SSE-KMS or SSE-C it is an opaque value.
3. Neither: the bytes are read back and hashed (one download; correct everywhere, so it is the fallback).

Once an object verified, its ETag and checksum are recorded; later checks compare with those, so an
opaque ETag still proves "the same object that verified at publish".
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")
_OPAQUE_ETAG_SSE = ("aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class Expected:
    """What an object must be: size and sha256, plus the ETag and S3 checksum it gets (or got) on S3."""

    size: int
    sha256: str  # hex, of the whole file
    etag: str = ""  # MD5 form ("<md5>" or "<md5 of part md5s>-<parts>"), or an ETag recorded after verifying
    checksum: str = ""  # x-amz-checksum-sha256: base64 of the sha256, or composite "<base64>-<parts>"


class Verdict(Enum):
    VERIFIED = "verified"
    MISMATCH = "mismatch"
    READ_BACK = "read back"  # the HEAD response cannot tell: hash the stored bytes


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    how: str  # which proof decided, for logs and errors


def file_checksums(path: Path, part_size: int | None) -> Expected:
    """Size, sha256, MD5 ETag and S3 sha256 checksum of ``path`` uploaded whole (``part_size`` None) or in
    parts of ``part_size`` bytes, in one read of the file."""
    whole_sha, whole_md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    part_md5s: list[bytes] = []
    part_sha256s: list[bytes] = []
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(part_size or 1 << 20), b""):
            whole_sha.update(block)
            if part_size:
                part_md5s.append(hashlib.md5(block, usedforsecurity=False).digest())
                part_sha256s.append(hashlib.sha256(block).digest())
            else:
                whole_md5.update(block)
    size = path.stat().st_size
    if part_size is None:
        return Expected(size, whole_sha.hexdigest(), whole_md5.hexdigest(), _b64(whole_sha.digest()))
    return Expected(size, whole_sha.hexdigest(), composite_md5(part_md5s), composite_sha256(part_sha256s))


def composite_md5(part_md5s: list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


def composite_sha256(part_sha256s: list[bytes]) -> str:
    return f"{_b64(hashlib.sha256(b''.join(part_sha256s)).digest())}-{len(part_sha256s)}"


def etag_is_md5(head: dict[str, Any]) -> bool:
    """SSE-KMS and SSE-C objects have ETags that are not an MD5 of their bytes (AWS S3 documents it)."""
    return (head.get("sse") not in _OPAQUE_ETAG_SSE and not head.get("sse_customer")
            and bool(_MD5_ETAG.match(str(head.get("etag", "")))))


def check_head(head: dict[str, Any], expected: Expected) -> Check:
    """Decide from a HEAD response (``tasks.stores.s3.S3Store.head``) whether the stored bytes are ``expected``."""
    if head.get("size") != expected.size:
        return Check(Verdict.MISMATCH, "size")
    if head.get("sha256") not in (None, expected.sha256):  # ragtune wrote other bytes under this key
        return Check(Verdict.MISMATCH, "sha256 metadata")
    stored, want = head.get("checksum_sha256") or "", expected.checksum
    if stored and want:
        if stored == want:
            return Check(Verdict.VERIFIED, "x-amz-checksum-sha256")
        if _parts(stored) == _parts(want):
            return Check(Verdict.MISMATCH, "x-amz-checksum-sha256")
        # another part size (uploaded by another tool): the composite value cannot be compared
    etag = str(head.get("etag", ""))
    if expected.etag and etag == expected.etag:
        return Check(Verdict.VERIFIED, "ETag (MD5)" if etag_is_md5(head) else "ETag (recorded at publish)")
    if etag_is_md5(head) and _MD5_ETAG.match(expected.etag) and _parts(etag) == _parts(expected.etag):
        return Check(Verdict.MISMATCH, "ETag (MD5)")
    return Check(Verdict.READ_BACK, "no comparable checksum or MD5 ETag (SSE-KMS, SSE-C or other part size)")


def _parts(value: str) -> int:
    """The part count of a composite value (0: a whole-object value)."""
    _, sep, count = value.rpartition("-")
    return int(count) if sep and count.isdigit() else 0


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()
