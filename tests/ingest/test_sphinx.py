"""Sphinx sources: MyST cleaned to the Markdown its page shows, autosummary listings to the pages Sphinx builds."""

from __future__ import annotations

from pathlib import Path

from tasks.ingest.parsing import parse_file
from tasks.ingest.sphinx import GeneratedPage, autosummary_pages, myst_to_markdown

MYST = """---
jupytext: {format_name: myst}
---
```{include} /_includes/announcement.md
```

(getting-started)=

# Getting Started
See {ref}`the scaling guide <serve-autoscaling>` and {class}`~ray.data.Dataset`.

`````{dropdown} Data: Scalable Datasets
:animate: fade-in

````{note}
Install Ray Data first:

```bash
pip install -U "ray[data]"
```
````

```{testcode}
ds = ray.data.range(10)
```
`````

```{literalinclude} doc_code/example.py
:language: python
```

<!-- a maintainers' note -->
## Next
Done.
"""


def test_myst_keeps_headings_prose_and_code_and_drops_pointers() -> None:
    text = myst_to_markdown(MYST)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines == ["# Getting Started", "See the scaling guide and ray.data.Dataset.", "Data: Scalable Datasets",
                     "Install Ray Data first:", "```", 'pip install -U "ray[data]"', "```",
                     "```", "ds = ray.data.range(10)", "```", "## Next", "Done."]


def test_myst_markdown_parses_into_sections(tmp_path: Path) -> None:
    page = tmp_path / "start.md"
    page.write_text(MYST)
    elements = parse_file(page, ".md")
    titles = [(e.text, e.depth) for e in elements if e.type == "Title"]
    assert titles[0] == ("Getting Started", 0) and ("Next", 1) in titles
    assert not any("{" in e.text or "(getting-started)=" in e.text for e in elements)


LISTING = """.. _dataset-api:

Dataset API
===========

.. currentmodule:: ray.data

Basic Transformations
---------------------

.. autosummary::
   :nosignatures:
   :toctree: doc/

   Dataset.map_batches
      :noindex:
   ~Dataset.filter

Not generated
-------------

.. autosummary::

   Dataset.count

.. autosummary::
   :toctree: doc/

   ray.get
"""


def test_autosummary_lists_the_pages_sphinx_generates() -> None:
    pages = autosummary_pages(LISTING)
    section = ["Dataset API", "Basic Transformations"]
    assert pages == [
        GeneratedPage("doc/ray.data.Dataset.map_batches.html", "ray.data.Dataset.map_batches", "Dataset.map_batches",
                      section),
        GeneratedPage("doc/ray.data.Dataset.filter.html", "ray.data.Dataset.filter", "Dataset.filter", section),
        GeneratedPage("doc/ray.get.html", "ray.get", "ray.get", ["Dataset API", "Not generated"]),
    ]  # no :toctree: = no page; an entry already naming the package is not prefixed


def test_autosummary_inside_myst_eval_rst_and_parsed_elements(tmp_path: Path) -> None:
    page = tmp_path / "index.md"
    page.write_text("# Serve API\n\n## Writing Applications\n\n```{eval-rst}\n.. module:: ray\n\n"
                    ".. autosummary::\n   :toctree: doc/\n\n   serve.deployment\n   serve.deployment\n```\n")
    elements = parse_file(page, ".md")
    generated = [e for e in elements if e.target]
    assert [(e.type, e.text) for e in generated] == [
        ("Title", "Serve API"), ("Title", "Writing Applications"), ("Title", "ray.serve.deployment"),
        ("NarrativeText", "serve.deployment")]  # listed twice, one page
    assert {e.target for e in generated} == {"doc/ray.serve.deployment.html"}
    assert [e.text for e in elements if not e.target and e.type == "Title"] == ["Serve API", "Writing Applications"]
