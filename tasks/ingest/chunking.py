"""Structure-aware chunking: one section (heading path) at a time, packed to a token budget.

The budget is counted with the embedding model's own tokenizer, special tokens and the title
prefix included: all-MiniLM-L6-v2 silently truncates at 256 word pieces, so a longer chunk would
be indexed by its first half only. Each chunk's text starts with its "Title > Section" path,
which measurably helps retrieval of short, heading-defined passages. A section that fits after the
previous chunk joins it, its heading kept on its own line: documentation is full of sections that
are a heading and one sentence, too little text for the encoder (docs/retrieval.md has the numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

from tasks.ingest.parsing import Element
from tasks.types import Chunk

CHUNKER_NAME = "sections"
CHUNKER_VERSION = 2  # 2: small sections merge; generated (autosummary) pages
_PREFIX_MAX_TOKENS = 48  # a runaway heading chain must not eat the body's budget
_UNTITLED_DEPTH = 9  # headings without a level (plain text heuristics) nest below any real level


@dataclass(frozen=True)
class DocInfo:
    doc_id: str
    uri: str
    path: str
    doc_hash: str
    name: str  # fallback title: the file name without extension


def chunker_settings(max_tokens: int, tokenizer_name: str, overlap_tokens: int = 0) -> dict[str, Any]:
    """What the collection records: a different chunker means a different index generation."""
    recorded: dict[str, Any] = {"name": CHUNKER_NAME, "version": CHUNKER_VERSION, "max_tokens": max_tokens,
                                "tokenizer": tokenizer_name}
    if overlap_tokens:  # recorded only when used: collections built before the option stay valid
        recorded["overlap_tokens"] = overlap_tokens
    return recorded


@lru_cache(maxsize=2)
def load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def sections(elements: Sequence[Element]) -> list[tuple[list[str], list[Element]]]:
    """(heading path, body elements) in document order; a heading opens a new section."""
    out: list[tuple[list[str], list[Element]]] = [([], [])]
    stack: list[tuple[int, str]] = []
    for element in elements:
        if element.type == "Title":
            depth = _UNTITLED_DEPTH if element.depth is None else element.depth
            while stack and stack[-1][0] >= depth:
                stack.pop()
            stack.append((depth, " ".join(element.text.split())[:200]))
            out.append(([t for _, t in stack], []))
        else:
            out[-1][1].append(element)
    return [(path, body) for path, body in out if body]


def chunk_elements(elements: Sequence[Element], doc: DocInfo, tokenizer: Any, max_tokens: int,
                   overlap_tokens: int = 0) -> list[Chunk]:
    """Chunks of at most ``max_tokens`` word pieces (special tokens and prefix included).

    With ``overlap_tokens``, a section's second and later chunks start with the last that many word
    pieces of the chunk before them (cut at a word boundary), so a passage split at a chunk seam is
    whole in one of the two.

    Elements of a page the build generates from this file (``Element.target``) chunk as their own
    page: their chunks' ``path`` is that page's, resolved against this file's folder.
    """
    chunks: list[Chunk] = []
    for target, group in _by_target(elements).items():
        page = doc if not target else _generated(doc, target)
        for text, heading, members in _section_chunks(group, page, tokenizer, max_tokens, overlap_tokens):
            chunks.append(Chunk(
                doc_id=doc.doc_id, chunk_index=len(chunks), text=text, uri=doc.uri, path=page.path,
                title=heading[0][:500], section=" > ".join(heading)[:1000], page=members[0].page,
                element_types=tuple(sorted({m.type for m in members})), doc_hash=doc.doc_hash))
    return chunks


def _by_target(elements: Sequence[Element]) -> dict[str, list[Element]]:
    groups: dict[str, list[Element]] = {"": []}
    for element in elements:
        groups.setdefault(element.target, []).append(element)
    return groups


def _generated(doc: DocInfo, target: str) -> DocInfo:
    path = str(PurePosixPath(doc.path).parent / target)
    return DocInfo(doc.doc_id, doc.uri, path, doc.doc_hash, PurePosixPath(target).stem)


def _section_chunks(elements: Sequence[Element], doc: DocInfo, tokenizer: Any, max_tokens: int,
                    overlap: int = 0) -> list[tuple[str, list[str], list[Element]]]:
    """(text, heading path, members) per chunk: sections packed to the budget, small neighbours merged."""
    title = next((e.text.strip() for e in elements if e.type == "Title"), "") or doc.name
    limit = max_tokens - tokenizer.num_special_tokens_to_add()
    out: list[tuple[str, list[str], list[Element]]] = []
    for path, body in sections(elements):
        heading = path if path and path[0] == title else [title, *path]
        prefix = _fit_prefix(" > ".join(heading), tokenizer)
        budget = limit - _count(tokenizer, prefix + "\n")
        previous = ""  # the body of this section's chunk before, whose tail the next one repeats
        for texts, members in _pack(body, tokenizer, max(budget - (overlap + 1 if overlap else 0), 16)):
            body_text = " ".join(texts)
            repeats = bool(overlap and previous)
            if repeats:
                previous, body_text = body_text, f"{_tail(previous, tokenizer, overlap)} {body_text}"
            else:
                previous = body_text
            merged = f"{out[-1][0]}\n{heading[-1]}\n{body_text}" if out and not repeats else ""
            if merged and _count(tokenizer, merged) <= limit:
                out[-1] = (merged, out[-1][1], [*out[-1][2], *members])
            else:
                out.append((f"{prefix}\n{body_text}", heading, list(members)))
    return out


def _pack(body: Sequence[Element], tokenizer: Any, budget: int) -> list[tuple[list[str], list[Element]]]:
    """Greedy packing of whole elements; an element over budget is cut at token boundaries."""
    texts = [" ".join(e.text.split()) for e in body]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    out: list[tuple[list[str], list[Element]]] = []
    current: list[str] = []
    members: list[Element] = []
    used = 0
    for text, n, element in zip(texts, lengths, body, strict=True):
        if current and used + n > budget:
            out.append((current, members))
            current, members, used = [], [], 0
        if n > budget:
            out.extend(([piece], [element]) for piece in split_text(text, tokenizer, budget))
            continue
        current.append(text)
        members.append(element)
        used += n + 1  # the joining space may add a piece at the seam
    if current:
        out.append((current, members))
    return out


def split_text(text: str, tokenizer: Any, budget: int) -> list[str]:
    """Cut a long text into pieces of at most ``budget`` tokens, preferring whitespace boundaries."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    pieces = []
    start_token = 0
    while start_token < len(offsets):
        end_token = min(start_token + budget, len(offsets))
        start_char = offsets[start_token][0]
        end_char = offsets[end_token - 1][1] if end_token == len(offsets) else offsets[end_token][0]
        cut = text.rfind(" ", start_char + 1, end_char) if end_token < len(offsets) else -1
        if cut > start_char:
            end_char = cut
            end_token = next(i for i in range(start_token, end_token + 1) if offsets[i][0] >= cut)
        pieces.append(text[start_char:end_char].strip())
        start_token = max(end_token, start_token + 1)
    return [p for p in pieces if p]


def _tail(text: str, tokenizer: Any, tokens: int) -> str:
    """The end of ``text``: at most ``tokens`` word pieces, starting at a word."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= tokens:
        return text
    start = offsets[-tokens][0]
    if start > 0 and not text[start - 1].isspace():  # inside a word: start at the next one
        start = text.find(" ", start) + 1 or len(text)
    return text[start:].strip()


def _fit_prefix(prefix: str, tokenizer: Any) -> str:
    """Keep the innermost headings when the path is too long: they say most about the body."""
    offsets = tokenizer(prefix, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= _PREFIX_MAX_TOKENS:
        return prefix
    return "... " + prefix[offsets[-(_PREFIX_MAX_TOKENS - 3)][0]:]


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
