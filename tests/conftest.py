"""Shared fixtures: real services on free loopback ports, a private data dir, the Prefect harness.

Tiers (markers): unit (default), `flow` (Prefect harness + embedded backends + real small models),
`integration` (Milvus server, Prefect server, multi-process training), `data` (needs ../shared/data;
skipped unless RAGTUNE_SHARED_DATA points at it), `ui` (the Prefect UI in headless Chromium; skipped unless
RAGTUNE_TEST_CHROMIUM names the browser: `make test-ui`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from ragtune import stack  # noqa: E402
from tasks.settings import S3Settings, Settings, get_settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache shared by the whole session (the converted generator lives here): the repo's .data cache."""
    path = REPO / ".data" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def settings(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a private data dir (Milvus Lite file, stack state) and the shared model cache."""
    data = tmp_path / "data"
    (data / "cache").mkdir(parents=True)
    (data / "cache" / "models").symlink_to(_models_dir(model_cache), target_is_directory=True)
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(data))
    # Serving reads the release pointer from S3: never a developer's stack on the default port.
    monkeypatch.setenv("RAGTUNE_S3__BUCKET", "ragtune-tests-isolated")
    return Settings(data_dir=data)


def _models_dir(cache: Path) -> Path:
    models = cache / "models"
    models.mkdir(parents=True, exist_ok=True)
    return models


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Settings]:
    """A real SeaweedFS S3 on a free port for the whole session; yields its S3 settings."""
    home = tmp_path_factory.mktemp("seaweedfs")
    s3 = S3Settings(port=_free_port_block(11), bucket="ragtune-test")
    service = stack.seaweedfs(Settings(data_dir=home, s3=s3), home=home)
    stack.start(service)
    yield s3
    stack.stop(service)


@pytest.fixture
def s3_settings(settings: Settings, seaweedfs: S3Settings) -> Settings:
    """`settings` pointing at the session's SeaweedFS, with a bucket private to this test."""
    import uuid

    return settings.model_copy(update={"s3": seaweedfs.model_copy(update={"prefix": f"t-{uuid.uuid4().hex[:10]}"})})


_MILVUS_HOMES: dict[str, Path] = {}


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus 2.3 standalone (one per machine: its metrics port is fixed); yields its URI."""
    wait_for_metrics_port()  # a server stopped by the test before still holds it for a moment
    if stack.port_open(9091):
        pytest.skip("port 9091 is taken: another Milvus server runs on this machine")
    home = tmp_path_factory.mktemp("milvus")
    port = _free_port_block(11)
    settings = Settings(data_dir=home)
    settings.milvus.server_port = port
    service = stack.milvus_server(settings, home=home)
    _seed_milvus_binaries(home / "milvus" / "bin")
    wait_for_metrics_port()
    stack.start(service)
    _keep_milvus_binaries(home / "milvus" / "bin")
    uri = f"http://127.0.0.1:{port}"
    _MILVUS_HOMES[uri] = home
    yield uri
    stack.stop(service)


def wait_for_metrics_port(timeout_s: float = 120.0) -> None:
    """Wait until 9091 can be bound. A stopped Milvus leaves it in TIME_WAIT for about a minute, and
    milvus-server, finding it unbindable, silently serves metrics and /healthz on 9092 instead, so the
    health check on 9091 never passes ("milvus not healthy after 180s")."""
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", 9091))
                return
            except OSError:
                time.sleep(1)


def _milvus_bin_cache() -> Path:
    from milvus import __version__

    return REPO / ".data" / "cache" / f"milvus-server-bin-{__version__}"


def _seed_milvus_binaries(bin_dir: Path) -> None:
    """milvus-server unpacks ~400 MB of LZMA into every fresh data dir (minutes on a small CPU; it skips
    files whose .lzma.md5 matches): copy a previous unpacking of the same version instead (seconds)."""
    import shutil

    if _milvus_bin_cache().is_dir() and not bin_dir.exists():
        shutil.copytree(_milvus_bin_cache(), bin_dir)


def _keep_milvus_binaries(bin_dir: Path) -> None:
    import shutil
    import uuid

    cache = _milvus_bin_cache()
    if not cache.exists() and bin_dir.is_dir():
        partial = cache.with_name(f"{cache.name}.{uuid.uuid4().hex[:8]}")
        shutil.copytree(bin_dir, partial)
        try:
            partial.rename(cache)  # atomic: a concurrent session either wins or keeps its own unpacking
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)


@pytest.fixture
def milvus_import_dir(milvus_server: str) -> Path:
    """The folder the Milvus server reads bulk-import files from: its localStorage.path (`milvus-server
    --data HOME` keeps its storage under HOME/data)."""
    return _MILVUS_HOMES[milvus_server] / "milvus" / "data"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness: a temporary database and API for flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@contextmanager
def prefect_server(home: Path, model_cache: Path, env: dict[str, str] | None = None) -> Iterator[Settings]:
    """A real `prefect server start` (SQLite under ``home``) on a free loopback port. While it runs, the
    environment (RAGTUNE_*, PREFECT_API_URL, plus ``env``) points this process's settings and the workers it starts
    at it, and so do Prefect's own settings: the session's test harness would otherwise win over the environment
    for flows run here. Yields the settings read from that environment (data under ``home``/data)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (home / "data" / "cache").mkdir(parents=True)
    (home / "data" / "cache" / "models").symlink_to(_models_dir(model_cache), target_is_directory=True)
    port = stack.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"RAGTUNE_DATA_DIR": str(home / "data"), "RAGTUNE_PREFECT__PORT": str(port),
           "RAGTUNE_PREFECT__API_URL": api, "PREFECT_API_URL": api, "RAGTUNE_MODELS__TORCH_THREADS": "1", **(env or {})}
    with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: api}):
        for name, value in env.items():
            mp.setenv(name, value)
        get_settings.cache_clear()
        settings = get_settings()
        service = stack.prefect_server(settings, home=home / "stack")
        stack.start(service)
        try:
            yield settings
        finally:
            stack.stop(service)
            get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A 2-layer, 32-wide Llama with random weights and SmolLM2's real tokenizer: the real architecture, seconds
    to train. One per session: its users only read it (training writes to folders of their own)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tasks.runtime.sources import generator_source

    tokenizer = AutoTokenizer.from_pretrained(generator_source(model_cache).path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, max_position_embeddings=512)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _free_port_block(width: int) -> int:
    """A base port whose derived ports (base + 7*i, i < width) are all free."""
    for _ in range(50):
        base = stack.free_port()
        if base + 7 * width < 65535 and not any(stack.port_open(base + 7 * i) for i in range(width)):
            return base
    raise RuntimeError("no free port block found")


def cli_json(*args: str) -> dict:
    """Run ``ragtune ARGS`` in process; it must succeed, and its last stdout line is the JSON result."""
    from typer.testing import CliRunner

    from ragtune.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def shared_data() -> Path | None:
    """../shared/data when the opt-in data tier is enabled (RAGTUNE_SHARED_DATA=path)."""
    value = os.environ.get("RAGTUNE_SHARED_DATA")
    return Path(value) if value and Path(value).is_dir() else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a Milvus server of their own run first: every Milvus 2.3 server binds port 9091, and
    the session's shared one (``milvus_server``) holds it from its first user until the session ends."""
    own_server = [item for item in items if item.path.name == "test_bulk_import.py"]
    items[:] = own_server + [item for item in items if item not in own_server]
