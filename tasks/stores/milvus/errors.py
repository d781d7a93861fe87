"""The errors the index verbs raise, and what readers catch for "Milvus is down or refused the call"."""

from __future__ import annotations

from pymilvus.exceptions import MilvusException


class MilvusIndexError(RuntimeError):
    """Milvus refused or cannot do what was asked; the message says what to do."""


class IndexMismatchError(MilvusIndexError):
    """A writer's embedding model or chunker differs from the one the generation was built with."""


class Bm25UnavailableError(MilvusIndexError):
    """The collection has no BM25 sparse field (Milvus server < 2.5)."""


# What readers catch for "Milvus is down or refused the call", without importing pymilvus themselves.
SERVICE_ERRORS: tuple[type[Exception], ...] = (MilvusException, MilvusIndexError)
