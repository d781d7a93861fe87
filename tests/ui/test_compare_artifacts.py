"""`compare-approaches`'s artifacts as a person sees them: the Prefect UI of a real `prefect server`, in headless
Chromium. The flow runs here on tests/evaluation's tiny QA set (six documents, a 2-layer Llama); each UI (the
default React one under /v2 and the classic one) then shows the comparison tables, the winner and the chart.

Opt-in: set RAGTUNE_TEST_CHROMIUM to a Chromium command (`make test-ui` installs Debian's `chromium` and sets it).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest

from tasks.compare.report import Comparison, markdown, winner_line
from tests.conftest import prefect_server
from tests.evaluation.test_compare_arms import TRAINING, corpus, latest_artifact
from tests.ui import chromium

CHROMIUM = os.environ.get("RAGTUNE_TEST_CHROMIUM", "")
pytestmark = [pytest.mark.ui, pytest.mark.skipif(not CHROMIUM, reason="set RAGTUNE_TEST_CHROMIUM to a Chromium "
                                                 "command (`make test-ui` installs Debian's chromium and sets it)")]
UIS = {"v2": "/v2", "v1": ""}  # the default UI, and the classic one a saved preference still opens
TABLES_JS = """[...document.querySelectorAll('table')].map(t => {
  const r = t.getBoundingClientRect();
  return {visible: r.width > 0 && r.height > 0,
          rows: [...t.rows].map(row => [...row.cells].map(c => c.textContent.trim()))};
})"""


@dataclass
class Published:
    server: str
    result: Comparison
    artifacts: dict[str, Any]

    def url(self, ui: str, key: str) -> str:
        """The artifact's page in ``ui``."""
        return f"{self.server}{UIS[ui]}/artifacts/artifact/{self.artifacts[key].id}"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, tiny_model: Path) -> Iterator[Published]:
    """compare-approaches run in this process against a real Prefect server (three arms, one trained model)."""
    from flows.compare import compare_approaches

    home = tmp_path_factory.mktemp("ui")
    with prefect_server(home, model_cache, {"RAGTUNE_MODELS__GENERATOR": str(tiny_model)}) as settings:
        qa, docs = corpus(home)
        result = compare_approaches(str(qa), str(docs), "compare_ui", arms=["base", "finetune"], k=3, preset="test",
                                    method="full", overrides=TRAINING, max_new_tokens=6)
        artifacts = {key: latest_artifact(key) for key in ("compare-approaches", "compare-approaches-chart")}
        yield Published(f"http://127.0.0.1:{settings.prefect.port}", result, artifacts)


@pytest.mark.parametrize("ui", UIS)
def test_the_tables_and_the_winner_render(published: Published, ui: str, tmp_path: Path) -> None:
    expected = markdown_tables(markdown(published.result))
    with chromium.headless(CHROMIUM, tmp_path / "chromium") as page:
        page.open(published.url(ui, "compare-approaches"))
        page.wait_for(f"document.querySelectorAll('table').length >= {len(expected)}", timeout_s=90)
        shown, text = page.evaluate(TABLES_JS), page.evaluate("document.body.innerText")
        shot = page.screenshot(tmp_path / f"tables-{ui}.png")
    print(f"screenshot: {shot}")
    rendered = [t["rows"] for t in shown if t["visible"]]
    assert all(table in rendered for table in expected), f"expected {expected}, the page shows {shown}; see {shot}"
    assert rendered[0][0][0] == "arm" and [row[0] for row in rendered[0][1:]] == list(published.result.arms)
    assert _words(winner_line(published.result).replace("**", "")) in _words(text), f"no winner line; see {shot}"


@pytest.mark.parametrize("ui", UIS)
def test_the_chart_loads(published: Published, ui: str, tmp_path: Path) -> None:
    """The image decoded at the chart's own size, laid out, and painted: its region of the screenshot is no blank."""
    from PIL import Image

    data = str(published.artifacts["compare-approaches-chart"].data)
    chart = f"[...document.images].find(i => i.getAttribute('src') === {json.dumps(data)})"
    with chromium.headless(CHROMIUM, tmp_path / "chromium") as page:
        page.open(published.url(ui, "compare-approaches-chart"))
        page.wait_for(f"(() => {{ const i = {chart}; return !!i && i.complete; }})()", timeout_s=90)
        image = page.evaluate(f"""(() => {{ const i = {chart}; if (!i) return null; const r = i.getBoundingClientRect();
            return {{natural: [i.naturalWidth, i.naturalHeight],
                     box: [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]}}; }})()""")
        shot = page.screenshot(tmp_path / f"chart-{ui}.png")
    print(f"screenshot: {shot}")
    assert image is not None, f"no <img> shows the chart artifact's data; see {shot}"
    assert image["natural"] == list(png_size(data)), f"the browser did not decode the chart: {image}; see {shot}"
    left, top, right, bottom = (round(v) for v in image["box"])
    assert right - left > 100 and bottom - top > 40, f"the chart is not laid out: {image}; see {shot}"
    painted = Image.open(shot).convert("RGB").crop((left, top, right, bottom))
    assert len(painted.getcolors(1 << 24) or []) > 20, f"the chart's region of the screenshot is blank; see {shot}"


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Each pipe table of ``text`` as rows of cells, header first (the delimiter row left out)."""
    lines = text.splitlines()
    return [[_cells(line), *(_cells(row) for row in takewhile(lambda r: r.startswith("| "), lines[i + 2:]))]
            for i, line in enumerate(lines[:-1]) if line.startswith("| ") and lines[i + 1].startswith("|---")]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _words(text: str) -> str:
    return " ".join(text.split())


def png_size(data_uri: str) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    png = base64.b64decode(data_uri.split(",", 1)[1])
    assert png.startswith(b"\x89PNG"), data_uri[:40]
    return struct.unpack(">II", png[16:24])
