"""Page-hit evaluation (ray-project/llm-applications' retrieval score), as pure functions.

A question names the page that answers it (``docs.ray.io/en/master/<path>.html#anchor``); a chunk's
page is its file path under the docs folder without extension. hit@k is the share of questions
whose page is among the pages of the top-k chunks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

_VERSION_PREFIX = re.compile(r"^/?(?:en/[^/]+/)?")  # docs.ray.io/en/master/<page>: drop the language/version


@dataclass(frozen=True)
class PageQuestion:
    question: str
    page: str


def page_of_url(url: str) -> str:
    """``https://docs.ray.io/en/master/serve/index.html#x`` -> ``serve/index``."""
    path = _VERSION_PREFIX.sub("", urlparse(url).path)
    return str(PurePosixPath(path).with_suffix("")) if path else ""


def page_of_file(path: str, docs_root: str = "") -> str:
    """``<docs_root>/serve/index.rst`` -> ``serve/index`` (the path may be relative or absolute)."""
    posix = PurePosixPath(path.replace("\\", "/"))
    root = PurePosixPath(docs_root.replace("\\", "/")) if docs_root else None
    if root is not None and posix.is_relative_to(root):
        posix = posix.relative_to(root)
    return str(posix.with_suffix(""))


def load_questions(path: Path) -> list[PageQuestion]:
    """JSONL rows with ``question`` and ``source`` (the answering page's URL)."""
    out: list[PageQuestion] = []
    with path.open() as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not row.get("question") or not row.get("source"):
                raise ValueError(f"{path}:{n}: each line needs 'question' and 'source'")
            out.append(PageQuestion(str(row["question"]), page_of_url(str(row["source"]))))
    return out


def source_pages(docs: Path) -> set[str]:
    """The pages the docs folder has a source file for (a question about any other page cannot hit
    unless the ingestion models the build's generated pages)."""
    return {page_of_file(str(f.relative_to(docs))) for f in docs.rglob("*") if f.is_file()}


def hit_at_k(ranked_pages: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> float:
    """Share of questions whose gold page is among the pages of their top-``k`` chunks."""
    if len(ranked_pages) != len(gold):
        raise ValueError("one ranked page list per question is needed")
    hits = sum(g in set(pages[:k]) for pages, g in zip(ranked_pages, gold, strict=True))
    return hits / len(gold) if gold else 0.0


def sourced_hits(ranked_pages: Sequence[Sequence[str]], gold: Sequence[str], sources: set[str],
                 cutoffs: Sequence[int]) -> dict[str, float]:
    """hit@k over the questions whose page has a source file (``sourced_questions`` of them)."""
    keep = [i for i, page in enumerate(gold) if page in sources]
    kept = ([ranked_pages[i] for i in keep], [gold[i] for i in keep])
    return {"sourced_questions": len(keep), **{f"sourced_hit@{c}": round(hit_at_k(*kept, c), 4) for c in cutoffs}}
