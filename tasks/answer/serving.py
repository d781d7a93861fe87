"""What answers questions right now: which collection (alias) and which generator.

The production release pointer binds an index generation and a checkpoint; a collection named by the
caller (``settings.milvus.collection``: the configured default, or ``--collection``) decides whether that
binding applies. Everything that serves calls only ``resolve_serving``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.settings import Settings

if TYPE_CHECKING:
    from tasks.release.cache import ProductionRelease
    from tasks.runtime.sources import ModelSource


@dataclass(frozen=True)
class Serving:
    collection: str
    model_path: Path
    model_name: str
    release_id: str | None = None
    note: str = ""  # why the production release does not serve this collection, when it does not


def resolve_serving(settings: Settings) -> Serving:
    """What answers for ``settings.milvus.collection``, given the production release (verified by sha256 at
    load) if a pointer exists: ``serving_for``."""
    from tasks.release.cache import production_release
    from tasks.runtime.sources import generator_source

    return serving_for(production_release(settings), settings.milvus.collection,
                       lambda: generator_source(settings.cache_dir, settings.models.generator))


def serving_for(release: ProductionRelease | None, name: str, base: Callable[[], ModelSource]) -> Serving:
    """The release serves its generation and checkpoint when ``name`` is its alias or its generation (or it
    binds no index). Any other collection is searched as named and answered by the base generator (``base``,
    called only then: a first call converts it): the release's checkpoint was gated with its own index."""
    index = release.manifest.index if release else None
    if release is None or (index is not None and name not in (index.alias, index.generation)):
        source = base()
        note = (f"{name} is not the index of production release {release.release_id} ({index.alias}): "
                "answered by the base generator") if release and index else ""
        return Serving(name, source.path, source.name, None, note)
    collection = index.generation if index else name
    if release.model_path and release.manifest.model:
        return Serving(collection, release.model_path, f"checkpoint:{release.manifest.model.checkpoint_id}",
                       release.release_id)
    source = base()
    return Serving(collection, source.path, source.name, release.release_id)
