"""promote_release: gate a candidate against production, publish it to S3, switch serving — or change nothing.

The switch runs in a Prefect transaction: a failure anywhere in it runs the rollback hooks (the new
manifest is removed, the previous pointer and alias are put back), so production is never half
switched. Run locally with ``python -m flows.promote --collection docs__g2 --checkpoint DIR``.
"""

from __future__ import annotations

from prefect import flow
from prefect.transactions import transaction

from tasks.release import promotion as steps
from tasks.release.promote_steps import evaluate_candidate, prune_releases, upload_release
from tasks.release.result import PromotionResult
from tasks.release.switch import switch_alias, switch_production, write_release
from tasks.runtime.process import process_settings
from tasks.settings import Settings


@flow(name="promote-release")
def promote_release(candidate: steps.Candidate, gate: steps.GateConfig | None = None, force: bool = False,
                    settings: Settings | None = None) -> PromotionResult:
    """Gate -> upload (verified) -> manifest -> pointer flip -> alias move -> retention.

    Args:
        candidate: What to promote (collection generation, checkpoint and/or the name an OpenAI-compatible engine
            serves it under); an empty part keeps production's.
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
    parser.add_argument("--served-model")
    parser.add_argument("--questions")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(promote_release(steps.Candidate(collection=args.collection, checkpoint=args.checkpoint,
                                          served_model=args.served_model),
                          steps.GateConfig(questions=args.questions), args.force).model_dump(mode="json"))
