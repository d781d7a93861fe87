"""promote_release end to end on SeaweedFS + Milvus Lite with the real embedder and SmolLM2:
first release, a better candidate promoted and served, a worse one refused with reasons, --force
recorded, rollback restores the previous answers, a re-run changes nothing, restore from S3 alone."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.promote import promote_release
from tasks.answer.serving import resolve_serving
from tasks.release import promotion
from tasks.release.cache import forget
from tasks.release.manifest import list_releases, read_pointer
from tasks.settings import Settings
from tasks.stores.milvus import IndexClient
from tasks.stores.s3 import S3Store
from tasks.types import Chunk, IndexMeta
from tests.conftest import cli_json

pytestmark = pytest.mark.flow

PAGES = {
    "cooling": "The Alpha reactor is cooled by liquid cobalt pumped through ceramic channels.",
    "billing": "Invoices are issued on the first Monday of each month and are payable within 30 days.",
    "garden": "Tomatoes need six hours of direct sun and deep watering twice a week.",
    "rockets": "The Kestrel rocket burns methane and liquid oxygen in a full-flow staged engine.",
    "violin": "A violin bow is strung with horsehair that is rubbed with rosin before playing.",
    "bread": "Sourdough bread rises with a wild yeast starter fed with flour and water daily.",
}
QUESTIONS = {
    "cooling": "How is the Alpha reactor cooled?",
    "billing": "When are invoices issued and when are they due?",
    "garden": "How much sun do tomatoes need?",
    "rockets": "What fuel does the Kestrel rocket burn?",
    "violin": "What is a violin bow strung with?",
    "bread": "What makes sourdough bread rise?",
}


@pytest.fixture
def env(s3_settings: Settings, prefect_harness: None, tmp_path: Path) -> Settings:
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "source": f"{p}.md"}) + "\n" for p, q in QUESTIONS.items()))
    answer = s3_settings.answer.model_copy(update={"mode": "dense", "k": 2, "max_new_tokens": 12,
                                                   "prompt_tokens": 256})
    models = s3_settings.models.model_copy(update={"torch_threads": 1})
    milvus = s3_settings.milvus.model_copy(update={"uri": str(tmp_path / "milvus.db")})
    return s3_settings.model_copy(update={"answer": answer, "models": models, "milvus": milvus})


def build_generation(settings: Settings, pages: dict[str, str]) -> str:
    """A new generation of alias ``docs`` holding ``pages`` (file name -> text), embedded for real."""
    from tasks.answer.retrieval import encode_queries, query_embedder

    embedder = query_embedder(settings)
    with IndexClient(settings.milvus_uri) as index:
        meta = IndexMeta(embedder.name, embedder.dim, {"test": True})
        gen = index.create_generation("docs", meta)
        chunks = [Chunk(doc_id=f"{page}-{i}", chunk_index=0, text=text, uri=f"file:///docs/{page}.md",
                        path=f"{page}.md", title=page) for i, (page, text) in enumerate(pages.items())]
        index.upsert_chunks(gen, chunks, encode_queries(settings, [c.text for c in chunks]))
        index.flush(gen)
        if index.describe_alias("docs") is None:
            index.set_alias("docs", gen)
    return gen


def gate(settings: Settings, tmp_path: Path) -> promotion.GateConfig:
    return promotion.GateConfig(questions=str(tmp_path / "questions.jsonl"), k=2, mode="dense")


def ask(settings: Settings, question: str) -> dict:
    from tasks.answer.answering import ask as run_ask

    forget()
    answer = run_ask(settings, question).complete()
    return {"text": answer.text, "sources": [s["uri"] for s in answer.sources], "release": answer.release_id,
            "model": answer.model, "collection": answer.collection}


def test_promote_serve_refuse_force_rollback(env: Settings, tmp_path: Path, model_cache: Path) -> None:
    from tasks.runtime.sources import generator_source

    checkpoint = generator_source(env.cache_dir).path  # the real SmolLM2, as a "fine-tuned" checkpoint
    half = dict(list(PAGES.items())[:3])
    g1 = build_generation(env, half)
    first = promote_release(promotion.Candidate(collection=g1, checkpoint=str(checkpoint)),
                            gate(env, tmp_path), settings=env)
    assert first.promoted and "first release" in first.decision.reasons[0]
    assert first.decision.production["retrieval.hit@k"] == 0.0  # no index: the first release's baseline
    before = ask(env, QUESTIONS["rockets"])
    assert before["release"] == first.release_id and before["collection"] == g1
    assert before["model"].startswith("checkpoint:sha256-")
    assert resolve_serving(env).model_path != checkpoint  # a verified copy from S3, not the local directory

    g2 = build_generation(env, PAGES)  # every page: a better index
    better = promote_release(promotion.Candidate(collection=g2), gate(env, tmp_path), settings=env)
    assert better.promoted, better.decision.reasons
    decision = better.decision
    assert decision.candidate["retrieval.hit@k"] > decision.production["retrieval.hit@k"]
    served = ask(env, QUESTIONS["rockets"])
    assert served["release"] == better.release_id and served["collection"] == g2
    assert served["sources"][0] == "file:///docs/rockets.md" and before["sources"][0] != served["sources"][0]
    with IndexClient(env.milvus_uri) as index:
        assert index.describe_alias("docs") == g2

    scrambled = dict(zip(PAGES, list(PAGES.values())[1:] + list(PAGES.values())[:1], strict=True))
    g3 = build_generation(env, scrambled)  # texts under the wrong pages: a worse index
    refused = promote_release(promotion.Candidate(collection=g3), gate(env, tmp_path), settings=env)
    assert not refused.promoted and refused.release_id is None
    assert any(r.startswith("REGRESSED: retrieval.hit@k") for r in refused.decision.reasons)
    store = S3Store(env)
    assert read_pointer(store).release_id == better.release_id  # type: ignore[union-attr]
    assert len(list_releases(store, include_unserved=True)) == 2  # a refusal writes nothing
    assert ask(env, QUESTIONS["rockets"]) == served

    forced = promote_release(promotion.Candidate(collection=g3), gate(env, tmp_path), force=True, settings=env)
    assert forced.promoted and forced.forced
    releases = list_releases(store)
    assert releases[-1].manifest.forced and releases[-1].manifest.parent == better.release_id

    rolled = promotion.rollback_production(env)
    assert rolled["release_id"] == better.release_id
    assert ask(env, QUESTIONS["rockets"]) == served  # the previous answers, word for word
    with IndexClient(env.milvus_uri) as index:
        assert index.describe_alias("docs") == g2

    again = promote_release(promotion.Candidate(collection=g2), gate(env, tmp_path), settings=env)
    assert again.unchanged and again.release_id == better.release_id  # idempotent re-run
    assert len(list_releases(store, include_unserved=True)) == 3


def test_restore_from_s3_into_fresh_milvus_reproduces_search(env: Settings, tmp_path: Path) -> None:
    from tasks.answer.retrieval import retrieve

    g1 = build_generation(env, PAGES)
    tiny = tmp_path / "ckpt"
    tiny.mkdir()
    (tiny / "config.json").write_text("{}")
    result = promote_release(promotion.Candidate(collection=g1, checkpoint=str(tiny)), gate(env, tmp_path),
                             settings=env)
    fresh = env.model_copy(update={"milvus": env.milvus.model_copy(update={"uri": str(tmp_path / "fresh.db")})})
    restored = promotion.restore_release(fresh, result.release_id)
    assert restored == {"release_id": result.release_id, "collection": g1, "rows": 6, "alias": "docs"}
    for question in QUESTIONS.values():
        # Hybrid is RRF over these two rankings; Milvus orders exactly equal scores arbitrarily (insertion
        # order), so a restored index can fuse two tied BM25 hits the other way round.
        for mode in ("dense", "bm25"):
            n = len(PAGES)  # all of them: a cut through equal scores would be arbitrary too
            a, b = retrieve(env, "docs", question, n, mode), retrieve(fresh, "docs", question, n, mode)
            assert _ranked(a.hits) == _ranked(b.hits), (question, mode)
            assert {h.id: (h.text, h.metadata) for h in a.hits} == {h.id: (h.text, h.metadata) for h in b.hits}


def _ranked(hits: list) -> list[tuple[float, frozenset[str]]]:
    """Scores in rank order, with the ids of equal scores as a set (RRF ties have no defined order)."""
    groups: list[tuple[float, frozenset[str]]] = []
    for h in hits:
        score = round(h.score, 5)
        if groups and groups[-1][0] == score:
            groups[-1] = (score, groups[-1][1] | {h.id})
        else:
            groups.append((score, frozenset({h.id})))
    return groups


def test_retention_keeps_the_last_n_and_drops_old_generations(env: Settings) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    env = env.model_copy(update={"release": env.release.model_copy(update={"keep_last": 1, "grace_minutes": 0})})
    generations, ids = [], []
    for _ in range(3):
        generations.append(build_generation(env, PAGES))
        ids.append(promote_release(promotion.Candidate(collection=generations[-1]), settings=env).release_id)
    store = S3Store(env)
    assert [i.manifest.release_id for i in list_releases(store, include_unserved=True)] == ids[1:]  # + parent
    assert not list(store.list(f"indexes/{generations[0]}/")) and list(store.list(f"indexes/{generations[1]}/"))
    with IndexClient(env.milvus_uri) as index:
        assert index.list_generations("docs") == generations[1:]
    with get_client(sync_client=True) as client:  # newest first: the harness holds other tests' gates too
        shown = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["release-gate"])),
                                      sort=ArtifactSort.CREATED_DESC, limit=3)
    assert len(shown) == 3 and all("## Release gate: PROMOTE" in str(a.data) for a in shown)


def test_model_gate_refuses_a_worse_checkpoint(env: Settings, tmp_path: Path, model_cache: Path) -> None:
    """Candidate and production models scored on the same eval split in the same run: a worse one is
    refused, on the first release (production: the base model, no index) as on later ones."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tasks.dataset.versions import encode_jsonl, file_entries, publish_version, version_id
    from tasks.runtime.sources import generator_source

    env = env.model_copy(update={"training": env.training.model_copy(update={"eval_examples": 2,
                                                                             "max_new_tokens": 4})})
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                         {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
             "group": f"g{i}", "kind": "curated", "n_tokens": 0, "reference": f"{i} plus {i} is {2 * i}."}
            for i in range(3)]
    files = {"train.jsonl": encode_jsonl(rows), "eval.jsonl": encode_jsonl(rows)}
    version = version_id(files)
    publish_version(env, "tiny", files, {"version": version, "files": file_entries(files), "gate": {"success": True}})
    tokenizer = AutoTokenizer.from_pretrained(generator_source(model_cache).path)
    torch.manual_seed(0)  # an untrained 2-layer model with SmolLM2's tokenizer: certainly worse
    worse = tmp_path / "untrained"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 max_position_embeddings=512)).save_pretrained(worse)
    tokenizer.save_pretrained(worse)
    store = S3Store(env)
    model_gate = gate(env, tmp_path).model_copy(update={"model_dataset": version})
    generation = build_generation(env, PAGES)

    refused_first = promote_release(promotion.Candidate(collection=generation, checkpoint=str(worse)), model_gate,
                                    settings=env)
    decision = refused_first.decision
    assert not refused_first.promoted and decision.production_release is None
    assert "gated against the base model and no index" in decision.reasons[0]
    assert decision.candidate["model.loss"] > decision.production["model.loss"] + 1
    assert any(r.startswith("REGRESSED: model.loss") for r in decision.reasons)
    assert decision.production["retrieval.hit@k"] == 0.0 < decision.candidate["retrieval.hit@k"]
    assert read_pointer(store) is None  # a refused first release writes nothing
    assert not [o for prefix in ("releases/", "checkpoints/", "indexes/") for o in store.list(prefix)]

    first = promote_release(promotion.Candidate(collection=generation), model_gate, settings=env)
    assert first.promoted  # production: this index and the base model
    gate_record = list_releases(store)[0].manifest.gate  # both sides recorded in the manifest
    assert gate_record.baseline == promotion.BASELINE and gate_record.production["retrieval.hit@k"] == 0.0
    assert gate_record.production["model.loss"] == gate_record.candidate["model.loss"]  # the base model, both sides

    refused = promote_release(promotion.Candidate(checkpoint=str(worse)),
                              promotion.GateConfig(model_dataset=version), settings=env)
    decision = refused.decision
    assert not refused.promoted and decision.production_release == first.release_id
    assert decision.candidate["model.loss"] > decision.production["model.loss"] + 1
    assert any(r.startswith("REGRESSED: model.loss") for r in decision.reasons)
    assert read_pointer(store).release_id == first.release_id  # type: ignore[union-attr]

    # production now serves a model; when its checkpoint cannot be loaded, the gate must not fall back
    # to the base model (a bar production never set): the run fails and production stays
    forced = promote_release(promotion.Candidate(checkpoint=str(worse)), promotion.GateConfig(), force=True,
                             settings=env)
    assert forced.promoted
    store.delete([o.key for o in store.list("checkpoints/")])
    shutil.rmtree(env.cache_dir / "releases", ignore_errors=True)
    forget()
    with pytest.raises(Exception, match="checkpoint (cannot|could not) be loaded"):
        promote_release(promotion.Candidate(checkpoint=str(worse)), promotion.GateConfig(model_dataset=version),
                        settings=env)
    assert read_pointer(store).release_id == forced.release_id  # type: ignore[union-attr]


@pytest.fixture
def engine_env(env: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``env`` as the CLI reads it (RAGTUNE_*), answering through an OpenAI-compatible engine."""
    from tasks.settings import get_settings

    for key, value in {"S3__PORT": str(env.s3.port), "S3__BUCKET": env.s3.bucket, "S3__PREFIX": env.s3.prefix,
                       "MILVUS__URI": env.milvus.uri, "MODELS__TORCH_THREADS": "1", "ENGINE__KIND": "openai",
                       "ENGINE__BASE_URL": "http://engine.invalid/v1", "ENGINE__MODEL": "base"}.items():
        monkeypatch.setenv(f"RAGTUNE_{key}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_cli_promotion_and_rollback_switch_the_served_model_with_the_index(engine_env: Settings,
                                                                           tmp_path: Path) -> None:
    """`ragtune promote --served-model`: what the OpenAI-compatible engine serves moves with the index and the
    checkpoint; a promotion naming only a new name keeps both; rollback brings the previous pair back."""
    from typer.testing import CliRunner

    from ragtune.cli import app

    def serving() -> tuple[str, str]:
        forget()
        found = resolve_serving(engine_env)
        return found.collection, found.engine_model

    nothing = CliRunner().invoke(app, ["promote"])
    assert nothing.exit_code == 1 and "--served-model: nothing to promote" in nothing.stderr
    g1, g2 = build_generation(engine_env, dict(list(PAGES.items())[:3])), build_generation(engine_env, PAGES)
    first = cli("promote", "--collection", g1, "--checkpoint", tiny_checkpoint(tmp_path / "a"),
                "--served-model", "docs-ft-a")
    assert first["promoted"] and serving() == (g1, "docs-ft-a")
    second = cli("promote", "--collection", g2, "--checkpoint", tiny_checkpoint(tmp_path / "b"),
                 "--served-model", "docs-ft-b")
    assert second["promoted"] and serving() == (g2, "docs-ft-b")
    renamed = cli("promote", "--served-model", "docs-ft-b2")  # the engine's new name for production's model
    assert renamed["promoted"] and serving() == (g2, "docs-ft-b2")
    rows = {r["release_id"]: r for r in cli("releases")["releases"]}
    assert [rows[r["release_id"]]["served_model"] for r in (first, second, renamed)] == \
        ["docs-ft-a", "docs-ft-b", "docs-ft-b2"]
    assert rows[renamed["release_id"]]["checkpoint"] == rows[second["release_id"]]["checkpoint"]
    assert cli("promote", "--served-model", "docs-ft-b2")["unchanged"]

    assert cli("rollback")["served_model"] == "docs-ft-b" and serving() == (g2, "docs-ft-b")
    assert cli("rollback", first["release_id"])["served_model"] == "docs-ft-a" and serving() == (g1, "docs-ft-a")


def cli(*args: str) -> dict:
    return cli_json(*args, "--json")


def tiny_checkpoint(root: Path) -> str:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "tag": root.name}))
    return str(root)
