"""What answers questions right now: which collection (alias), which generator, on which engine.

The production release pointer binds an index generation and a checkpoint; a collection named by the
caller (``settings.milvus.collection``: the configured default, or ``--collection``) decides whether that
binding applies. Everything that serves calls only ``resolve_serving``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.settings import EngineSettings, Settings

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
    engine: str = "transformers"  # what generates: the in-process model, or "openai" (an OpenAI-compatible server)
    engine_model: str = ""  # the model name requested from the engine ("" = the engine's first listed model)


def resolve_serving(settings: Settings) -> Serving:
    """What answers for ``settings.milvus.collection``, given the production release (verified by sha256 at
    load) if a pointer exists: ``serving_for``."""
    from tasks.release.cache import production_release
    from tasks.runtime.sources import generator_source

    release = production_release(settings)
    serving = serving_for(release, settings.milvus.collection,
                          lambda: generator_source(settings.cache_dir, settings.models.generator))
    return on_engine(serving, release, settings.engine)


def on_engine(serving: Serving, release: ProductionRelease | None, engine: EngineSettings) -> Serving:
    """Where ``engine.kind`` is openai: the engine model that answers. The release's ``served_model`` when the
    release serves this collection, else ``engine.model``; a release whose checkpoint has no served name is
    answered by ``engine.model``, and the note says so (the engine was never told about that checkpoint)."""
    if engine.kind != "openai":
        return serving
    served = release.manifest.served_model if release and serving.release_id else None
    note = serving.note
    if release and serving.release_id and release.manifest.model and not served:
        note = "; ".join(n for n in (note, f"production release {release.release_id} names no served model: "
                                     f"answered by the engine's {engine.model or 'first listed model'}") if n)
    return replace(serving, model_name=served or engine.model, note=note, engine="openai",
                   engine_model=served or engine.model)


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
