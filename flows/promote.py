"""promote_release: gate a candidate against production, publish it to S3, switch serving — or change nothing.

The switch runs in a Prefect transaction: a failure anywhere in it runs the rollback hooks (the new
manifest is removed, the previous pointer and alias are put back), so production is never half
switched. Run locally with ``python -m flows.promote --collection docs__g2 --checkpoint DIR``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.transactions import transaction
from pydantic import BaseModel, Field

from tasks.release import promotion as steps
from tasks.release.gate import decide, decision_markdown
from tasks.release.manifest import GateDecision, ReleaseManifest
from tasks.release.switch import switch_alias, switch_production, write_release
from tasks.runtime.process import process_settings
from tasks.settings import Settings


def _absent(value: Any) -> bool:
    return value is None


class PromotionResult(BaseModel):
    """What a promotion did; ``ragtune promote --json`` prints these keys.

    A refusal changes nothing: ``unchanged``, ``forced`` and ``retention`` are then absent from the dump.
    """

    promoted: bool
    unchanged: bool | None = Field(None, exclude_if=_absent, description="The candidate already was production.")
    release_id: str | None
    forced: bool | None = Field(None, exclude_if=_absent)
    decision: GateDecision
    retention: dict[str, Any] | None = Field(None, exclude_if=_absent, description="Retention's summary, or its error.")


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


@flow(name="promote-release")
def promote_release(candidate: steps.Candidate, gate: steps.GateConfig | None = None, force: bool = False,
                    settings: Settings | None = None) -> PromotionResult:
    """Gate -> upload (verified) -> manifest -> pointer flip -> alias move -> retention.

    Args:
        candidate: What to promote (collection generation and/or checkpoint); an empty part keeps production's.
        gate: How candidate and production are evaluated in this run; empty = defaults.
        force: Promote even if the gate refuses (recorded in the manifest).
        settings: Leave empty: the worker's settings (RAGTUNE_*) are used.
    """
    settings = settings or process_settings()
    current = steps.read_production(settings)
    decision = evaluate_candidate(settings, candidate, gate or steps.GateConfig(), current, force)
    if not decision.promote:
        return PromotionResult(promoted=False, release_id=None, decision=decision)
    with transaction():
        manifest = upload_release(settings, candidate, current, decision)
        unchanged = current.manifest is not None and steps.same_content(current.manifest, manifest)
        if unchanged and current.manifest is not None:  # a re-run of production: only the alias may need repair
            manifest = current.manifest
        else:
            switch_production(settings, manifest, write_release(settings, manifest), current)
        switch_alias(settings, manifest)
    return PromotionResult(promoted=not unchanged, unchanged=unchanged, release_id=manifest.release_id,
                           forced=decision.forced, decision=decision, retention=prune_releases(settings))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--collection")
    parser.add_argument("--checkpoint")
    parser.add_argument("--questions")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(promote_release(steps.Candidate(collection=args.collection, checkpoint=args.checkpoint),
                          steps.GateConfig(questions=args.questions), args.force).model_dump(mode="json"))
