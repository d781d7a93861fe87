"""The one module that speaks unstructured: files in, the project's ``Element`` list out.

Files parse in worker processes (``tasks.ingest.parser_pool``); this module is also their entry point,
``python -m tasks.ingest.parsing``. Cheap checks refuse the obvious cases before any parser sees them.
unstructured's spaCy model comes from a package, never a download (``tasks.ingest.spacy_model``).

Text formats are decoded here, never by unstructured's guess (``tasks.ingest.encoding``), and the
decoded text is what the partitioners see. Markdown flavours (MDX, Markdoc, Quarto) are cleaned to plain
Markdown first (``tasks.ingest.markup``); AsciiDoc goes through pandoc's AsciiDoc reader to Markdown;
reStructuredText is read by docutils (``tasks.ingest.rst``), or by pandoc as unstructured does
(``ingest.rst_reader``).

PDF uses pdfminer directly: unstructured's ``partition_pdf`` imports its image stack (pi_heif,
unstructured_inference) even for ``strategy="fast"``, and ragtune omits it.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.ingest import narrative, rst, spacy_model
from tasks.ingest.encoding import UndecodableText, decode_text
from tasks.ingest.markup import MARKDOWN_FLAVOURS, page_markdown, split_front_matter
from tasks.ingest.sphinx import autosummary_pages, myst_to_markdown

os.environ.setdefault("SCARF_NO_ANALYTICS", "true")  # unstructured phones home on import otherwise
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")

ZIP_FORMATS = {".docx", ".pptx", ".xlsx", ".odt", ".epub"}
ASCIIDOC = (".adoc", ".asciidoc")
TEXT_FORMATS = {".txt", ".text", *MARKDOWN_FLAVOURS, *ASCIIDOC, ".rst", ".csv", ".tsv", ".html", ".htm", ".ipynb"}
SUPPORTED = ZIP_FORMATS | TEXT_FORMATS | {".pdf", ".eml", ".msg", ".rtf"}
# AsciiDoc's include:: would make pandoc read any local file into the index (pandoc runs sandboxed too).
_ADOC_INCLUDE = re.compile(r"^include::.*$", re.M)
_ADOC_TITLE = re.compile(r"^=[ \t]+\S", re.M)
_GFM_ALERT = re.compile(r"^> \[!(\w+)\][ \t]*$", re.M)  # pandoc writes AsciiDoc's NOTE: as a GFM alert
# unstructured's language detection (langdetect over each document's text, ~10 % of a Ray docs parse)
# fills metadata.languages, which Element does not keep; [""] is its documented "skip".
NO_LANGUAGE = [""]
log = logging.getLogger(__name__)
RST_READERS = ("docutils", "pandoc")
_rst_reader = {"name": "docutils"}  # this process's choice (a parser worker sets it from the settings)


def use_rst_reader(name: str) -> None:
    """Choose for this process how ``.rst`` becomes HTML: docutils (``tasks.ingest.rst``) or pandoc."""
    if name not in RST_READERS:
        raise ValueError(f"unknown reStructuredText reader {name!r}: one of {', '.join(RST_READERS)}")
    _rst_reader["name"] = name


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
    """Refuse what no parser should see: empty, oversized, mislabelled or inflating files.

    A text file's encoding is checked when it is read (``read_text``): decoding is the check.
    """
    size = path.stat().st_size
    if suffix not in SUPPORTED:
        raise ParseError(f"unsupported file type {suffix or '(no extension)'!r}")
    if size == 0:
        raise ParseError("empty file")
    if size > limits.max_file_mb * 2**20:
        raise ParseError(f"file too large ({size / 2**20:.1f} MiB > {limits.max_file_mb} MiB limit)")
    if suffix in ZIP_FORMATS:
        _check_zip(path, limits.max_unzipped_mb)


def _check_zip(path: Path, max_unzipped_mb: int) -> None:
    if not zipfile.is_zipfile(path):
        raise ParseError("not a valid zip container (corrupt, truncated or not this format)")
    with zipfile.ZipFile(path) as zf:
        inflated = sum(info.file_size for info in zf.infolist())
    if inflated > max_unzipped_mb * 2**20:
        raise ParseError(f"zip bomb suspected: inflates to {inflated / 2**20:.0f} MiB (> {max_unzipped_mb} MiB)")


def parse_file(path: Path, suffix: str, limits: ParseLimits = ParseLimits()) -> list[Element]:
    """Elements of one file; raises ``ParseError`` (the quarantine reason) when it yields no text."""
    check_file(path, suffix, limits)
    try:
        elements = _elements(path, suffix)
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


def _elements(path: Path, suffix: str) -> list[Element]:
    if suffix == ".pdf":
        return _parse_pdf(path)
    spacy_model.apply_choice()
    if suffix in TEXT_FORMATS:
        return _partition_text(read_text(path), suffix)
    return _project(narrative.partition(_partitioner(suffix), filename=str(path), languages=NO_LANGUAGE))


def read_text(path: Path) -> str:
    """A text file's text, its encoding detected (``tasks.ingest.encoding``); raises ``ParseError``."""
    try:
        return decode_text(path.read_bytes()).text
    except UndecodableText as exc:
        raise ParseError(f"undecodable text: {exc}") from None


def _partition_text(text: str, suffix: str) -> list[Element]:
    """Decoded text through unstructured's partitioner for its format (Markdown for the flavours)."""
    if suffix in MARKDOWN_FLAVOURS or suffix in ASCIIDOC or suffix == ".ipynb":
        elements = _partition_markdown(markdown_source(text, suffix))
    elif suffix in (".txt", ".text"):
        elements = _untitled(_project(_partitioner(suffix)(text=text, languages=NO_LANGUAGE)))
    elif suffix in (".html", ".htm"):
        elements = _project(narrative.partition(_partitioner(suffix), text=text, languages=NO_LANGUAGE))
    elif suffix == ".rst" and (html := _docutils_html(text)) is not None:
        elements = _project(_partition_rst_html(html))
    else:  # rst, csv and tsv partitioners take bytes only: the decoded text, as UTF-8
        elements = _project(narrative.partition(_partitioner(suffix), file=io.BytesIO(text.encode()),
                                                languages=NO_LANGUAGE))
    if suffix in (".rst", ".md", ".markdown"):
        elements += generated_page_elements(text)
    return elements


def markdown_source(text: str, suffix: str) -> str:
    """Plain Markdown for a Markdown-like file: notebooks' cells, AsciiDoc by pandoc, flavours cleaned."""
    if suffix == ".ipynb":
        return notebook_markdown(text)
    return page_markdown(asciidoc_markdown(text) if suffix in ASCIIDOC else text, suffix).text


def _partition_markdown(markdown: str) -> list[Element]:
    from unstructured.partition.md import partition_md

    if not markdown.strip():
        return []
    return _project(narrative.partition(partition_md, text=myst_to_markdown(markdown), languages=NO_LANGUAGE))


def _untitled(elements: list[Element]) -> list[Element]:
    """Plain text has no heading markup: when unstructured's guesses call every paragraph a title (they do
    for Japanese and Chinese prose, with no spaces between words), the paragraphs are the body."""
    if elements and all(e.type == "Title" for e in elements):
        return [Element("NarrativeText", e.text, e.page) for e in elements]
    return elements


def _docutils_html(text: str) -> str | None:
    """docutils' HTML for reStructuredText, when it is this process' reader; None = read it with pandoc (also
    when docutils fails on the file: pandoc may still read it, and nothing of the document is lost)."""
    if _rst_reader["name"] != "docutils":
        return None
    try:
        return rst.rst_html(text)
    except Exception as exc:  # noqa: BLE001 - any docutils failure: the file still has pandoc
        log.warning("docutils could not read this reStructuredText (%s: %s): reading it with pandoc",
                    type(exc).__name__, str(exc)[:200])
        return None


def _partition_rst_html(html: str) -> list[Any]:
    """unstructured's elements for reStructuredText, as ``partition_rst`` makes them but from docutils' HTML."""
    from unstructured.file_utils.model import FileType

    if not html.strip():  # nothing but comments, includes or blank lines
        return []
    return narrative.partition(_partitioner(".html"), text=html, languages=NO_LANGUAGE,
                               metadata_file_type=FileType.RST, detection_origin="rst")


def _project(raw: Sequence[Any]) -> list[Element]:
    return [Element(e.category, e.text, e.metadata.page_number or 0, e.metadata.category_depth) for e in raw]


def asciidoc_markdown(text: str) -> str:
    """AsciiDoc as GitHub Markdown, by pandoc's AsciiDoc reader (pandoc 3.8+).

    The document title (``= Title``) comes out as front matter, sections one level down (``==`` is
    ``##``): the title reaches chunks as a Markdown page's does. ``include::`` lines are dropped, as
    Sphinx includes are: the included file is not this document, and may be any file on the machine.
    """
    import pypandoc

    if "asciidoc" not in pypandoc.get_pandoc_formats()[0]:
        raise ParseError(f"AsciiDoc needs pandoc 3.8+ (its AsciiDoc reader); this is {pypandoc.get_pandoc_version()}")
    meta, body = split_front_matter(text)  # Jekyll-style sites put YAML front matter on .adoc pages too
    if isinstance(meta.get("title"), str) and not _ADOC_TITLE.search(body):
        body = f"= {meta['title']}\n\n{body}"
    args = ["--standalone", "--wrap=none", "--shift-heading-level-by=1"]
    markdown = pypandoc.convert_text(_ADOC_INCLUDE.sub("", body), "gfm", format="asciidoc", extra_args=args,
                                     sandbox=True)
    return _GFM_ALERT.sub(lambda m: f"> {m[1].capitalize()}:", markdown)


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


def notebook_markdown(raw: str | bytes) -> str:
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
