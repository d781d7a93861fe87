"""`ragtune promote`, `ragtune releases`, `ragtune rollback`, `ragtune prune`, `ragtune index restore`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ragtune.commands._common import JsonOption, UserError, clear_errors, emit, subgroup

if TYPE_CHECKING:
    from tasks.release.result import PromotionResult

REFUSED_EXIT = 3  # the gate refused the candidate: not an error, but scripts must be able to tell


def register(app: typer.Typer) -> None:
    app.command("promote")(promote)
    app.command("releases")(releases)
    app.command("rollback")(rollback)
    app.command("prune")(prune)
    subgroup(app, "index", "The document index: verify, restore from a release.").command("restore")(restore)


@clear_errors
def promote(
    collection: str = typer.Option(None, help="Candidate collection generation (docs__g2); empty keeps production's."),
    checkpoint: str = typer.Option(None, help="Candidate checkpoint directory; empty keeps production's model."),
    alias: str = typer.Option("", help="Serving alias; empty = the configured collection."),
    questions: str = typer.Option(None, help="Page-eval JSONL (question, source) for the retrieval gate."),
    docs_root: str = typer.Option("", help="Folder the questions' pages are relative to."),
    k: int = typer.Option(5, help="Top-k for retrieval hit@k."),
    mode: str = typer.Option(None, help="Retrieval mode for the gate: dense, bm25 or hybrid."),
    model_dataset: str = typer.Option(None, help="Dataset version whose eval split gates the model."),
    dataset_version: str = typer.Option(None, help="Dataset version the checkpoint was trained on."),
    served_model: str = typer.Option(None, help="Name an OpenAI-compatible engine serves the release's model under "
                                     "(model or LoRA adapter; engine.kind=openai); empty keeps production's for "
                                     "production's checkpoint, else the engine's configured model."),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (recorded in the manifest)."),
    as_json: bool = JsonOption,
) -> None:
    """Gate a candidate against production; publish it to S3 and switch serving if it passes."""
    from flows.promote import promote_release
    from tasks.release.promotion import Candidate, GateConfig
    from tasks.settings import get_settings

    if not collection and not checkpoint and not served_model:
        raise UserError("give --collection, --checkpoint and/or --served-model: nothing to promote")
    result = promote_release(Candidate(collection=collection, checkpoint=checkpoint, alias=alias,
                                       dataset_version=dataset_version, served_model=served_model),
                             GateConfig(questions=questions, docs_root=docs_root, k=k, mode=mode,
                                        model_dataset=model_dataset), force, get_settings())
    emit(result, as_json, _promoted)
    if not result.promoted and not result.unchanged:
        raise typer.Exit(REFUSED_EXIT)


def _promoted(result: PromotionResult) -> str:
    head = (f"promoted release {result.release_id}" + (" (FORCED)" if result.forced else "")
            if result.promoted else
            f"release {result.release_id} is already production (alias checked)" if result.unchanged else
            "REFUSED: production unchanged")
    return "\n".join([head, *(f"  {r}" for r in result.decision.reasons)])


@clear_errors
def releases(all_: bool = typer.Option(False, "--all", help="Also list half-written (never served) releases."),
             as_json: bool = JsonOption) -> None:
    """List releases: id, created, metrics, production marker."""
    from tasks.release.manifest import list_releases
    from tasks.release.promotion import store_for
    from tasks.settings import get_settings

    rows = [{"release_id": i.manifest.release_id, "created": i.manifest.created.isoformat(timespec="seconds"),
             "production": i.production, "served": i.served, "parent": i.manifest.parent,
             "collection": i.manifest.index.generation if i.manifest.index else None,
             "checkpoint": i.manifest.model.checkpoint_id if i.manifest.model else None,
             "served_model": i.manifest.served_model,
             "forced": i.manifest.forced, "metrics": i.manifest.gate.candidate}
            for i in list_releases(store_for(get_settings()), include_unserved=all_)]
    emit({"releases": rows}, as_json, _table)


def _table(result: dict[str, Any]) -> str:
    if not result["releases"]:
        return "no releases yet: `ragtune promote` publishes the first one"
    lines = []
    for r in result["releases"]:
        mark = "*" if r["production"] else (" " if r["served"] else "?")
        metrics = " ".join(f"{k}={v:.3f}" for k, v in sorted(r["metrics"].items()))
        served = f" as {r['served_model']}" if r["served_model"] else ""
        lines.append(f"{mark} {r['release_id']}  {r['created']}  {r['collection'] or '-'}  "
                     f"{r['checkpoint'] or 'base model'}{served}  {metrics}{'  FORCED' if r['forced'] else ''}")
    return "\n".join([*lines, "(* production, ? never served)"])


@clear_errors
def rollback(release: str = typer.Argument(None, help="Release to serve; default: production's parent."),
             as_json: bool = JsonOption) -> None:
    """Point production and the alias back (no upload); naming production itself repairs its alias."""
    from tasks.release.promotion import rollback_production
    from tasks.settings import get_settings

    emit(rollback_production(get_settings(), release), as_json,
         lambda r: f"production is release {r['release_id']} (was {r['previous']})"
                   + (f"; the engine serves {r['served_model']}" if r.get("served_model") else ""))


@clear_errors
def prune(dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be deleted."),
          as_json: bool = JsonOption) -> None:
    """Retention: keep the last N releases (and production's parent); delete what nothing kept uses."""
    from tasks.release.promotion import prune as run_prune
    from tasks.settings import get_settings

    emit(run_prune(get_settings(), dry_run), as_json)


@clear_errors
def restore(release: str = typer.Argument(..., help="Release id, or 'production'."),
            uri: str = typer.Option(..., "--uri", help="Target Milvus: a Lite file path or http://host:19530."),
            name: str = typer.Option(None, help="Collection name; default: the release's generation name."),
            serve: bool = typer.Option(False, "--serve", help="Point the alias at it (always when none exists)."),
            bulk_dir: str = typer.Option(None, "--bulk-dir", help="Load with Milvus' bulk import: the folder the "
                                          "server reads import files from (a standalone's localStorage.path)."),
            bulk_s3: str = typer.Option(None, "--bulk-s3", help="Load with Milvus' bulk import from S3: "
                                        "s3://BUCKET/PREFIX, the bucket the server stores its data in (same "
                                        "endpoint as the releases); shards are copied server side."),
            as_json: bool = JsonOption) -> None:
    """Rebuild a release's index from S3 alone (every file verified) into any Milvus."""
    from tasks.release.promotion import restore_release
    from tasks.settings import get_settings

    if (bulk_dir or bulk_s3) and "://" not in uri:
        raise UserError("--bulk-dir/--bulk-s3 need a Milvus server (--uri http://...): Milvus Lite has no bulk import")
    settings = get_settings()
    settings = settings.model_copy(update={"milvus": settings.milvus.model_copy(update={"uri": uri})})
    emit(restore_release(settings, release, name, serve, Path(bulk_dir) if bulk_dir else None, bulk_s3), as_json,
         lambda r: f"restored {r['rows']} rows of release {r['release_id']} into {r['collection']} at {uri}"
                   + (f" (alias {r['alias']})" if r["alias"] else ""))
