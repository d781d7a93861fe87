"""Checksum verification: the decision from a HEAD response (pure, every path including SSE-KMS), and the
path SeaweedFS takes (S3 sha256 checksums, composite for multipart) plus the read-back fallback on it."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import numpy as np
import pytest

from tasks.release.manifest import verify_stored
from tasks.release.publish import describe_files, upload_files
from tasks.settings import Settings
from tasks.stores.checksums import Expected, Verdict, check_head, composite_sha256, etag_is_md5, file_checksums
from tasks.stores.s3 import S3Store

DATA = b"0123456789" * 1000
SHA = hashlib.sha256(DATA)
MD5 = hashlib.md5(DATA, usedforsecurity=False).hexdigest()
WANT = Expected(len(DATA), SHA.hexdigest(), MD5, base64.b64encode(SHA.digest()).decode())
OPAQUE = "9f3b1c0e5d2a4b6c8e0f1a2b3c4d5e6f"  # an SSE-KMS ETag: 32 hex digits, but not the MD5 of the bytes


def head(**fields: object) -> dict[str, object]:
    return {"size": len(DATA), "etag": MD5, "sha256": WANT.sha256, "checksum_sha256": None, "sse": None,
            "sse_customer": None, **fields}


def test_file_checksums_whole_and_multipart(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert file_checksums(path, None) == WANT
    parts = [DATA[i:i + 4000] for i in range(0, len(DATA), 4000)]
    multi = file_checksums(path, 4000)
    assert multi.sha256 == WANT.sha256 and multi.etag.endswith("-3") and multi.checksum.endswith("-3")
    assert multi.checksum == composite_sha256([hashlib.sha256(p).digest() for p in parts])


@pytest.mark.parametrize(("fields", "verdict", "how"), [
    ({"checksum_sha256": WANT.checksum}, Verdict.VERIFIED, "x-amz-checksum-sha256"),
    ({"checksum_sha256": WANT.checksum, "sse": "aws:kms", "etag": OPAQUE}, Verdict.VERIFIED, "x-amz-checksum-sha256"),
    ({"checksum_sha256": base64.b64encode(b"x" * 32).decode()}, Verdict.MISMATCH, "x-amz-checksum-sha256"),
    ({}, Verdict.VERIFIED, "ETag (MD5)"),
    ({"sse": "AES256"}, Verdict.VERIFIED, "ETag (MD5)"),  # SSE-S3 keeps MD5 ETags
    ({"etag": "0" * 32}, Verdict.MISMATCH, "ETag (MD5)"),
    ({"size": 1}, Verdict.MISMATCH, "size"),
    ({"sha256": "f" * 64}, Verdict.MISMATCH, "sha256 metadata"),
    # SSE-KMS / SSE-C without an S3 checksum: the ETag proves nothing, so the bytes are read back
    ({"sse": "aws:kms", "etag": OPAQUE}, Verdict.READ_BACK, "no comparable"),
    ({"sse_customer": "AES256", "etag": OPAQUE}, Verdict.READ_BACK, "no comparable"),
    # uploaded by another tool with another part size: neither composite value compares
    ({"checksum_sha256": "abc=-7", "etag": "0" * 32 + "-7"}, Verdict.READ_BACK, "no comparable"),
])
def test_check_head_decides_how_to_verify(fields: dict[str, object], verdict: Verdict, how: str) -> None:
    check = check_head(head(**fields), WANT)
    assert check.verdict is verdict and check.how.startswith(how)


def test_an_etag_recorded_at_publish_proves_the_same_object_under_sse_kms() -> None:
    recorded = Expected(WANT.size, WANT.sha256, etag=OPAQUE)  # a manifest written on an SSE-KMS bucket
    assert not etag_is_md5(head(sse="aws:kms", etag=OPAQUE))
    assert check_head(head(sse="aws:kms", etag=OPAQUE), recorded).how == "ETag (recorded at publish)"
    assert check_head(head(sse="aws:kms", etag="1" * 32), recorded).verdict is Verdict.READ_BACK  # overwritten?


def test_seaweedfs_takes_the_s3_checksum_path_and_read_back_works(s3_settings: Settings, tmp_path: Path) -> None:
    """SeaweedFS stores x-amz-checksum-sha256 (composite for multipart): no download needed to verify."""
    settings = s3_settings.model_copy(update={"s3": s3_settings.s3.model_copy(update={"multipart_threshold_mb": 5})})
    store = S3Store(settings)
    store.ensure_bucket()
    root = tmp_path / "files"
    root.mkdir()
    (root / "small.json").write_bytes(DATA)
    (root / "big.bin").write_bytes(np.random.default_rng(0).bytes(11 * 1024 * 1024 + 3))
    local = describe_files(store, root, ["small.json", "big.bin"])
    report = upload_files(store, "c", local)
    assert set(report.proofs.values()) == {"x-amz-checksum-sha256"}
    big = next(f for f in report.files if f.key == "c/big.bin")
    assert big.checksum == local[0].expected.checksum and big.checksum.endswith("-3")  # composite, 3 parts
    assert verify_stored(store, report.files) == []

    # The fallback, against the real server: an expectation the HEAD response cannot prove is read back.
    blind = Expected(big.size, big.sha256)
    found = store.verify("c/big.bin", blind)
    assert found is not None and found.ok and found.check.how == "sha256 of the bytes read back"
    wrong = store.verify("c/big.bin", Expected(big.size, "0" * 64))
    assert wrong is not None and not wrong.ok
    assert store.read_sha256("c/small.json") == WANT.sha256
