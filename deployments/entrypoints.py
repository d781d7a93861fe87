"""Deployment entry points that add orchestration behaviour to a project flow, leaving the flow as is.

The scheduled ingestion announces what it changed (`ragtune.ingest.completed`, deployments/events.py)
so the release chain can react. The same flow called by `ragtune ingest` or inside release-pipeline
stays quiet: a release's own ingestion must not chain another release.
"""

from __future__ import annotations

from deployments.events import report_ingest
from flows.ingest import ingest_documents as _ingest_documents

ingest_documents = _ingest_documents.with_options(
    on_completion=[*_ingest_documents.on_completion_hooks, report_ingest])
