"""What answers questions right now: which collection (alias) and which generator.

Today: the configured alias and the base SmolLM2 (or the configured generator). Promotion extends
this to read the production release pointer; everything that serves calls only ``resolve_serving``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ragtune.settings import Settings


@dataclass(frozen=True)
class Serving:
    collection: str
    model_path: Path
    model_name: str
    release_id: str | None = None


def resolve_serving(settings: Settings) -> Serving:
    from tasks.models import generator_source

    source = generator_source(settings.cache_dir, settings.models.generator)
    return Serving(settings.milvus.collection, source.path, source.name, None)
