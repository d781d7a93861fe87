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
from prefect.transactions import Transaction, get_transaction, transaction

from ragtune.settings import Settings, get_settings
from tasks import promotion as steps
from tasks.release import (
    GateDecision,
    ReleaseManifest,
    decide,
    decision_markdown,
    flip_pointer,
    manifest_key,
    restore_pointer,
    write_manifest,
)
from tasks.release_cache import forget


@task(cache_policy=NO_CACHE)
def evaluate_candidate(settings: Settings, candidate: steps.Candidate, gate: steps.GateConfig,
                       current: steps.Production, force: bool) -> GateDecision:
    """Candidate and production evaluated in this run; the decision and its reasons logged and shown."""
    cand, prod = steps.evaluate(settings, candidate, gate, current)
    decision = decide(cand, prod, settings.release.tolerances, force,
                      current.pointer.release_id if current.pointer else None)
    for reason in decision.reasons:
        get_run_logger().info("gate: %s", reason)
    create_markdown_artifact(markdown=decision_markdown(decision), key="release-gate",
                             description="promote_release gate decision")
    return decision


@task(cache_policy=NO_CACHE)
def upload_release(settings: Settings, candidate: steps.Candidate, current: steps.Production,
                   decision: GateDecision) -> ReleaseManifest:
    with tempfile.TemporaryDirectory(dir=settings.cache_dir, prefix="snapshot-") as work:
        return steps.build_manifest(settings, candidate, current, decision, Path(work))


@task(cache_policy=NO_CACHE)
def write_release(settings: Settings, manifest: ReleaseManifest) -> str:
    digest = write_manifest(steps.store_for(settings), manifest)
    if txn := get_transaction():  # set only once written: the hook must never delete another run's manifest
        txn.set("settings", settings)
        txn.set("release_id", manifest.release_id)
    return digest


@write_release.on_rollback
def _remove_manifest(txn: Transaction) -> None:
    if (release_id := txn.get("release_id", None)) is not None:
        steps.store_for(txn.get("settings")).delete([manifest_key(release_id)])


@task(cache_policy=NO_CACHE)
def switch_production(settings: Settings, manifest: ReleaseManifest, digest: str, current: steps.Production) -> None:
    """The one write that switches serving; refused if another run moved production meanwhile."""
    expected = current.pointer.release_id if current.pointer else None
    flip_pointer(steps.store_for(settings), manifest.release_id, digest, "promote", expected=expected)
    forget()
    if txn := get_transaction():  # set only once flipped: never undo another run's flip
        txn.set("settings", settings)
        txn.set("previous", current)


@switch_production.on_rollback
def _restore_pointer(txn: Transaction) -> None:
    if (previous := txn.get("previous", None)) is not None:
        restore_pointer(steps.store_for(txn.get("settings")), previous.pointer)
        forget()


@task(cache_policy=NO_CACHE)
def switch_alias(settings: Settings, manifest: ReleaseManifest) -> None:
    previous = steps.move_alias(settings, manifest)
    if (txn := get_transaction()) and manifest.index:
        txn.set("settings", settings)
        txn.set("alias", manifest.index.alias)
        txn.set("previous_target", previous)


@switch_alias.on_rollback
def _restore_alias(txn: Transaction) -> None:
    steps.restore_alias(txn.get("settings", None), txn.get("alias", None), txn.get("previous_target", None))


@task(cache_policy=NO_CACHE)
def prune_releases(settings: Settings) -> dict[str, Any]:
    """Retention after a promotion; a failure here is reported, the promotion stands."""
    try:
        return steps.prune(settings)
    except Exception as exc:  # noqa: BLE001 - the release is live; retention runs again next time
        get_run_logger().warning("retention failed: %s", exc)
        return {"error": str(exc)}


@flow(name="promote-release")
def promote_release(candidate: steps.Candidate, gate: steps.GateConfig | None = None, force: bool = False,
                    settings: Settings | None = None) -> dict[str, Any]:
    """Gate -> upload (verified) -> manifest -> pointer flip -> alias move -> retention."""
    settings = settings or get_settings()
    current = steps.read_production(settings)
    decision = evaluate_candidate(settings, candidate, gate or steps.GateConfig(), current, force)
    if not decision.promote:
        return {"promoted": False, "release_id": None, "decision": decision.model_dump()}
    with transaction():
        manifest = upload_release(settings, candidate, current, decision)
        unchanged = steps.same_content(current.manifest, manifest)
        if unchanged:  # a re-run of what is already production: only the alias may need repair
            manifest = current.manifest
        else:
            switch_production(settings, manifest, write_release(settings, manifest), current)
        switch_alias(settings, manifest)
    return {"promoted": not unchanged, "unchanged": unchanged, "release_id": manifest.release_id,
            "forced": decision.forced, "decision": decision.model_dump(), "retention": prune_releases(settings)}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--collection")
    parser.add_argument("--checkpoint")
    parser.add_argument("--questions")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(promote_release(steps.Candidate(collection=args.collection, checkpoint=args.checkpoint),
                          steps.GateConfig(questions=args.questions), args.force))
