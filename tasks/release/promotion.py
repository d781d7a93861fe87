"""The steps of a promotion and of a rollback, as typed functions over the release store and Milvus.

``flows/promote.py`` strings them together; ``ragtune rollback`` calls ``rollback_production``
directly (seconds, no flow run, nothing uploaded). Order matters and is the point of this module:
evaluate -> upload (content-addressed, verified) -> manifest -> pointer flip (the switch) -> alias.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.release.cache import forget, production_release
from tasks.release.manifest import (
    DatasetRef,
    GateDecision,
    IndexRef,
    Pointer,
    ReleaseError,
    ReleaseManifest,
    code_revision,
    flip_pointer,
    new_release_id,
    production,
    read_manifest,
    rollback_target,
    verify_stored,
)
from tasks.release.publish import upload_checkpoint
from tasks.release.retention import apply_retention, plan_from_store
from tasks.release.snapshot import export_snapshot, restore_snapshot, upload_snapshot
from tasks.settings import Settings
from tasks.stores.milvus import connect
from tasks.stores.s3 import S3Location, S3Store

log = logging.getLogger(__name__)


class Candidate(BaseModel):
    """What to promote; a part left empty keeps production's."""

    collection: str | None = Field(default=None, description="Candidate generation (e.g. docs__g2) or alias.")
    checkpoint: str | None = Field(default=None, description="Local directory of the candidate fine-tuned checkpoint.")
    alias: str = Field(default="", description="Serving alias of the generation; empty = settings' collection.")
    dataset_version: str | None = Field(default=None, description="Dataset version the checkpoint was trained on.")
    gx_success: bool | None = Field(default=None, description="Whether that dataset version passed its GX gate.")
    served_model: str | None = Field(default=None, description="Name the OpenAI-compatible engine serves the "
                                     "checkpoint under (model or LoRA adapter); empty = production's when the "
                                     "checkpoint is production's, else the engine's configured model.")


class GateConfig(BaseModel):
    """How candidate and production are evaluated, in the same run."""

    questions: str | None = Field(default=None, description="Page-eval JSONL (question, source) for retrieval hit@k.")
    docs_root: str = Field(default="", description="Folder the page paths are relative to.")
    k: int = Field(default=5, ge=1, description="Top-k chunks for retrieval hit@k.")
    mode: str | None = Field(default=None, description="Retrieval mode (dense, bm25, hybrid); empty = settings.")
    model_dataset: str | None = Field(default=None, description="Dataset version whose eval split gates the model.")


class Production(BaseModel):
    pointer: Pointer | None = None
    manifest: ReleaseManifest | None = None


def read_production(settings: Settings) -> Production:
    found = production(store_for(settings))
    return Production(pointer=found[0], manifest=found[1]) if found else Production()


def store_for(settings: Settings) -> S3Store:
    store = S3Store(settings)
    store.ensure_bucket()
    return store


BASELINE = "the base model and no index"
# No index retrieves nothing: against it every question misses.
NO_INDEX = {"retrieval.hit@k": 0.0, "retrieval.mrr@k": 0.0}


def evaluate(settings: Settings, candidate: Candidate, gate: GateConfig, current: Production,
             ) -> tuple[dict[str, float], dict[str, float]]:
    """Candidate and production metrics on the same eval sets, in this run.

    Without a production release, production is what would serve without one: the base model (no
    checkpoint) and no index, so the first release is gated too. What serves both sides (the index of a
    model-only candidate, the model of an index-only one) is evaluated once.
    """
    prod = current.manifest
    prod_collection = prod.index.generation if prod and prod.index else None
    prod_ckpt = _production_checkpoint(settings, prod)
    cand_collection = candidate.collection or prod_collection
    cand_ckpt = Path(candidate.checkpoint) if candidate.checkpoint else prod_ckpt
    done: dict[object, dict[str, float]] = {}

    def scores(collection: str | None, checkpoint: Path | None) -> dict[str, float]:
        if ("index", collection) not in done:
            done["index", collection] = _retrieval(settings, gate, collection)
        if ("model", checkpoint) not in done:
            done["model", checkpoint] = (model_metrics(settings, checkpoint, gate.model_dataset)
                                         if gate.model_dataset else {})
        return done["index", collection] | done["model", checkpoint]

    return scores(cand_collection, cand_ckpt), scores(prod_collection, prod_ckpt)


def _retrieval(settings: Settings, gate: GateConfig, collection: str | None) -> dict[str, float]:
    if not gate.questions:
        return {}
    if collection is None:
        return dict(NO_INDEX)
    return retrieval_metrics(settings, collection, Path(gate.questions), gate.docs_root, gate.k, gate.mode)


def _production_checkpoint(settings: Settings, prod: ReleaseManifest | None) -> Path | None:
    if prod is None or prod.model is None:
        return None  # the base model serves
    found = production_release(settings)
    if found is None or found.release_id != prod.release_id or found.model_path is None:
        # Comparing against the base model instead would let a candidate pass a bar production never set.
        got = found.release_id if found else "nothing"
        raise ReleaseError(f"production release {prod.release_id}'s checkpoint could not be loaded (got {got}): "
                           "the gate cannot compare against it; check S3, or promote with --force")
    return found.model_path


def retrieval_metrics(settings: Settings, collection: str, questions_path: Path, docs_root: str, k: int,
                      mode: str | None = None) -> dict[str, float]:
    """Page hit@k and page MRR@k of one collection on a page-eval question set."""
    from tasks.answer.retrieval import check_model, encode_queries, search
    from tasks.evaluation.pages import hit_at_k, load_questions, page_of_file

    questions = load_questions(questions_path)
    if not questions:
        raise ValueError(f"{questions_path} holds no questions")
    with connect(settings) as index:
        physical = check_model(index, collection, settings)
        vectors = encode_queries(settings, [q.question for q in questions])
        ranked = [[page_of_file(h.path or h.uri, docs_root)
                   for h in search(index, physical, q.question, v, k, mode or settings.answer.mode, settings)]
                  for q, v in zip(questions, vectors, strict=True)]
    gold = [q.page for q in questions]
    mrr = sum(1.0 / (pages.index(g) + 1) if g in pages else 0.0 for pages, g in zip(ranked, gold, strict=True))
    return {"retrieval.hit@k": round(hit_at_k(ranked, gold, k), 5), "retrieval.mrr@k": round(mrr / len(gold), 5)}


def model_metrics(settings: Settings, checkpoint: Path | None, dataset: str) -> dict[str, float]:
    """The model evaluation (tasks/model_eval) of a checkpoint (None: the base model), as ``model.*``."""
    try:
        from tasks.training.scoring import evaluate_for_gate  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ReleaseError(f"model evaluation is not available ({exc}): promote without --model-dataset") from None
    return {f"model.{k}": float(v) for k, v in evaluate_for_gate(settings, checkpoint, dataset).items()}


def build_manifest(settings: Settings, candidate: Candidate, current: Production, decision: GateDecision,
                   work_dir: Path) -> ReleaseManifest:
    """Upload the candidate's new parts (verified), reuse production's others, and bind them."""
    store, prod = store_for(settings), current.manifest
    alias = candidate.alias or (prod.index.alias if prod and prod.index else settings.milvus.collection)
    index = _index_ref(settings, store, candidate, alias, work_dir) if candidate.collection else None
    model = upload_checkpoint(store, Path(candidate.checkpoint))[0] if candidate.checkpoint else None
    index, model = index or (prod.index if prod else None), model or (prod.model if prod else None)
    if index is None and model is None:
        raise ReleaseError("nothing to release: give a candidate collection and/or checkpoint")
    dataset = (DatasetRef(version=candidate.dataset_version, gx_success=candidate.gx_success)
               if candidate.dataset_version else (prod.dataset if prod else None))
    same_model = prod is not None and prod.model is not None and model is not None and \
        prod.model.checkpoint_id == model.checkpoint_id
    served = candidate.served_model or (prod.served_model if same_model and prod else None)
    content = "|".join([index.generation if index else "", _snapshot_id(index), model.checkpoint_id if model else "",
                        *([served] if served else [])])
    manifest = ReleaseManifest(release_id=new_release_id(content), created=datetime.now(UTC),
                               parent=current.pointer.release_id if current.pointer else None,
                               code_revision=code_revision(), index=index, model=model, served_model=served,
                               dataset=dataset, gate=decision, forced=decision.forced)
    problems = verify_stored(store, manifest.stored_files())
    if problems:
        raise ReleaseError("release files do not verify on S3: " + "; ".join(problems))
    return manifest


def _index_ref(settings: Settings, store: S3Store, candidate: Candidate, alias: str, work_dir: Path) -> IndexRef:
    with connect(settings) as index:
        local = export_snapshot(index, str(candidate.collection), work_dir, settings.release.snapshot_rows_per_shard)
        meta = index.index_meta(local.generation)
    snapshot = upload_snapshot(store, local)
    return IndexRef(alias=alias, generation=local.generation, meta=_asdict(meta), snapshot=snapshot)


def _snapshot_id(index: IndexRef | None) -> str:
    return index.snapshot.snapshot_id if index and index.snapshot else ""


def _asdict(meta: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(meta) if meta is not None else {}


def same_content(a: ReleaseManifest | None, b: ReleaseManifest) -> bool:
    """A re-run of an already promoted candidate: nothing new to publish (only the alias to repair)."""
    if a is None:
        return False
    key = lambda m: (m.index.alias if m.index else "", m.index.generation if m.index else "",  # noqa: E731
                     _snapshot_id(m.index), m.model.checkpoint_id if m.model else "", m.served_model)
    return key(a) == key(b)


def move_alias(settings: Settings, manifest: ReleaseManifest) -> str | None:
    """Point the serving alias at the release's generation (idempotent); returns the previous target."""
    if manifest.index is None:
        return None
    with connect(settings) as index:
        previous = index.describe_alias(manifest.index.alias)
        if index.resolve(manifest.index.generation) is None:
            raise ReleaseError(f"{manifest.index.generation} does not exist at {index.uri}: "
                               f"`ragtune index restore {manifest.release_id}` rebuilds it from S3")
        index.set_alias(manifest.index.alias, manifest.index.generation)
    return previous


def restore_alias(settings: Settings, alias: str, collection: str | None) -> None:
    if collection:
        with connect(settings) as index:
            index.set_alias(alias, collection)


def rollback_production(settings: Settings, target: str | None = None) -> dict[str, Any]:
    """Point production (pointer, then alias) back at a published release; nothing is uploaded."""
    store = store_for(settings)
    current = read_production(settings)
    if target and current.manifest and target == current.manifest.release_id:  # a repair: alias only
        move_alias(settings, current.manifest)
        return {"release_id": target, "previous": target, "repaired": True}
    pointer, manifest, digest = rollback_target(store, target)
    flip_pointer(store, manifest.release_id, digest, "rollback", expected=pointer.release_id)
    forget()
    try:
        move_alias(settings, manifest)
    except Exception as exc:
        raise ReleaseError(f"production now points at {manifest.release_id} but the alias did not move ({exc}); "
                           f"serving follows the pointer; `ragtune rollback {manifest.release_id}` repairs it") from exc
    return {"release_id": manifest.release_id, "previous": pointer.release_id,
            "collection": manifest.index.generation if manifest.index else None,
            "checkpoint": manifest.model.checkpoint_id if manifest.model else None,
            "served_model": manifest.served_model}


def prune(settings: Settings, dry_run: bool = False) -> dict[str, Any]:
    """Retention: keep the last N releases; delete unreferenced objects and older generations."""
    store = store_for(settings)
    prod = read_production(settings).manifest
    aliases = {settings.milvus.collection} | ({prod.index.alias} if prod and prod.index else set())
    with connect(settings) as index:
        generations = {a: index.list_generations(a) for a in aliases}
        plan = plan_from_store(store, settings.release.keep_last,
                               timedelta(minutes=settings.release.grace_minutes), generations)
        if dry_run:
            return {**plan.summary(), "dry_run": True}
        return apply_retention(plan, store.delete, index.drop_collection, store.abort_upload)


def restore_release(settings: Settings, release: str, name: str | None = None, serve: bool = False,
                    bulk_dir: Path | None = None, bulk_bucket: str | None = None) -> dict[str, Any]:
    """Rebuild a release's index generation from its S3 snapshot into ``settings``' Milvus; with ``bulk_dir``
    (a server's import folder) or ``bulk_bucket`` (s3://bucket/prefix a server stores its data in): by
    Milvus' bulk import (``tasks.release.snapshot.restore_snapshot``)."""
    store = store_for(settings)
    if release == "production":
        found = production(store)
        if found is None:
            raise ReleaseError("no production release to restore")
        manifest = found[1]
    else:
        manifest = read_manifest(store, release)
    if manifest.index is None or manifest.index.snapshot is None:
        raise ReleaseError(f"release {manifest.release_id} has no index snapshot")
    with connect(settings) as index, tempfile.TemporaryDirectory(dir=settings.cache_dir, prefix="restore-") as work:
        serve = serve or index.describe_alias(manifest.index.alias) is None
        target = S3Location.parse(bulk_bucket) if bulk_bucket else None
        milvus_bucket = S3Store(settings, target.bucket, target.prefix) if target else None
        result = restore_snapshot(store, manifest.index.snapshot, index, Path(work), manifest.index.alias, name, serve,
                                  bulk_dir, milvus_bucket)
    return {"release_id": manifest.release_id, "collection": result.collection, "rows": result.rows,
            "alias": result.alias}
