"""Health probes of the local stack, used by `ragtune stack status` and tests."""

from __future__ import annotations

import uuid
from typing import Any

from ragtune import stack
from tasks.settings import Settings


def s3(settings: Settings) -> dict[str, Any]:
    """A put/get round trip with the configured credentials, and a refused request with wrong ones."""
    from tasks.stores.s3 import S3Error, S3Store

    info: dict[str, Any] = {"endpoint": settings.s3_endpoint, "bucket": settings.s3.bucket}
    store = S3Store(settings, prefix="_health")
    key, payload = f"probe-{uuid.uuid4().hex}", uuid.uuid4().bytes
    try:
        store.ensure_bucket()
        store.put_bytes(key, payload)
        info["round_trip"] = store.get_bytes(key) == payload
        store.delete([key])
    except S3Error as exc:
        return {**info, "healthy": False, "error": str(exc)}
    info["bad_credentials_rejected"] = _rejects_bad_credentials(settings)
    info["healthy"] = info["round_trip"] and info["bad_credentials_rejected"]
    return info


def _rejects_bad_credentials(settings: Settings) -> bool:
    from pydantic import SecretStr

    from tasks.stores.s3 import S3Error, S3Store

    wrong = settings.model_copy(update={"s3": settings.s3.model_copy(
        update={"secret_access_key": SecretStr("not-the-" + uuid.uuid4().hex)})})
    try:
        list(S3Store(wrong, prefix="_health").list())
    except S3Error:
        return True
    return False


def prefect(settings: Settings) -> dict[str, Any]:
    base = f"http://127.0.0.1:{settings.prefect.port}"
    api, ui = stack.http_ok(f"{base}/api/health"), stack.http_ok(base)
    return {"api": f"{base}/api", "ui": base, "api_ok": api, "ui_ok": ui, "healthy": api and ui}


def milvus_server(settings: Settings) -> dict[str, Any]:
    port = settings.milvus.server_port
    running = stack.port_open(port)
    return {"uri": f"http://127.0.0.1:{port}", "running": running,
            "healthy": running and stack.http_ok("http://127.0.0.1:9091/healthz")}
