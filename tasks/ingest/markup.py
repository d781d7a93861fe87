"""Markdown flavours that docs sites write, cleaned to plain Markdown before unstructured sees them.

Pure text functions (the parser calls ``page_markdown``, then hands the result to the Markdown path):

- Front matter (YAML between ``---`` lines, TOML between ``+++``) is site metadata, not page text: it is
  cut off and kept as a mapping; its ``title`` becomes the page's leading ``# Title`` heading when the
  body does not start with one, so the title reaches chunks as a written heading would.
- MDX (``.mdx``): ``import``/``export`` blocks are JavaScript; JSX tags go and the text they wrap stays
  (``<Callout>Do not do X</Callout>`` reads "Do not do X"); ``{/* comments */}`` go.
- Markdoc (``.mdoc``): ``{% tag %}`` ... ``{% /tag %}`` markers go, their text stays.
- Quarto (``.qmd``) and Docusaurus admonitions: ``{python}`` cells become plain code fences, ``:::`` divs
  unwrap, ``{{< shortcodes >}}`` and ``{#id .class}`` attributes go.

Code is never touched: fenced blocks (``` and ~~~, at any indent, as MDX allows inside components) and
inline code spans keep their ``<tags>`` and ``{braces}``; fence lines are normalised to ```` ``` ````.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

MARKDOWN_FLAVOURS = (".md", ".markdown", ".mdx", ".mdoc", ".qmd")
_FRONT = {"---": "yaml", "+++": "toml"}
_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})\s*(.*)$")
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(?:[^\n]|\n(?![ \t]*\n))+?(?<!`)\1(?!`)")
_ESM = re.compile(r"^(import|export)[\s{*]")
_JSX_COMMENT = re.compile(r"\{\s*/\*.*?\*/\s*\}", re.S)
_JSX_STRING = re.compile(r"\{\s*(['\"])(.*?)\1\s*\}")  # {' '}: MDX's way to write a space
_TAG_START = re.compile(r"<(/?)([A-Za-z][\w.:-]*)?")
_AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*|[^\s@<>]+@[^\s@<>]+)>")
_BLOCK_TAGS = {"br", "hr", "p", "div", "section", "details", "summary", "li", "ul", "ol", "tr", "td", "th",
               "table", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "figure", "figcaption"}
_MARKDOC_TAG = re.compile(r"\{%.*?%\}", re.S)
_DIV = re.compile(r"^\s*:{3,}\s*(.*?)\s*$")
_SHORTCODE = re.compile(r"\{\{[<%].*?[%>]\}\}", re.S)
_SPAN = re.compile(r"\[([^\]\n]*)\]\{[^{}\n]*\}")  # [text]{.smallcaps}
_HEADING_ID = re.compile(r"[ \t]*\{[#.][^{}\n]*\}[ \t]*$", re.M)  # ## Title {#id}
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
_H1 = re.compile(r"^ {0,3}#(?:[ \t]|$)|^[^\n]+\n {0,3}=+[ \t]*(?:\n|$)")
_MAX_TAG = 4000  # characters a JSX tag's attributes may span; beyond, '<' was not a tag


@dataclass(frozen=True)
class Page:
    text: str  # plain Markdown
    meta: dict[str, Any] = field(default_factory=dict)  # the front matter

    @property
    def title(self) -> str:
        value = self.meta.get("title")
        return " ".join(str(value).split()) if isinstance(value, str | int | float) else ""


def page_markdown(text: str, suffix: str) -> Page:
    """A Markdown-flavoured page as plain Markdown, its front matter apart and its title as a heading."""
    meta, body = split_front_matter(text.replace("\r\n", "\n"))
    page = Page(FLAVOURS.get(suffix, _same)(body), meta)
    return Page(with_title(page.text, page.title), meta)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, the rest); a block that does not parse to a mapping is still cut off, as sites do."""
    marker = text[:3]
    if marker not in _FRONT or text[3:4] != "\n":
        return {}, text
    end = re.search(rf"^{re.escape(marker)}[ \t]*$", text[4:], re.M)
    if end is None:
        return {}, text
    block, rest = text[4:4 + end.start()], text[4 + end.end():]
    return _mapping(block, _FRONT[marker]), rest.lstrip("\n")


def _mapping(block: str, kind: str) -> dict[str, Any]:
    try:
        parsed = yaml.safe_load(block) if kind == "yaml" else tomllib.loads(block)
    except (yaml.YAMLError, tomllib.TOMLDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def with_title(markdown: str, title: str) -> str:
    """``# title`` before the body, unless the body already starts with a level-1 heading."""
    if not title or _H1.match(markdown.lstrip()):
        return markdown
    return f"# {title}\n\n{markdown}"


def mdx_to_markdown(text: str) -> str:
    """MDX without its JavaScript: ESM blocks, JSX tags and comments go, the text inside components stays."""
    return _prose(text, lambda s: _unwrap_divs(_outside_inline_code(_drop_esm(s), _strip_jsx_and_ids)))


def markdoc_to_markdown(text: str) -> str:
    """Markdoc without its ``{% tags %}``; what they wrap stays."""
    return _prose(text, lambda s: _blank_lines(_outside_inline_code(s, lambda p: _MARKDOC_TAG.sub("", p))))


def quarto_to_markdown(text: str) -> str:
    """Quarto without its divs, shortcodes and attributes; code cells are plain fences (``_segments``)."""
    return _prose(text, lambda s: _unwrap_divs(_outside_inline_code(s, _strip_quarto)))


def _same(text: str) -> str:
    return text


FLAVOURS: dict[str, Callable[[str], str]] = {".mdx": mdx_to_markdown, ".mdoc": markdoc_to_markdown,
                                             ".qmd": quarto_to_markdown}


# --- code stays code ---------------------------------------------------------------------------------
def _prose(text: str, clean: Callable[[str], str]) -> str:
    """``clean`` applied to each run of lines outside fenced code; code blocks kept verbatim."""
    return "\n".join(chunk if is_code else clean(chunk) for is_code, chunk in _segments(text)) + "\n"


def _segments(text: str) -> Iterator[tuple[bool, str]]:
    """(is code, text) runs of lines; a fenced block comes dedented by its fence's indent, fence lines plain."""
    lines = text.split("\n")
    prose: list[str] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            yield False, "\n".join(prose)
            prose = []
        end = _closing(lines, i + 1, fence[2])
        yield True, _code_block(fence, lines[i + 1:end])
        i = end + 1
    if prose:
        yield False, "\n".join(prose)


def _closing(lines: list[str], start: int, marker: str) -> int:
    """Index of the line closing a fence opened with ``marker``; an unclosed fence runs to the end."""
    closer = re.compile(rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
    return next((j for j in range(start, len(lines)) if closer.match(lines[j])), len(lines))


def _code_block(fence: re.Match[str], body: list[str]) -> str:
    """A backtick fence with the block's language (``{python}``, ``{.r}``, ``jsx title=".."`` -> the name)."""
    indent = len(fence[1])
    code = [line[min(indent, len(line) - len(line.lstrip())):] for line in body]
    language = re.sub(r"[{}.,]", " ", fence[3].split("{%")[0]).split()
    longest = max((len(m[0]) for line in code if (m := re.match(r"\s*(`+)", line))), default=0)
    marker = "`" * max(3, longest + 1)
    return "\n".join([marker + (language[0] if language else ""), *code, marker])


def _outside_inline_code(text: str, clean: Callable[[str], str]) -> str:
    """``clean`` applied between inline code spans, the spans kept as they are."""
    out, pos = [], 0
    for span in _INLINE_CODE.finditer(text):
        out += [clean(text[pos:span.start()]), span[0]]
        pos = span.end()
    return "".join([*out, clean(text[pos:])])


# --- MDX -------------------------------------------------------------------------------------------------
def _drop_esm(text: str) -> str:
    """MDX ``import``/``export`` statements: a block starting with the keyword, to a blank line where its
    brackets are balanced (an exported function may hold blank lines)."""
    out: list[str] = []
    dropping, after_blank, depth = False, True, 0
    for line in text.split("\n"):
        blank = not line.strip()
        dropping = (dropping and (not blank or depth > 0)) or (after_blank and bool(_ESM.match(line)))
        depth = depth + sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}") if dropping else 0
        after_blank = blank
        out.append("" if dropping else line)
    return "\n".join(out)


def _strip_jsx_and_ids(text: str) -> str:
    return _dedent(_HEADING_ID.sub("", _strip_jsx(text)))  # Docusaurus heading ids: ## Title {#id}


def _dedent(text: str) -> str:
    """Text indented inside a component, flush left: MDX has no indented code, CommonMark would see code.

    Lines that continue a list keep their indent (a nested list or an item's second paragraph).
    """
    out: list[str] = []
    in_list = False
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent == 0:
            in_list = bool(_LIST_ITEM.match(line))
        out.append(line if in_list or indent < 4 else line.lstrip())
    return "\n".join(out)


def _strip_jsx(text: str) -> str:
    text = _JSX_STRING.sub(lambda m: m[2], _JSX_COMMENT.sub("", text))
    out: list[str] = []
    pos = 0
    while (start := text.find("<", pos)) >= 0:
        end = _tag_end(text, start)
        out.append(text[pos:start] + (_tag_gap(text[start:end]) if end > 0 else "<"))
        pos = end if end > 0 else start + 1
    return _blank_lines("".join([*out, text[pos:]]))


def _tag_end(text: str, start: int) -> int:
    """The index after the JSX tag starting at ``start`` (``>`` outside quotes and braces), else -1."""
    head = _TAG_START.match(text, start)
    if head is None or _AUTOLINK.match(text, start):
        return -1
    follows = text[head.end():head.end() + 1]  # a name ends at a space, '/' or '>'; a fragment is '<>'
    if not follows or follows not in (" \t\n/>" if head[2] else ">"):
        return -1
    depth, quote = 0, ""
    for i in range(head.end(), min(len(text), start + _MAX_TAG)):
        char = text[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'`":
            quote = char
        elif char in "{}":
            depth = max(0, depth + (1 if char == "{" else -1))
        elif depth == 0 and char in "<>":
            return i + 1 if char == ">" else -1
        elif text.startswith("\n\n", i):  # a blank line ends any tag: a stray '<' costs one paragraph's scan
            return -1
    return -1


def _tag_gap(tag: str) -> str:
    """What a tag leaves: a space where it separated words (self-closing, block HTML), else nothing."""
    name = _TAG_START.match(tag)
    block = name is not None and (name[2] or "").lower() in _BLOCK_TAGS
    return " " if tag.endswith("/>") or block else ""


def _blank_lines(text: str) -> str:
    """Lines that held only markup become empty: they separate blocks, as the markup did."""
    return re.sub(r"^[ \t]+$", "", text, flags=re.M)


# --- Quarto and admonitions ---------------------------------------------------------------------------
def _strip_quarto(text: str) -> str:
    return _blank_lines(_HEADING_ID.sub("", _SPAN.sub(r"\1", _SHORTCODE.sub("", text))))


def _unwrap_divs(text: str) -> str:
    """``:::`` fences go; an admonition's title (``:::tip Title``, ``:::note[Title]``) stays as a line."""
    return "\n".join(_div_title(m[1]) if (m := _DIV.match(line)) else line for line in text.split("\n"))


def _div_title(rest: str) -> str:
    if rest.startswith("{"):
        return ""
    words = rest.split(None, 1)
    title = words[1] if len(words) > 1 else ""
    bracket = re.search(r"\[(.*)\]", rest)
    title = (bracket[1] if bracket else title).strip()
    return f"{title}\n" if title else ""
