"""What S3 sha256 checksums cost on upload, and what each verification proof costs, on a local SeaweedFS.

    python bench/s3_checksums.py [--mb 96] [--part-mb 8] [--rounds 3]

Upload: ``S3Store.upload_verified`` (SHA256 checksum per part, then a HEAD proof) beside the baseline
in the same run, a plain ``upload_file`` with boto3's defaults (what publishing did before, minus its
HEAD). Verify: the HEAD proof (x-amz-checksum-sha256 compared with the local composite) beside the
read-back proof (download and sha256) that SSE-KMS objects without S3 checksums need. Rounds
alternate so drift hits both sides. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragtune import stack  # noqa: E402
from tasks.settings import S3Settings, Settings  # noqa: E402
from tasks.stores.checksums import Expected  # noqa: E402
from tasks.stores.s3 import S3Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=96)
    parser.add_argument("--part-mb", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        home = Path(tmp)
        s3 = S3Settings(port=_port(), bucket="bench", multipart_threshold_mb=args.part_mb)
        settings = Settings(data_dir=home, s3=s3)
        service = stack.seaweedfs(settings, home=home / "seaweedfs")
        stack.start(service)
        try:
            print(json.dumps(run(settings, home, args.mb, args.rounds)))
        finally:
            stack.stop(service)


def run(settings: Settings, home: Path, mb: int, rounds: int) -> dict[str, object]:
    store = S3Store(settings)
    store.ensure_bucket()
    path = home / "weights.bin"
    path.write_bytes(np.random.default_rng(0).bytes(mb * 1024 * 1024))
    started = time.perf_counter()
    expected = store.expected(path)
    local_s = time.perf_counter() - started
    times: dict[str, list[float]] = {"upload_checksum": [], "upload_plain": [], "verify_head": [],
                                     "verify_read_back": []}
    for i in range(rounds):
        for name in (("upload_checksum", "upload_plain") if i % 2 == 0 else ("upload_plain", "upload_checksum")):
            key = f"{name}/{i}"
            started = time.perf_counter()
            if name == "upload_checksum":
                store.upload_verified(key, path, expected)
            else:
                store._client.upload_file(str(path), store.bucket, store.key(key), Config=store._transfer)
            times[name].append(time.perf_counter() - started)
        for name, want in (("verify_head", expected), ("verify_read_back", Expected(expected.size, expected.sha256))):
            started = time.perf_counter()
            found = store.verify(f"upload_checksum/{i}", want)
            times[name].append(time.perf_counter() - started)
            assert found is not None and found.ok, found
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bench": "s3_checksums", "mb": mb, "part_mb": settings.s3.multipart_threshold_mb, "rounds": rounds,
            "local_checksums_s": round(local_s, 3), **{f"{k}_s": round(v, 3) for k, v in med.items()},
            "upload_checksum_vs_plain": round(med["upload_checksum"] / med["upload_plain"], 3),
            "read_back_vs_head": round(med["verify_read_back"] / med["verify_head"], 1)}


def _port() -> int:
    """A base port whose derived SeaweedFS ports are free (the test suite's helper)."""
    from tests.conftest import _free_port_block

    return _free_port_block(11)


if __name__ == "__main__":
    main()
