"""The one module that speaks unstructured: files in, the project's ``Element`` list out.

Files parse in worker processes (``tasks.ingest.parser_pool``); this module is also their entry point,
``python -m tasks.ingest.parsing``. Cheap checks refuse the obvious cases before any parser sees them.
unstructured's spaCy model comes from a package, never a download (``tasks.ingest.spacy_model``).

PDF uses pdfminer directly: unstructured's ``partition_pdf`` imports its image stack (pi_heif,
unstructured_inference) even for ``strategy="fast"``, and ragtune omits it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.ingest import spacy_model
from tasks.ingest.sphinx import autosummary_pages, myst_to_markdown

os.environ.setdefault("SCARF_NO_ANALYTICS", "true")  # unstructured phones home on import otherwise
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")

ZIP_FORMATS = {".docx", ".pptx", ".xlsx", ".odt", ".epub"}
TEXT_FORMATS = {".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".tsv", ".html", ".htm", ".ipynb"}
SUPPORTED = ZIP_FORMATS | TEXT_FORMATS | {".pdf", ".eml", ".msg", ".rtf"}
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
# unstructured's language detection (langdetect over each document's text, ~10 % of a Ray docs parse)
# fills metadata.languages, which Element does not keep; [""] is its documented "skip".
NO_LANGUAGE = [""]


@dataclass(frozen=True)
class Element:
    type: str  # unstructured's category: Title, NarrativeText, ListItem, Table, ...
    text: str
    page: int = 0
    depth: int | None = None  # heading level for a Title, when the format has one
    target: str = ""  # a page the build generates from this file (relative to its folder); "" = the file's own page


@dataclass(frozen=True)
class ParseLimits:
    timeout_s: float = 120.0
    memory_mb: int = 3072
    max_file_mb: int = 32
    max_unzipped_mb: int = 512


class ParseError(Exception):
    """A file that cannot be indexed; the message is the quarantine reason."""


def check_file(path: Path, suffix: str, limits: ParseLimits) -> None:
    """Refuse what no parser should see: empty, oversized, mislabelled or inflating files."""
    size = path.stat().st_size
    if suffix not in SUPPORTED:
        raise ParseError(f"unsupported file type {suffix or '(no extension)'!r}")
    if size == 0:
        raise ParseError("empty file")
    if size > limits.max_file_mb * 2**20:
        raise ParseError(f"file too large ({size / 2**20:.1f} MiB > {limits.max_file_mb} MiB limit)")
    if suffix in ZIP_FORMATS:
        _check_zip(path, limits.max_unzipped_mb)
    elif suffix in TEXT_FORMATS:
        _check_text(path)


def _check_zip(path: Path, max_unzipped_mb: int) -> None:
    if not zipfile.is_zipfile(path):
        raise ParseError("not a valid zip container (corrupt, truncated or not this format)")
    with zipfile.ZipFile(path) as zf:
        inflated = sum(info.file_size for info in zf.infolist())
    if inflated > max_unzipped_mb * 2**20:
        raise ParseError(f"zip bomb suspected: inflates to {inflated / 2**20:.0f} MiB (> {max_unzipped_mb} MiB)")


def _check_text(path: Path) -> None:
    with path.open("rb") as fh:
        head = fh.read(65536)
    if head.startswith(_BOMS) or head[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return  # UTF-16/32 with a BOM: NUL bytes are expected
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    if b"\x00" in head or control > len(head) * 0.05:
        raise ParseError("binary content in a text file")


def parse_file(path: Path, suffix: str, limits: ParseLimits = ParseLimits()) -> list[Element]:
    """Elements of one file; raises ``ParseError`` (the quarantine reason) when it yields no text."""
    check_file(path, suffix, limits)
    try:
        elements = _parse_pdf(path) if suffix == ".pdf" else _partition(path, suffix)
    except ParseError:
        raise
    except MemoryError:
        raise ParseError(f"parser exceeded the {limits.memory_mb} MiB memory bound") from None
    except Exception as exc:  # any parser failure is this file's problem, not the run's
        raise ParseError(f"{suffix[1:]} parser failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    elements = [e for e in elements if e.text.strip()]
    if not elements:
        raise ParseError("no text extracted")
    return elements


def _partition(path: Path, suffix: str) -> list[Element]:
    spacy_model.apply_choice()
    if suffix in (".ipynb", ".md", ".markdown"):
        from unstructured.partition.md import partition_md

        text = notebook_markdown(path.read_bytes()) if suffix == ".ipynb" else _read_text(path)
        raw = partition_md(text=myst_to_markdown(text), languages=NO_LANGUAGE) if text.strip() else []
    else:
        raw = _partitioner(suffix)(filename=str(path), languages=NO_LANGUAGE)
    elements = [Element(e.category, e.text, e.metadata.page_number or 0, e.metadata.category_depth) for e in raw]
    if suffix in (".rst", ".md", ".markdown"):
        elements += generated_page_elements(_read_text(path))
    return elements


def _read_text(path: Path) -> str:
    from unstructured.file_utils.encoding import read_txt_file

    return read_txt_file(filename=str(path))[1]


def generated_page_elements(text: str) -> list[Element]:
    """Sphinx autosummary pages listed in this source: the listing's headings, then the entry as listed."""
    out: list[Element] = []
    seen: set[str] = set()
    for page in autosummary_pages(text):
        if page.target in seen:
            continue  # an object listed twice gets one page
        seen.add(page.target)
        heading = [*page.section, page.name]
        out += [Element("Title", title, depth=n, target=page.target) for n, title in enumerate(heading)]
        out.append(Element("NarrativeText", page.entry, target=page.target))
    return out


def _partitioner(suffix: str) -> Any:
    module, name = {
        ".txt": ("text", "partition_text"), ".text": ("text", "partition_text"), ".md": ("md", "partition_md"),
        ".markdown": ("md", "partition_md"), ".rst": ("rst", "partition_rst"), ".csv": ("csv", "partition_csv"),
        ".tsv": ("tsv", "partition_tsv"), ".html": ("html", "partition_html"), ".htm": ("html", "partition_html"),
        ".docx": ("docx", "partition_docx"), ".pptx": ("pptx", "partition_pptx"),
        ".xlsx": ("xlsx", "partition_xlsx"), ".odt": ("odt", "partition_odt"), ".epub": ("epub", "partition_epub"),
        ".eml": ("email", "partition_email"), ".msg": ("msg", "partition_msg"), ".rtf": ("rtf", "partition_rtf"),
    }[suffix]
    import importlib

    return getattr(importlib.import_module(f"unstructured.partition.{module}"), name)


def notebook_markdown(raw: bytes) -> str:
    """A Jupyter notebook as markdown: markdown cells as they are, code cells fenced."""
    cells = json.loads(raw).get("cells", [])
    parts = []
    for cell in cells:
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        if text.strip():
            parts.append(text if cell.get("cell_type") == "markdown" else f"```\n{text}\n```")
    return "\n\n".join(parts)


def _parse_pdf(path: Path) -> list[Element]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LTTextContainer

    out = []
    for number, page in enumerate(extract_pages(str(path)), start=1):
        for item in page:
            if isinstance(item, LTTextContainer) and (text := " ".join(item.get_text().split())):
                out.append(Element("NarrativeText", text, number))
    return out


def configure_pandoc() -> None:
    """Make unstructured's pandoc conversions (rst, epub, odt, rtf) cheap; once per worker.

    - pypandoc validates formats by running ``pandoc --list-input-formats`` and
      ``--list-output-formats`` before each conversion: three pandoc processes per file instead of
      one, for the same HTML. The lists are cached.
    - pandoc's HTML writer loads its syntax definitions for any file with a code block or an
      interpreted-text role such as Sphinx's ``:ref:``, to colour code that unstructured then reads
      as plain text. Conversions run without highlighting; every file's elements (type and text)
      come out identical. What each saved: docs/ingestion.md.
    """
    import pypandoc

    if hasattr(pypandoc.convert_file, "__wrapped__"):
        return
    pypandoc.get_pandoc_formats = functools.lru_cache(maxsize=1)(pypandoc.get_pandoc_formats)
    version = tuple(int(part) for part in pypandoc.get_pandoc_version().split(".")[:2] if part.isdigit())
    flag = "--syntax-highlighting=none" if version >= (3, 8) else "--no-highlight"  # renamed in 3.8
    convert = pypandoc.convert_file

    @functools.wraps(convert)
    def convert_plain(source_file: Any, to: str, *args: Any, extra_args: Sequence[str] = (), **kwargs: Any) -> Any:
        return convert(source_file, to, *args, extra_args=[*extra_args, flag], **kwargs)

    pypandoc.convert_file = convert_plain


if __name__ == "__main__":
    # The parser worker (tasks.ingest.parser_pool). It imports this module by name, so pickled results
    # name tasks.ingest.parsing.Element, not __main__.Element.
    from tasks.ingest.parser_pool import serve

    serve(sys.argv[1])
