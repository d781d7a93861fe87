"""The promotion flow's Prefect tasks: the gate decision (logged and shown), the verified upload, retention."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.release import promotion as steps
from tasks.release.gate import decide, decision_markdown
from tasks.release.manifest import GateDecision, ReleaseManifest
from tasks.settings import Settings


@task(name="evaluate-candidate", cache_policy=NO_CACHE)
def evaluate_candidate(settings: Settings, candidate: steps.Candidate, gate: steps.GateConfig,
                       current: steps.Production, force: bool) -> GateDecision:
    """Candidate and production evaluated in this run; the decision and its reasons logged and shown."""
    cand, prod = steps.evaluate(settings, candidate, gate, current)
    decision = decide(cand, prod, settings.release.tolerances, force,
                      current.pointer.release_id if current.pointer else None, steps.BASELINE)
    for reason in decision.reasons:
        get_run_logger().info("gate: %s", reason)
    create_markdown_artifact(markdown=decision_markdown(decision), key="release-gate",
                             description="promote_release gate decision")
    return decision


@task(name="upload-release", cache_policy=NO_CACHE)
def upload_release(settings: Settings, candidate: steps.Candidate, current: steps.Production,
                   decision: GateDecision) -> ReleaseManifest:
    with tempfile.TemporaryDirectory(dir=settings.cache_dir, prefix="snapshot-") as work:
        return steps.build_manifest(settings, candidate, current, decision, Path(work))


@task(name="prune-releases", cache_policy=NO_CACHE)
def prune_releases(settings: Settings) -> dict[str, Any]:
    """Retention after a promotion; a failure here is reported, the promotion stands."""
    try:
        return steps.prune(settings)
    except Exception as exc:  # noqa: BLE001 - the release is live; retention runs again next time
        get_run_logger().warning("retention failed: %s", exc)
        return {"error": str(exc)}
