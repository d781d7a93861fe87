"""Docs-site formats (MDX, Markdoc, Quarto, AsciiDoc) and text encodings: parsed as their pages read.

Unit tests call ``parse_file`` on files they write; the flow test ingests a folder of ``.mdx`` pages
through the real flow (Milvus Lite, real parsers and model, Prefect harness) and reads the chunks' titles.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tasks.ingest.markup import page_markdown, split_front_matter
from tasks.ingest.parsing import Element, ParseError, ParseLimits, parse_file
from tasks.settings import Settings
from tasks.stores.milvus import IndexClient

LIMITS = ParseLimits(timeout_s=20, max_file_mb=2)
CODE = 'echo "<div>{x}</div>"\nconst y = {a: 1};'

MDX = f"""---
title: Getting started
sidebar_position: 2
---
import Callout from '@site/src/components/Callout';
import {{
  Tabs,
  TabItem,
}} from '@theme/Tabs';
export const meta = {{ author: 'x' }};

Intro text with an inline `<Button>` and {{/* a hidden note */}} more words.

<Callout type="warn">Do not do X</Callout>

<Tabs groupId="os" values={{[{{label: 'Linux', value: 'linux'}}]}}>
  <TabItem value="linux">
    Linux users run the installer.

    ```bash title="install.sh"
{chr(10).join('    ' + line for line in CODE.splitlines())}
    ```

  </TabItem>
</Tabs>

<Icon name="star" /> Stars are free.
"""

MDOC = f"""---
title: Markdoc page
---

{{% callout type="note" %}}
Markdoc keeps this sentence.
{{% /callout %}}

Inline {{% $markdoc.frontmatter.title %}} variable.

```js {{% process=false %}}
{CODE}
```
"""

QMD = f"""---
title: "Quarto report"
format: html
---

## Intro {{#sec-intro}}

::: {{.callout-note}}
Quarto keeps this callout text.
:::

{{{{< video https://example.com/v.mp4 >}}}}

```{{python}}
{CODE}
```
"""

ADOC = f"""= Operator Guide
:product: Widget

Intro paragraph about {{product}} usage.

== Installing

* bullet one

[source,bash]
----
{CODE}
----

include::/etc/passwd[]
"""


def _parse(tmp_path: Path, name: str, data: str | bytes) -> list[Element]:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return parse_file(path, path.suffix, LIMITS)


def _text(elements: list[Element]) -> str:
    return "\n".join(e.text for e in elements)


@pytest.mark.parametrize(("name", "source", "title", "kept"), [
    ("page.mdx", MDX, "Getting started", ["Do not do X", "Linux users run the installer.", "Stars are free."]),
    ("page.mdoc", MDOC, "Markdoc page", ["Markdoc keeps this sentence.", "Inline variable."]),
    ("page.qmd", QMD, "Quarto report", ["Quarto keeps this callout text.", "Intro"]),
    ("page.adoc", ADOC, "Operator Guide", ["Intro paragraph about Widget usage.", "Installing", "bullet one"]),
])
def test_docs_site_flavours_keep_their_text_and_code_and_lose_their_markup(
        tmp_path: Path, name: str, source: str, title: str, kept: list[str]) -> None:
    elements = _parse(tmp_path, name, source)
    assert (elements[0].type, elements[0].depth, elements[0].text) == ("Title", 0, title)  # from the front matter
    assert [e.text for e in elements if e.type == "Title"].count(title) == 1
    text = _text(elements)
    assert all(sentence in text for sentence in kept), text
    assert CODE in [e.text for e in elements]  # the code block verbatim, tags and braces included
    prose = "\n".join(e.text for e in elements if e.text != CODE)
    for markup in ("import ", "export ", "<Callout", "</", "/>", "{/*", "{%", ":::", "{#", "{{<", "---", "title:"):
        assert markup not in prose, (markup, prose)
    assert "root:" not in text  # an AsciiDoc include:: never reads a local file


def test_inline_code_and_autolinks_survive_jsx_stripping(tmp_path: Path) -> None:
    text = _text(_parse(tmp_path, "inline.mdx", "Use `<Button>{label}</Button>` or see <https://example.com/x>.\n"))
    assert "<Button>{label}</Button>" in text and "https://example.com/x" in text


def test_front_matter_yaml_and_toml_and_a_leading_heading() -> None:
    assert split_front_matter("+++\ntitle = 'Toml page'\n+++\n\nBody\n") == ({"title": "Toml page"}, "Body\n")
    assert split_front_matter("---\n: not yaml [\n---\nBody\n") == ({}, "Body\n")  # cut off all the same
    assert split_front_matter("No front matter\n---\n") == ({}, "No front matter\n---\n")
    page = page_markdown("---\ntitle: Meta title\n---\n# Written title\n\nBody\n", ".md")
    assert page.text.startswith("# Written title") and page.title == "Meta title"  # a leading H1 wins


def test_the_new_suffixes_are_supported(tmp_path: Path) -> None:
    for suffix in (".mdx", ".mdoc", ".qmd", ".adoc", ".asciidoc"):
        elements = _parse(tmp_path, f"page{suffix}", "Plain words in a page.\n")
        assert _text(elements) == "Plain words in a page."


SAMPLE = "Café naïve résumé: 5 € for “quotes”.\n"
JAPANESE = "日本語のテキストです。東京は日本の首都です。\n\n富士山は日本で一番高い山です。\n"


@pytest.mark.parametrize(("codec", "text"), [
    ("utf-8-sig", SAMPLE), ("utf-16", SAMPLE), ("utf-16-le", None), ("utf-16-be", None),
    ("utf-32", SAMPLE), ("utf-32-be", None), ("cp1252", SAMPLE), ("shift_jis", JAPANESE),
    ("utf-16-le", "A UTF-16 note without a byte-order mark, as Windows tools write.\n"),
])
def test_encodings_are_detected_not_assumed(tmp_path: Path, codec: str, text: str | None) -> None:
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-be": b"\x00\x00\xfe\xff"}
    data = text.encode(codec) if text is not None else bom[codec] + SAMPLE.encode(codec)
    elements = _parse(tmp_path, "note.txt", data)
    assert _text(elements).split() == (text or SAMPLE).split()
    assert all(e.type != "Title" for e in elements)  # plain text has no headings, whatever the script


def test_every_text_format_is_decoded(tmp_path: Path) -> None:
    cp1252 = {"page.md": "# Über\n\nDie Straße führt zum Bäcker.\n", "page.rst": "Über\n====\n\nDie Straße führt.\n",
              "page.html": "<h1>Über</h1><p>Die Straße führt.</p>", "table.csv": "Stadt,Straße\nKöln,Hauptstraße\n"}
    for name, text in cp1252.items():
        assert "Straße" in _text(_parse(tmp_path, name, text.encode("cp1252"))), name
    utf16 = "name\tcity\nJosé\tMálaga\n".encode("utf-16")
    assert "Málaga" in _text(_parse(tmp_path, "table.tsv", utf16))


@pytest.mark.parametrize(("data", "reason"), [
    (random.Random(21).randbytes(20_000), "no encoding decodes it"),
    (bytes(range(1, 9)) * 500, "control characters"),
    (b"\xff\xfeA\x00B", "byte-order mark but is not utf-16-le"),
])
def test_undecodable_text_is_refused_with_the_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=f"^undecodable text: .*{reason}"):
        _parse(tmp_path, "junk.md", data)


# --- through the real flow ---------------------------------------------------------------------------
PAGES = {
    "intro.mdx": ("---\ntitle: Welcome to Quokka\n---\nimport X from './x';\n\n<Note>Quokkas smile at "
                  "visitors on Rottnest Island.</Note>\n", "Welcome to Quokka", "quokkas smile at visitors"),
    "guide/setup.mdx": ("---\ntitle: Setup guide\n---\n\n## Installing\n\n<Steps>\nRun the wombat installer "
                        "twice.\n</Steps>\n", "Setup guide > Installing", "wombat installer"),
    "plain.mdx": ("# Written heading\n\nNumbats eat termites all day.\n", "Written heading", "numbat termites"),
}


@pytest.mark.flow
def test_a_folder_of_mdx_pages_is_indexed_with_their_titles(env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from tasks.ingest.plan import embedder

    site = tmp_path / "site"  # tmp_path also holds the test's data dir
    for name, (text, _, _) in PAGES.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    report = ingest_documents(str(site))
    assert (report.added, report.quarantined) == (len(PAGES), 0), report.quarantine
    with IndexClient.from_settings(env) as index:
        for name, (_, section, question) in PAGES.items():
            hit = index.search_dense("docs", embedder(env).encode([question])[0], 1)[0]
            assert (hit.path, hit.metadata["section"]) == (name, section)
            assert hit.metadata["title"] == section.split(" > ")[0]
            assert "<" not in hit.text and "import" not in hit.text
