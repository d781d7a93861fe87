"""Cluster-style bulk import: a Milvus 2.3 server whose storage is the S3 (SeaweedFS) bucket, as a cluster's is
MinIO/S3, imports a release's snapshot shards by key after a server-side copy — no row passes the client.

Its own server (MinIO mode through Milvus' environment overrides), started and stopped in this module: one
Milvus per machine (port 9091), so this module runs before any other starts the shared one (file order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragtune import stack
from tasks.release.snapshot import BULK_STAGE
from tasks.settings import S3Settings, Settings
from tasks.stores.milvus import IndexClient
from tasks.stores.s3 import S3Store
from tests.conftest import _free_port_block, _keep_milvus_binaries, _seed_milvus_binaries, wait_for_metrics_port
from tests.release.test_release import bulk_restore

pytestmark = pytest.mark.integration
MILVUS_BUCKET = "milvus-data"


@pytest.fixture(scope="module")
def milvus_on_s3(seaweedfs: S3Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus 2.3 standalone storing its data in the SeaweedFS bucket ``milvus-data``; yields its URI."""
    wait_for_metrics_port()  # a server stopped by the test before still holds it for a moment
    if stack.port_open(9091):
        pytest.skip("port 9091 is taken: another Milvus server runs on this machine")
    home = tmp_path_factory.mktemp("milvus-s3")
    settings = Settings(data_dir=home, s3=seaweedfs.model_copy(update={"bucket": MILVUS_BUCKET}))
    S3Store(settings).ensure_bucket()
    settings.milvus.server_port = _free_port_block(11)
    service = stack.milvus_server(settings, home=home)
    env = {"COMMON_STORAGETYPE": "minio", "MINIO_ADDRESS": "127.0.0.1", "MINIO_PORT": str(seaweedfs.port),
           "MINIO_ACCESSKEYID": seaweedfs.access_key_id.get_secret_value(),
           "MINIO_SECRETACCESSKEY": seaweedfs.secret_access_key.get_secret_value(),
           "MINIO_BUCKETNAME": MILVUS_BUCKET, "MINIO_ROOTPATH": "files", "MINIO_USESSL": "false"}
    service = dataclasses.replace(service, env=env)
    _seed_milvus_binaries(home / "milvus" / "bin")
    wait_for_metrics_port()
    stack.start(service)
    _keep_milvus_binaries(home / "milvus" / "bin")
    yield f"http://127.0.0.1:{settings.milvus.server_port}"
    stack.stop(service)


def test_bulk_import_from_the_bucket_milvus_stores_its_data_in(s3_settings: Settings, milvus_on_s3: str,
                                                               tmp_path: Path) -> None:
    store = S3Store(s3_settings)
    store.ensure_bucket()
    milvus_bucket = S3Store(s3_settings, bucket=MILVUS_BUCKET, prefix="imports")
    with IndexClient(milvus_on_s3) as server:
        source, snapshot_id, _ = bulk_restore(store, server, tmp_path, bulk_bucket=milvus_bucket)
    assert not (tmp_path / "restore" / snapshot_id / "part-00000.parquet").exists()  # never downloaded
    assert not list(milvus_bucket.list(f"{BULK_STAGE}/"))  # the copies are removed after the import
    stored = [o.key for o in S3Store(s3_settings, bucket=MILVUS_BUCKET, prefix="").list()]
    assert any(k.startswith("files/insert_log/") for k in stored)  # Milvus' own segments live on the S3 too
    source.close()
