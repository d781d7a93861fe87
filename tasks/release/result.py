"""What a promotion did: the result ``promote_release`` returns and ``ragtune promote --json`` prints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tasks.release.manifest import GateDecision


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
