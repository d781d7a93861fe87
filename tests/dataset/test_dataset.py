"""Dataset building without the gate: sources and mappings, de-duplication, the group split, rendering,
grounded examples from a real Milvus Lite collection, and versions on a real S3 (SeaweedFS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.dataset import grounding
from tasks.dataset import rows as ds
from tasks.dataset import versions as store
from tasks.dataset.examples import ColumnMapping, CuratedExample, ExamplesError, load_examples
from tasks.settings import Settings
from tasks.types import Hit

ROWS = [
    {"id": "a1", "question": "How do I reset my password?", "answer": "Open settings and choose reset password.",
     "group": "account"},
    {"id": "a2", "question": "Where can I see my invoices?", "answer": "Invoices are listed under billing history.",
     "group": "billing"},
    {"id": "a3", "question": "  ", "answer": "An answer without a question.", "group": "billing"},
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tasks.runtime.sources import generator_source
    from tests.conftest import REPO

    return AutoTokenizer.from_pretrained(generator_source(REPO / ".data" / "cache").path)


def write(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".json"])
def test_every_format_maps_to_the_same_examples(settings: Settings, tmp_path: Path, suffix: str) -> None:
    examples, info = load_examples(settings, str(write(tmp_path / f"ex{suffix}", ROWS)), ColumnMapping.parse(""))
    assert [(e.id, e.prompt, e.group, e.label) for e in examples] == [
        ("a1", "How do I reset my password?", "account", "account"),
        ("a2", "Where can I see my invoices?", "billing", "billing"),
        ("a3", None, "billing", "billing"),  # blank -> None: the gate reports it, the loader keeps it
    ]
    assert info.rows == 3 and len(info.sha256) == 64 and info.format == suffix.strip(".").replace("json", "json")


def test_mapping_presets_pairs_and_errors() -> None:
    assert ColumnMapping.parse("bitext").group == "intent"
    assert ColumnMapping.parse("prompt=q, response=a").as_dict() == {
        "prompt": "q", "response": "a", "group": None, "label": None, "id": None, "context": None}
    for bad in ("prompt=q", "prompt=q,response=a,colour=x", "nonsense"):
        with pytest.raises(ExamplesError):
            ColumnMapping.parse(bad)


def test_hostile_sources_give_clear_errors(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{not json\n')
    with pytest.raises(ExamplesError, match="line 2"):
        load_examples(settings, str(bad), ColumnMapping.parse(""))
    with pytest.raises(ExamplesError, match=r"no column response=reply.*\['question', 'answer'"):
        load_examples(settings, str(write(tmp_path / "x.csv", [{"question": "q", "answer": "a"}])),
                      ColumnMapping.parse("prompt=question,response=reply"))
    with pytest.raises(FileNotFoundError):
        load_examples(settings, str(tmp_path / "missing.jsonl"), ColumnMapping.parse(""))
    with pytest.raises(ExamplesError, match="format"):
        load_examples(settings, str(tmp_path / "x.txt"), ColumnMapping.parse(""))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ExamplesError, match="no examples"):
        load_examples(settings, str(tmp_path / "empty.jsonl"), ColumnMapping.parse(""))


def test_pubmedqa_layout_object_of_records_with_context_lists(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "pqal.json"
    path.write_text(json.dumps({"123": {"QUESTION": "Does X help?", "CONTEXTS": ["Part one.", "Part two."],
                                        "LONG_ANSWER": "X helps in most patients.", "final_decision": "yes"}}))
    (ex,), _ = load_examples(settings, str(path), ColumnMapping.parse("pubmedqa"))
    assert (ex.id, ex.group, ex.label, ex.context) == ("123", "123", "yes", ("Part one.", "Part two."))


def example(i: int, prompt: str, group: str = "g") -> CuratedExample:
    return CuratedExample(f"e{i}", prompt, f"answer {i} is long enough", group, group)


def test_exact_and_near_duplicates_are_removed_keeping_the_first() -> None:
    long = "How do I configure the retention of old releases so that only the last five remain in the bucket"
    found = ds.deduplicate([
        example(1, "Cancel order 123!"), example(2, "cancel   ORDER 456"),  # exact after normalization
        example(3, long), example(4, long + " please"),  # near: one extra word
        example(5, "How do I cancel a subscription?"), example(6, "How do I cancel an order?"),  # distinct
        example(7, None),  # no prompt: passes through to the gate
    ], threshold=0.85)
    assert [e.id for e in found.kept] == ["e1", "e3", "e5", "e6", "e7"]
    assert found.exact == [("e2", "e1")] and found.near == [("e4", "e3")]


def test_group_split_is_deterministic_and_never_splits_a_group() -> None:
    groups = [f"g{i % 17}" for i in range(400)]
    splits = ds.assign_splits(groups, 0.2, seed=13)
    assert splits == ds.assign_splits(list(reversed(groups)), 0.2, seed=13)  # row order does not matter
    assert splits != ds.assign_splits(groups, 0.2, seed=14)
    share = sum(1 for g in groups if splits[g] == "eval") / len(groups)
    assert 0.15 <= share <= 0.25 and set(splits.values()) == {"train", "eval"}


def test_rows_follow_the_training_format_and_count_chat_template_tokens(tokenizer) -> None:
    rows = ds.curated_rows([example(1, "What is ragtune?")], {"g": "train"})
    ds.set_token_counts(tokenizer, rows)
    record = rows[0].record()
    assert list(record) == ["id", "messages", "group", "kind", "n_tokens", "reference"]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["reference"] == record["messages"][-1]["content"]
    independent = tokenizer.apply_chat_template(record["messages"], tokenize=True, return_dict=True)["input_ids"]
    assert record["n_tokens"] == len(independent)


def test_grounded_messages_use_the_answering_prompt_and_fit_the_budget(tokenizer) -> None:
    from tasks.answer import prompting
    passages = [Hit("c1", 0.9, "ragtune flushes Milvus after writes. " * 80, "d1", {"path": "docs/a.md"}),
                Hit("c2", 0.8, "Releases are written pointer last.", "d2", {"path": "docs/b.md"})]
    messages = grounding.training_messages("Why flush?", passages, "Because searches are faster [1].")
    assert messages[0] == {"role": "system", "content": prompting.SYSTEM_PROMPT}
    assert '<document id="2" source="docs/b.md">' in messages[1]["content"] and "Why flush?" in messages[1]["content"]
    sizes = [len(tokenizer.apply_chat_template(grounding.training_messages("Why flush?", passages[:n], "Because."),
                                               tokenize=True, return_dict=True)["input_ids"]) for n in (1, 2)]
    assert grounding.fit_passages(tokenizer, "Why flush?", passages, "Because.", sizes[1]) == passages
    assert grounding.fit_passages(tokenizer, "Why flush?", passages, "Because.", sizes[1] - 1) == passages[:1]
    assert grounding.fit_passages(tokenizer, "Why flush?", passages, "Because.", sizes[0] - 1) == []
    assert grounding.lead_with_citation("It is written first. ", 2) == "According to [2]: It is written first."
    assert grounding.support("pointer written last", "The pointer is written last.") == 1.0


@pytest.mark.flow
def test_grounded_and_abstention_examples_from_a_real_collection(settings: Settings, tmp_path: Path) -> None:
    from tasks.dataset import build as dataset_build
    from tasks.runtime.loading import load_embedder
    from tasks.runtime.sources import EMBEDDING_MODEL_NAME
    from tasks.stores import milvus
    from tasks.types import Chunk, IndexMeta, doc_id_for

    topics = {"storage": "ragtune stores datasets, checkpoints and releases in one S3 bucket under versioned keys.",
              "serving": "ragtune serve starts a FastAPI server with POST /ask and GET /healthz endpoints.",
              "training": "Fine-tuning runs under accelerate launch with loss only on the assistant tokens."}
    chunks = [Chunk(doc_id_for(f"docs/{t}.md"), 0, text, f"docs/{t}.md", f"docs/{t}.md", t, t)
              for t, text in topics.items()]
    with milvus.connect(settings) as index:
        physical = index.ensure_generation("docs", IndexMeta(EMBEDDING_MODEL_NAME, 384))
        vectors = load_embedder().encode([c.text for c in chunks], normalize_embeddings=True)
        index.upsert_chunks(physical, chunks, vectors)
        index.flush(physical)
    rows = [{"question": "Where does ragtune store datasets and releases?", "group": "storage",
             "answer": "In one S3 bucket, under versioned keys."},
            {"question": "Which endpoints does ragtune serve expose?", "group": "serving",
             "answer": "A FastAPI server with POST /ask and GET /healthz."},
            {"question": "Which tokens carry the fine-tuning loss?", "group": "training",
             "answer": "Only the assistant tokens carry the loss under accelerate launch."}]
    settings = settings.model_copy(update={"dataset": settings.dataset.model_copy(
        update={"abstain_share": 1.0, "eval_share": 0.3, "grounded_k": 1})})
    examples = str(write(tmp_path / "q.jsonl", rows))
    prepared = dataset_build.prepare_examples.fn(settings, examples, "default", 13, "docs")
    grounded = {r.id: r for r in prepared.rows if r.kind == "grounded"}
    assert len(grounded) == 3 and all(r.response.startswith("According to [1]: ") for r in grounded.values())
    assert all("<document id=\"1\"" in r.messages[1]["content"] for r in grounded.values())
    abstain = [r for r in prepared.rows if r.kind == "abstain"]
    assert abstain and all(r.response == ds.ABSTAIN_ANSWER for r in abstain)
    for row in abstain:  # its documents come from another group, in the same split
        assert topics[row.group] not in row.messages[1]["content"]
    assert prepared.grounded["served_by"] == physical and prepared.grounded["abstain"] == len(abstain)


def test_version_id_hashes_content_only() -> None:
    files = {"train.jsonl": b'{"id": "a"}\n', "eval.jsonl": b'{"id": "b"}\n'}
    assert store.version_id(files) == store.version_id(dict(files))
    assert store.version_id(files) != store.version_id({**files, "eval.jsonl": b'{"id": "c"}\n'})
    assert store.name_for("s3://bucket/x/My Examples.v2.jsonl") == "My-Examples.v2"
    with pytest.raises(ValueError):
        store.check_name("../escape")


def test_dead_s3_missing_unpassed_and_corrupt_versions_are_refused(settings: Settings) -> None:
    from ragtune import stack
    from tasks.stores.s3 import S3Error

    dead = settings.model_copy(update={"s3": settings.s3.model_copy(update={"port": stack.free_port()})})
    with pytest.raises(S3Error, match=f"127.0.0.1:{dead.s3.port}"):
        store.accepted_version(dead, "support")
    with pytest.raises(store.DatasetError, match="not in the cache nor at"):
        store.load_dataset_version(dead, "0" * 64)
    files = {"train.jsonl": b"{}\n", "eval.jsonl": b"{}\n"}
    manifest = {"version": "f" * 64, "gate": {"success": False}, "files": store.file_entries(files)}
    path = store.write_local(settings, "f" * 64, {**files, "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(store.DatasetError, match="did not pass its gate"):
        store.load_dataset_version(settings, "f" * 64).require_passed()
    (path / "train.jsonl").write_text('{"tampered": true}\n')
    with pytest.raises(store.DatasetError, match="does not match its manifest"):
        store.load_dataset_version(settings, "f" * 64)
