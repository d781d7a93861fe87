"""Sphinx sources as their built pages read: MyST Markdown cleaned to plain Markdown, autosummary pages.

Pure text functions (the parser calls them before unstructured sees a file):

- ``myst_to_markdown``: MyST (Sphinx' Markdown, also in notebooks' markdown cells) hides headings and
  text from a plain Markdown parser: ``(label)=`` lines glue onto the next heading, and directive
  fences (```` ```{note} ````) are not code fences, so everything up to the next fence became one
  paragraph of literal backticks. Directives whose body is prose keep the body, code directives stay
  code, directives that only point elsewhere (include, toctree, literalinclude, image) are dropped,
  and roles (``{ref}`text <target>` ``) keep their text.
- ``autosummary_pages``: an ``.. autosummary::`` list with ``:toctree:`` makes Sphinx generate one
  page per listed object at ``<toctree>/<full name>.html``. The source has the object's name and the
  listing's section only (the docstring is in Python code, not in the docs), so that is the page's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LABEL = re.compile(r"^\s*\([\w\s.:-]+\)=\s*$")
_FENCE = re.compile(r"^(\s*)(`{3,}|:{3,})\s*(?:\{([\w:-]+)\})?\s*(.*?)\s*$")
_OPTION = re.compile(r"^\s*:[\w-]+:(\s.*)?$")
_ROLE = re.compile(r"\{[\w:-]+\}`([^`]*)`")
_ROLE_TARGET = re.compile(r"^(.*?)\s*<[^<>]*>$")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_DROP = {"include", "toctree", "literalinclude", "image", "figure", "raw", "contents", "button-ref", "button-link",
         "autosummary", "automodule", "autoclass", "autofunction", "testoutput", "margin", "title"}
_CODE = {"code-block", "code", "code-cell", "testcode", "sourcecode", "ipython"}


def myst_to_markdown(text: str) -> str:
    """Plain Markdown that says what the MyST page shows (see the module docstring)."""
    text = _COMMENT.sub("", _strip_front_matter(text))
    out: list[str] = []
    stack: list[tuple[str, str]] = []  # open fences: (marker, directive or "" for a plain code fence)
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if stack and stack[-1][1] in ("", *_CODE):  # inside code: only the closing fence matters
            if fence and _closes(fence, stack[-1][0]):
                stack.pop()
                out.append("```")
            elif not _dropping(stack):
                out.append(line)
            continue
        if fence and stack and _closes(fence, stack[-1][0]):
            stack.pop()
            continue
        if fence and (fence[3] or fence[2].startswith("`")):
            directive = (fence[3] or "").lower()
            stack.append((fence[2], directive))
            _open(out, directive, fence[4], _dropping(stack))
            continue
        if _dropping(stack) or (stack and _OPTION.match(line)) or _LABEL.match(line):
            continue
        out.append(_roles(line) if not stack or stack[-1][1] != "eval-rst" else _rst_line(line))
    return "\n".join(out) + "\n"


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end > 0:
            return text[end + 4:]
    return text


def _closes(fence: re.Match[str], marker: str) -> bool:
    return fence[2][0] == marker[0] and len(fence[2]) >= len(marker) and not fence[3] and not fence[4]


def _dropping(stack: list[tuple[str, str]]) -> bool:
    return any(directive in _DROP for _, directive in stack)


def _open(out: list[str], directive: str, argument: str, dropping: bool) -> None:
    if dropping:
        return
    if directive in _CODE or not directive:
        out.append("```")
    elif argument and directive not in ("eval-rst", "tab-set", "grid"):
        out.append("")
        out.append(_roles(argument))  # an admonition's, dropdown's or tab's title reads as its first line
        out.append("")


def _roles(line: str) -> str:
    def text(m: re.Match[str]) -> str:
        inner = m[1].lstrip("~!")
        labelled = _ROLE_TARGET.match(inner)
        return labelled[1] if labelled and labelled[1] else inner

    return _ROLE.sub(text, line)


def _rst_line(line: str) -> str:
    """A line of an ``{eval-rst}`` block: directive markers and options dropped, roles kept as text."""
    if _OPTION.match(line):
        return ""
    directive = re.match(r"^\s*\.\. [\w:-]+::\s*(.*)$", line)
    if directive:
        return directive[1]
    return re.sub(r":[\w:-]+:`([^`]*)`", lambda m: _roles("{r}`" + m[1] + "`"), line)


# --- autosummary ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratedPage:
    """A page Sphinx autosummary builds from a listing: ``target`` relative to the listing file's folder."""

    target: str  # e.g. "doc/ray.data.Dataset.map_batches.html"
    name: str  # the object's full name
    entry: str  # the entry as the listing writes it
    section: list[str]  # the listing's heading path in its source file


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>_.:])\1{2,}\s*$")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MODULE = re.compile(r"^\s*\.\. (?:current)?module::\s*(\S+)")
_AUTOSUMMARY = re.compile(r"^(\s*)\.\. autosummary::")


def autosummary_pages(text: str) -> list[GeneratedPage]:
    """The pages ``.. autosummary::`` lists with a ``:toctree:`` would generate, in source order."""
    lines = text.splitlines()
    headings: list[tuple[int, str]] = []  # (level, title)
    styles: list[str] = []  # RST heading styles in order of first use = their levels
    module = ""
    pages: list[GeneratedPage] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if (found := _MODULE.match(line)) is not None:
            module = found[1]
        elif (md := _MD_HEADING.match(line)) is not None:
            _push(headings, len(md[1]), md[2])
        elif i + 1 < len(lines) and line.strip() and _is_underline(lines[i + 1], line):
            style = lines[i + 1].strip()[0]
            if style not in styles:
                styles.append(style)
            _push(headings, 10 + styles.index(style), line.strip())
            i += 1
        elif (block := _AUTOSUMMARY.match(line)) is not None:
            i, listed, toctree = _listing(lines, i + 1, len(block[1]))
            section = [title for _, title in headings]
            pages += [GeneratedPage(_target(toctree, name), name, entry, section)
                      for entry, name in ((e, _full_name(module, e)) for e in listed)] if toctree else []
            continue
        i += 1
    return pages


def _is_underline(line: str, title: str) -> bool:
    return bool(_RST_UNDERLINE.match(line.strip())) and len(line.strip()) >= len(title.strip()) - 1


def _push(headings: list[tuple[int, str]], level: int, title: str) -> None:
    while headings and headings[-1][0] >= level:
        headings.pop()
    headings.append((level, " ".join(_roles(title).split())))


def _listing(lines: list[str], i: int, indent: int) -> tuple[int, list[str], str]:
    """(next line index, listed entries, toctree folder) of the directive body starting at ``i``."""
    entries: list[str] = []
    toctree = ""
    while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
        body = lines[i].strip()
        if body.startswith(":toctree:"):
            toctree = body.split(":toctree:", 1)[1].strip() or "."
        elif body and not body.startswith(":") and not body.startswith(".."):
            entries.append(body.split()[0].lstrip("~"))
        i += 1
    return i, entries, toctree


def _target(toctree: str, name: str) -> str:
    folder = toctree.strip("/")
    return f"{folder}/{name}.html" if folder not in ("", ".") else f"{name}.html"


def _full_name(module: str, entry: str) -> str:
    """Sphinx resolves an entry under the current module first; an entry already naming the package stays."""
    if not module or entry.split(".")[0] == module.split(".")[0]:
        return entry
    return f"{module}.{entry}"
