"""The version check every dependency patch shares: a release it was tested on, or the dependency's own path."""

from __future__ import annotations

import logging
from collections.abc import Sequence


def release_tested(package: str, version: str, tested: Sequence[str], refused: list[str], off: str, instead: str,
                   log: logging.Logger) -> bool:
    """Whether ``version``'s major.minor is in ``tested``; otherwise say once per version (``refused`` remembers)
    that the patch is ``off`` and what runs ``instead``."""
    if ".".join(version.split(".")[:2]) in tested:
        return True
    if version not in refused:
        refused.append(version)
        log.warning("%s %s: %s (tested on %s); %s", package, version, off, ", ".join(tested), instead)
    return False
