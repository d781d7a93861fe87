"""The events ragtune's automations listen to.

`ragtune.document.changed` / `ragtune.document.deleted` (resource id = the document's URI) start
`reindex-document`; anything that can reach the Prefect API emits them (`ragtune watch`,
`prefect event emit`, or a POST from another system — self-hosted Prefect has no inbound webhooks).
`ragtune.ingest.completed` closes every scheduled ingestion; labelled release-worthy when enough
documents changed, it starts `release-pipeline` (the trigger is in prefect.yaml).
"""

from __future__ import annotations

from typing import Any

from tasks.settings import get_settings

INGEST_COMPLETED = "ragtune.ingest.completed"
CHANGE_KEYS = ("added", "updated", "deleted")


def changed_documents(report: Any) -> int:
    """Documents an ingestion added, updated or deleted, from its report (a mapping or a model)."""
    data = report.model_dump() if hasattr(report, "model_dump") else dict(report)
    counts = data.get("counts", data)
    return sum(int(counts.get(key) or 0) for key in CHANGE_KEYS)


def ingest_event(collection: str, source: str, report: Any, min_changed: int) -> dict[str, Any]:
    """The completion event of one ingestion: counts in the payload, the release decision in a label."""
    changed = changed_documents(report)
    return {
        "event": INGEST_COMPLETED,
        "resource": {"prefect.resource.id": f"ragtune.collection.{collection}", "ragtune.collection": collection,
                     "ragtune.source": source, "ragtune.release-worthy": str(changed >= min_changed).lower()},
        "payload": {"changed": changed, "min_changed": min_changed,
                    **{key: _count(report, key) for key in (*CHANGE_KEYS, "unchanged", "quarantined")}},
    }


def _count(report: Any, key: str) -> Any:
    data = report.model_dump() if hasattr(report, "model_dump") else dict(report)
    value = data.get("counts", data).get(key, data.get(key))
    return len(value) if isinstance(value, list | dict) else value


def report_ingest(flow: Any, flow_run: Any, state: Any) -> None:
    """on_completion hook of the scheduled ingestion: announce what changed (see module doc)."""
    from prefect.events import emit_event

    params = flow_run.parameters
    if params.get("shard"):
        return  # one shard of a sharded run: its parent announces the whole ingestion
    settings = get_settings()
    collection = params.get("collection") or settings.milvus.collection
    event = ingest_event(collection, str(params.get("source", "")), state.result(),
                         settings.orchestration.release_min_changed)
    emit_event(**event)
