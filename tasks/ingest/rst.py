"""reStructuredText to HTML by docutils (the reader Sphinx itself uses), for unstructured's HTML partitioner.

unstructured converts ``.rst`` with pandoc: one pandoc process per file, ~63 ms a Ray docs page and ~22 s of
the Ray ingestion's parse, the largest part of it. docutils parses the same page ~5x faster in the parser
process itself. docutils knows only its own directives and roles; a Sphinx project's (``code-block``'s
cousins, ``tab-set``, ``literalinclude``, ``:ref:``, ``:class:``...) are registered here, through docutils'
public registration functions, before a document that uses them is parsed:

- code directives (``testcode``, ``testoutput``, ``doctest``, ``ipython``...) become literal blocks;
- directives that only point elsewhere or configure the build (``literalinclude``, ``include``,
  ``currentmodule``, ``testsetup``...) are dropped: nothing of theirs is text on the built page. docutils'
  file insertion and raw passthrough stay off, so no document can pull a local file into the index;
- a ``toctree`` is the list of its entries (an entry's title where it gives one, else its document name; Sphinx
  shows the documents' titles), under its ``:caption:``: an index page is its list of pages, as on the site;
- any other directive keeps its argument line (a tab's or a card's title) and its body, parsed as
  reStructuredText: what pandoc's reader did with directives it did not know;
- cross-reference roles (``:ref:``, ``:doc:``, ``:term:``) keep their title, without the ``<target>``;
  other roles (``:class:``, ``:func:``, ``:py:meth:``...) become inline code, ``~a.b.C`` shown as ``C``,
  as Sphinx shows them.

Parse problems never fail a document: docutils reports nothing and halts on nothing; what it cannot parse
stays in the page as the literal text it was.
"""

from __future__ import annotations

import functools
import re
from typing import Any

CODE = {"code-block", "sourcecode", "testcode", "testoutput", "doctest", "ipython", "code-cell",
        "jupyter-execute", "exec_code", "program-output"}
DROPPED = {"literalinclude", "include", "raw", "currentmodule", "module", "highlight", "index",
           "testsetup", "testcleanup", "contents", "tabularcolumns"}
XREF = {"ref", "doc", "term", "numref", "any", "download", "std:ref", "std:doc", "std:term", "keyword", "option"}

_DIRECTIVE = re.compile(r"^[ \t]*\.\.[ \t]+([\w][\w.+:-]*)[ \t]*::", re.M)
_ROLE = re.compile(r"(?<![\w`]):([\w][\w.+:-]*):`")
_TITLED = re.compile(r"^(.*?)\s*<([^<>]*)>$", re.S)
SETTINGS = {
    "file_insertion_enabled": False, "raw_enabled": False,  # no local file or raw HTML reaches the index
    "report_level": 5, "halt_level": 5, "warning_stream": False, "traceback": True,
    "doctitle_xform": False, "initial_header_level": 1, "sectsubtitle_xform": False, "docinfo_xform": False,
    "syntax_highlight": "none", "math_output": "HTML", "line_length_limit": 1_000_000,
    "strip_comments": True, "embed_stylesheet": False, "stylesheet_path": "",
    "input_encoding": "unicode", "output_encoding": "unicode",
}


def rst_html(text: str) -> str:
    """The HTML body docutils writes for reStructuredText ``text``, Sphinx' directives and roles read as above."""
    from docutils.core import publish_parts

    _register(_unknown_directives(text), _unknown_roles(text))
    return publish_parts(source=text, writer_name="html5", settings_overrides=dict(SETTINGS))["body"]


def _unknown_directives(text: str) -> set[str]:
    """Directive names in ``text`` to register: those docutils does not know, and those read otherwise here."""
    from docutils.parsers.rst.languages import en

    found = {name.lower() for name in _DIRECTIVE.findall(text)}
    return ((found - set(en.directives)) | (found & (DROPPED | CODE))) - _registered["directives"]


def _unknown_roles(text: str) -> set[str]:
    from docutils.parsers.rst.languages import en

    return {name.lower() for name in _ROLE.findall(text)} - set(en.roles) - _registered["roles"]


_registered: dict[str, set[str]] = {"directives": set(), "roles": set()}


def _register(directive_names: set[str], role_names: set[str]) -> None:
    from docutils.parsers.rst import directives, roles

    kinds = _directive_kinds()
    for name in directive_names:
        kind = "dropped" if name in DROPPED else "code" if name in CODE else "toctree" if name == "toctree" \
            else "generic"
        directives.register_directive(name, kinds[kind])
        _registered["directives"].add(name)
    for name in role_names:
        roles.register_local_role(name, _xref_role if name.split(":")[-1] in XREF else _code_role)
        _registered["roles"].add(name)


class _AnyOption(dict):  # noqa: FURB189 - docutils indexes option_spec: any option, its value kept as given
    """Any ``:option: value`` a Sphinx directive takes (docutils reads options only when the spec is not empty)."""

    def __init__(self) -> None:
        super().__init__(name=str)

    def __missing__(self, key: str) -> Any:
        return str


def _shown(text: str) -> str | None:
    """The title of a ``title <target>`` reference or entry; None when it gives none."""
    titled = _TITLED.match(text)
    return titled[1] if titled and titled[1] else None


@functools.cache
def _directive_kinds() -> dict[str, type]:
    """The directive classes Sphinx' directives are registered as (docutils imported on first use); docutils'
    image and figure are replaced once, here (``_pictures``)."""
    from docutils import nodes
    from docutils.parsers.rst import Directive, directives

    for name, kind in _pictures().items():
        directives.register_directive(name, kind)

    class Sphinx(Directive):
        """Any argument line, any options, any body: what a Sphinx directive may carry."""

        optional_arguments = 1
        final_argument_whitespace = True
        has_content = True
        option_spec = _AnyOption()

    class Generic(Sphinx):
        """A directive docutils does not know: its argument line as a paragraph, then its body."""

        def run(self) -> list[Any]:
            box = nodes.container(classes=[self.name])
            if self.arguments:
                title, _ = self.state.inline_text(self.arguments[0], self.lineno)
                box += nodes.paragraph("", "", *title)
            if self.content:
                self.state.nested_parse(self.content, self.content_offset, box)
            return [box] if len(box) else []

    class Code(Sphinx):
        """A Sphinx code directive: its body as a literal block."""

        def run(self) -> list[Any]:
            if not self.content:
                return []
            code = "\n".join(self.content)
            return [nodes.literal_block(code, code, classes=["code"])]

    class Toctree(Sphinx):
        """Sphinx' table of contents: its caption, then one list item per entry (``:glob:`` patterns as written)."""

        def run(self) -> list[Any]:
            entries = [line.strip() for line in self.content or [] if line.strip()]
            out: list[Any] = []
            if caption := self.options.get("caption"):
                out.append(nodes.paragraph(caption, caption))
            if entries:
                items = nodes.bullet_list()
                for entry in entries:
                    text = _shown(entry) or entry
                    items += nodes.list_item("", nodes.paragraph(text, text))
                out.append(items)
            return out

    class Dropped(Sphinx):
        """A directive whose output is not text on the built page (or would read a local file)."""

        def run(self) -> list[Any]:
            return []

    return {"generic": Generic, "code": Code, "toctree": Toctree, "dropped": Dropped}


@functools.cache
def _pictures() -> dict[str, type]:
    """docutils' image and figure as unstructured can read them: an image's alt text is its ``:alt:`` or none
    (docutils would write the file name), and a figure is its image followed by its caption and legend as
    paragraphs (unstructured reads nothing inside ``<figure>``; pandoc's reading lost captions the same way)."""
    from docutils import nodes
    from docutils.parsers.rst.directives.images import Figure, Image

    class Picture(Image):
        def run(self) -> list[Any]:
            self.options.setdefault("alt", "")
            return super().run()

    class FlatFigure(Figure):
        def run(self) -> list[Any]:
            self.options.setdefault("alt", "")
            out: list[Any] = []
            for node in super().run():
                if not isinstance(node, nodes.figure):
                    out.append(node)
                    continue
                for part in node.children:
                    if isinstance(part, nodes.caption):
                        out.append(nodes.paragraph("", "", *part.children))
                    else:
                        out.extend(part.children if isinstance(part, nodes.legend) else [part])
            return out

    return {"image": Picture, "figure": FlatFigure}


def _xref_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
               content: Any = None) -> tuple[list[Any], list[Any]]:
    """``:ref:`title <target>``` as its title (the target alone when there is none)."""
    from docutils import nodes
    from docutils.utils import unescape

    text = unescape(text)
    return [nodes.inline(rawtext, _shown(text) or text.lstrip("!~"))], []


def _code_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
               content: Any = None) -> tuple[list[Any], list[Any]]:
    """``:class:`~a.b.C``` as Sphinx shows it: inline code ``C`` (``a.b.C`` without the tilde)."""
    from docutils import nodes
    from docutils.utils import unescape

    text = unescape(text)
    if (title := _shown(text)) is not None:
        return [nodes.literal(rawtext, title)], []
    text = text.lstrip("!")
    return [nodes.literal(rawtext, text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text)], []
