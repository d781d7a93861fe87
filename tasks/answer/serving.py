"""What answers questions right now: which collection (alias) and which generator.

Today: the configured alias and the base SmolLM2 (or the configured generator). Promotion extends
this to read the production release pointer; everything that serves calls only ``resolve_serving``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.settings import Settings


@dataclass(frozen=True)
class Serving:
    collection: str
    model_path: Path
    model_name: str
    release_id: str | None = None


def resolve_serving(settings: Settings) -> Serving:
    """The production release's generation and checkpoint when a release pointer exists (verified by
    sha256 at load), else the configured alias and base model."""
    from tasks.release.cache import production_release
    from tasks.runtime.sources import generator_source

    release = production_release(settings)
    collection = settings.milvus.collection
    if release and release.collection and release.manifest.index and release.manifest.index.alias == collection:
        collection = release.collection
    if release and release.model_path and release.manifest.model:
        return Serving(collection, release.model_path, f"checkpoint:{release.manifest.model.checkpoint_id}",
                       release.release_id)
    source = generator_source(settings.cache_dir, settings.models.generator)
    return Serving(collection, source.path, source.name, release.release_id if release else None)
