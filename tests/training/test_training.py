"""Fine-tuning and model evaluation: packing and labels, resume, two CPU processes, checkpoints, base vs candidate.

Most runs use a tiny Llama (`tiny_model` in tests/conftest.py: 2 layers, 32 wide, SmolLM2's real tokenizer),
trained by the real
script under the real launcher: seconds per run. One LoRA run fine-tunes the real SmolLM2-135M.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tasks.training.config import parse_config
from tasks.training.data import IGNORE, PackedRow, collate, encode_example, epoch_order, pack_examples
from tasks.training.run import TrainingError, check_report, launch_command, launch_env, load_profile, stream
from tasks.training.scoring import (
    citation_valid,
    compare_models,
    documents,
    is_abstention,
    report_markdown,
    rouge_l,
    token_f1,
)

REPO = Path(__file__).resolve().parents[2]
THREADS = {"OMP_NUM_THREADS": "1"}


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(model_cache: Path) -> Path:
    from tasks.runtime.sources import generator_source

    return generator_source(model_cache).path


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


def rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Curated, grounded (numbered documents, cited answer) and abstention rows in the dataset format."""
    from tasks.dataset.grounding import training_messages

    out = []
    for i in range(offset, offset + n):
        a, b = i % 7 + 1, i % 5 + 2
        kind = ("curated", "grounded", "abstain")[i % 3]
        if kind == "curated":
            messages = [{"role": "user", "content": f"add {a} and {b}"}, {"role": "assistant", "content": f"{a + b}"}]
        else:
            answer = f"The sum is {a + b} [1]." if kind == "grounded" else "I don't know."
            doc = f"{a} plus {b} is {a + b}" if kind == "grounded" else "Unrelated text."
            messages = training_messages(f"What is {a} plus {b}?", [doc], answer)
        out.append({"id": f"r{i}", "messages": messages, "group": f"g{i % 4}", "kind": kind, "n_tokens": 0,
                    "reference": messages[-1]["content"]})
    return out


def write_dataset(path: Path, n_train: int = 24, n_eval: int = 6, gate: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n_train)))
    (path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n_eval, offset=1000)))
    (path / "manifest.json").write_text(json.dumps({"version": path.name, "gate": {"success": gate}}))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("datasets") / "v-test")


FULL = ("--method", "full", "--lr", "1e-3", "--max-steps", "6", "--epochs", "5")


@pytest.fixture(scope="module")
def full_run(dataset: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted full fine-tuning run: the reference the interrupted runs must reach."""
    return last_event(train(dataset, tmp_path_factory.mktemp("whole") / "run", tiny_model, *FULL))


def train(data: Path, out: Path, model: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The training script as one process (no launcher), test preset."""
    cmd = [sys.executable, "-m", "tasks.training.train", "--data-dir", str(data), "--output-dir", str(out),
           "--base-model", str(model), "--preset", "test", "--max-seq-len", "256", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **THREADS}, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def last_event(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"event"')][-1])


# -- data: labels, packing, order ----------------------------------------------------------------------
def test_labels_cover_only_the_answer_and_its_end_of_turn(tokenizer: Any) -> None:
    messages = rows(1)[0]["messages"]
    ex = encode_example(tokenizer, messages)
    labelled = [t for t in ex.labels if t != IGNORE]
    assert tokenizer.decode(labelled) == messages[-1]["content"] + tokenizer.eos_token
    prompt_len = ex.labels.index(labelled[0])
    assert tokenizer.decode(ex.input_ids[:prompt_len]).endswith("<|im_start|>assistant\n")


def test_packing_keeps_every_example_within_max_len_and_is_deterministic(tokenizer: Any) -> None:
    examples = [encode_example(tokenizer, r["messages"]) for r in rows(30)]
    packed = pack_examples(examples, 256)
    assert all(len(r.input_ids) <= 256 for r in packed)
    assert sum(len(r.input_ids) for r in packed) == sum(len(e) for e in examples)
    assert len(packed) < len(examples)  # short examples share rows
    assert sum(r.position_ids.count(0) for r in packed) == len(examples)  # one restart per example
    assert [r.input_ids for r in pack_examples(examples, 256)] == [r.input_ids for r in packed]
    assert len(pack_examples(examples, 256, packing=False)) == len(examples)


@pytest.mark.parametrize("attention", ["sdpa", "packed_sdpa"])
def test_packed_loss_equals_the_sum_of_separate_losses(tokenizer: Any, tiny_model: Path, attention: str) -> None:
    """No attention crosses example boundaries and no label spans two examples (masked sdpa and per-example)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.training import attention as packed_attention
    from tasks.training.loss import AssistantTokenLoss

    packed_attention.register()
    loss = AssistantTokenLoss(AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention))
    examples = [encode_example(tokenizer, r["messages"]) for r in rows(3)]
    reference = AssistantTokenLoss(AutoModelForCausalLM.from_pretrained(tiny_model))
    with torch.no_grad():
        packed_sum, packed_n = loss(**collate(pack_examples(examples, 512), 2))
        separate = [reference(**collate([_row(e)], 2)) for e in examples]
    assert int(packed_n) == sum(int(n) for _, n in separate)
    assert float(packed_sum) == pytest.approx(sum(float(s) for s, _ in separate), rel=1e-4)


def _row(example: Any) -> PackedRow:
    row = PackedRow()
    row.add(example)
    return row


def test_epoch_order_is_a_seeded_permutation_per_epoch() -> None:
    order = epoch_order(10, 2.5, seed=3)
    assert len(order) == 25 and sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert order == epoch_order(10, 2.5, seed=3) and order != epoch_order(10, 2.5, seed=4)


def test_config_precedence_and_validation(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config(["--data-dir", "d", "--output-dir", "o", "--preset", "demo", "--max-steps", "7",
                        "--no-packing"])
    assert cfg.max_steps == 7 and cfg.method == "lora" and cfg.max_seq_len == 1024 and cfg.packing is False
    lr, w = cfg.lr_lambda(100), cfg.warmup_steps
    assert lr(0) < lr(w - 1) < lr(w) == pytest.approx(1.0) and lr(100) == pytest.approx(cfg.min_lr_ratio)
    assert lr(50) < lr(w) and lr(99) > lr(100) - 1e-9  # cosine decay to the floor
    with pytest.raises(SystemExit):
        parse_config(["--data-dir", "d", "--output-dir", "o", "--method", "qlora"])
    assert "--method: invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--data-dir and --output-dir are required"):
        parse_config([])
    assert parse_config(["--data-dir", "d", "--output-dir", "o", "--base-model", "m"]).required_base_model() == "m"
    with pytest.raises(SystemExit, match="--base-model is required"):
        cfg.required_base_model()


def test_bf16_auto_is_decided_once_by_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.runtime import cpu as cpu_runtime
    from tasks.training.run import resolve_bf16

    cpu, gpu = load_profile("cpu-2proc"), load_profile("single-gpu")
    assert resolve_bf16("yes", cpu, 1) == "yes" and resolve_bf16("no", cpu, 1) == "no"
    assert resolve_bf16("auto", gpu, 1) == "auto"  # each GPU rank asks CUDA, which cannot disagree
    decided = resolve_bf16("auto", cpu, 1)
    assert decided in ("yes", "no") and decided == ("yes" if cpu_runtime.cpu_bf16_pays(1) else "no")
    cpu_runtime.cpu_bf16_pays.cache_clear()
    monkeypatch.setattr(cpu_runtime, "cpu_has_bf16", lambda: False)
    assert resolve_bf16("auto", cpu, 1) == "no"  # no instructions: nothing to measure
    cpu_runtime.cpu_bf16_pays.cache_clear()


# what a lent GPU machine lacks: importing any of these in a training process fails
WITHOUT_PREFECT_OR_SETTINGS = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {'prefect', 'pydantic', 'pydantic_settings', 'ragtune'}:\n"
    "            raise ImportError('blocked: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def test_training_and_its_benches_import_without_prefect_or_settings() -> None:
    """A lent GPU machine holds torch, transformers, accelerate, peft and PyYAML only: the training script,
    its launcher and the training benches must not pull in Prefect, pydantic(-settings) or ragtune."""
    blocker = WITHOUT_PREFECT_OR_SETTINGS + (
        "import tasks.training.train, tasks.training.launch, bench.train, bench.train_check\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    from tasks.training import launch
    from tasks.training import run as finetune

    assert finetune.stream is launch.stream and finetune.TrainingError is launch.TrainingError


def test_the_script_without_a_base_model_says_so_and_reads_no_settings() -> None:
    """Only the launcher reads settings (it passes --base-model): run alone without one, the script fails
    with what it needs instead of building settings from the environment."""
    script = WITHOUT_PREFECT_OR_SETTINGS + (
        "import runpy\n"
        "sys.argv = ['train', '--data-dir', 'data', '--output-dir', 'run']\n"
        "runpy.run_module('tasks.training.train', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--base-model is required" in proc.stderr, proc.stderr[-2000:]
    assert "blocked" not in proc.stderr


# -- evaluation metrics --------------------------------------------------------------------------------
def test_text_metrics() -> None:
    assert token_f1("The sum is 7 [1].", "the sum is 7") == 1.0
    assert token_f1("seven", "7") == 0.0
    assert rouge_l("a b c d", "a c d") == pytest.approx(2 * 2 / 5)  # articles dropped: LCS of (b c d, c d) is 2
    assert is_abstention("I don’t know.") and not is_abstention("It is 7 [1].")


def test_citation_validity_needs_an_existing_document_holding_the_answer() -> None:
    grounded = rows(2)[1]["messages"]
    docs = documents(grounded)
    assert list(docs) == [1]
    assert citation_valid("The sum is 5 [1].", docs) is True  # the document says "2 plus 3 is 5"
    assert citation_valid("The sum is 5 [2].", docs) is False  # no document 2
    assert citation_valid("Paris is large [1].", docs) is False  # document 1 does not say so
    assert citation_valid("The sum is 5.", docs) is None


# -- training runs -------------------------------------------------------------------------------------
def test_run_writes_a_self_describing_checkpoint(full_run: dict[str, Any]) -> None:
    model = Path(full_run["model_dir"])
    training = json.loads((model / "training.json").read_text())
    metrics = json.loads((model / "metrics.json").read_text())
    assert training["dataset"]["version"] == "v-test" and training["config"]["method"] == "full"
    assert len(training["git"]["revision"]) == 40 or training["git"]["revision"] == "unknown"
    assert metrics["best_eval_loss"] < metrics["base_eval_loss"]  # it learnt something
    assert metrics["best_step"] == full_run["best_step"] and [e["step"] for e in metrics["evals"]] == [0, 2, 4, 6]
    # the loss curve has a point per optimizer step (the PNG artifact plots it next to the eval loss)
    assert [e["step"] for e in metrics["train_losses"]] == [1, 2, 3, 4, 5, 6]
    assert all(0 < e["loss"] < 20 for e in metrics["train_losses"])
    assert {p.name for p in model.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(model).config.model_type == "llama"


def test_stop_and_resume_matches_an_uninterrupted_run(dataset: Path, tiny_model: Path, tmp_path: Path,
                                                      full_run: dict[str, Any]) -> None:
    assert last_event(train(dataset, tmp_path / "cut", tiny_model, *FULL, "--stop-after", "2"))["event"] == "stopped"
    assert not (tmp_path / "cut" / "model").exists()
    refused = train(dataset, tmp_path / "cut", tiny_model, *FULL, check=False)  # no --resume: never overwrite
    assert refused.returncode != 0 and "pass --resume" in refused.stderr
    resumed = last_event(train(dataset, tmp_path / "cut", tiny_model, *FULL, "--resume"))
    assert resumed["best_eval_loss"] == pytest.approx(full_run["best_eval_loss"], rel=1e-5)
    assert resumed["param_digests"] == full_run["param_digests"]  # same seed, same data position: same weights
    curve = [json.loads((Path(r["model_dir"]) / "metrics.json").read_text())["train_losses"]
             for r in (resumed, full_run)]
    assert [e["step"] for e in curve[0]] == [e["step"] for e in curve[1]]  # the curve survives the restart
    assert [e["loss"] for e in curve[0]] == pytest.approx([e["loss"] for e in curve[1]], rel=1e-5)


def test_early_stopping_keeps_the_best_checkpoint(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    """A diverging run (absurd learning rate) stops at the patience limit; its output is the best: the base."""
    from safetensors.torch import load_file

    result = last_event(train(dataset, tmp_path / "run", tiny_model, "--method", "full", "--lr", "3",
                              "--max-steps", "12", "--epochs", "10", "--patience", "1"))
    assert result["stopped_early"] and result["best_step"] == 0 and result["step"] == 2
    base, out = load_file(str(tiny_model / "model.safetensors")), load_file(result["model_dir"] + "/model.safetensors")
    assert all(out[k].equal(base[k]) for k in base)


def test_a_training_time_budget_ends_the_run_evaluated_and_saved(dataset: Path, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    result = last_event(train(dataset, tmp_path / "run", tiny_model, *FULL, "--max-minutes", "0.00001"))
    metrics = json.loads((Path(result["model_dir"]) / "metrics.json").read_text())
    assert result["out_of_time"] and not result["stopped_early"] and result["step"] == 1
    assert [e["step"] for e in metrics["evals"]] == [0, 1] and (tmp_path / "run" / "state" / "step-000001").is_dir()
    assert last_event(train(dataset, tmp_path / "whole", tiny_model, *FULL))["out_of_time"] is False


@pytest.mark.integration
def test_sigkill_then_resume_reaches_the_uninterrupted_result(dataset: Path, tiny_model: Path, tmp_path: Path,
                                                             full_run: dict[str, Any]) -> None:
    cmd = [sys.executable, "-m", "tasks.training.train", "--data-dir", str(dataset), "--output-dir",
           str(tmp_path / "killed"), "--base-model", str(tiny_model), "--preset", "test", "--max-seq-len", "256", *FULL]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **THREADS}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "killed" / "state" / "step-000002"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (tmp_path / "killed" / "model").exists(), "the kill must land mid-run"
    resumed = last_event(train(dataset, tmp_path / "killed", tiny_model, *FULL, "--resume"))
    assert resumed["param_digests"] == full_run["param_digests"]
    assert resumed["best_eval_loss"] == pytest.approx(full_run["best_eval_loss"], rel=1e-5)


@pytest.mark.integration
def test_two_cpu_processes_train_together(dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    """accelerate launch with the cpu-2proc profile: world size 2 reported, identical parameters on both ranks."""
    profile = load_profile("cpu-2proc")
    out = tmp_path / "run"
    args = ["--data-dir", str(dataset), "--output-dir", str(out), "--base-model", str(tiny_model), "--preset",
            "test", "--max-seq-len", "256", "--method", "full", "--lr", "1e-3", "--expect-world-size", "2"]
    events: list[dict[str, Any]] = []
    result = stream(launch_command(profile, args), launch_env(profile, threads=1), events.append)
    check_report(result, profile)
    ranks = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"]
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2 and start["backend"] == "gloo"
    with pytest.raises(TrainingError, match="world size"):
        check_report(result, load_profile("cpu-1proc"))


def test_malformed_dataset_fails_the_launch_with_file_and_line(tiny_model: Path, tmp_path: Path) -> None:
    bad = write_dataset(tmp_path / "bad")
    with (bad / "train.jsonl").open("a") as f:
        f.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    profile = load_profile("cpu-1proc")
    args = ["--data-dir", str(bad), "--output-dir", str(tmp_path / "run"), "--base-model", str(tiny_model)]
    with pytest.raises(TrainingError, match=r"(?s)exited with code 1.*train.jsonl:25: 'messages' must be"):
        stream(launch_command(profile, args), launch_env(profile, threads=1), lambda e: None)
    assert not (tmp_path / "run" / "model").exists()
    with pytest.raises(ValueError, match="cpu-2proc"):
        load_profile("tpu-pod")


def test_lora_on_smollm2_gives_a_merged_checkpoint_the_answering_path_loads(dataset: Path, smollm2: Path,
                                                                           tmp_path: Path) -> None:
    from tasks.answer.generation import generate_answer, load_generator
    from tasks.answer.prompting import build_prompt

    result = last_event(train(dataset, tmp_path / "run", smollm2, "--method", "lora", "--max-steps", "2",
                              "--max-seq-len", "160", "--batch-rows", "1", "--grad-accum", "1"))
    model = Path(result["model_dir"])
    assert not (model / "adapter_config.json").exists()  # merged: a plain model directory
    gen = load_generator(str(model), "candidate")
    assert not any("lora" in n for n, _ in gen.model.named_parameters())
    prompt = build_prompt(gen.tokenizer, "What is 2 plus 3?", [], budget_tokens=256)
    assert isinstance(generate_answer(gen, prompt, max_new_tokens=4), str)


def test_eval_reports_base_and_candidate_on_the_same_prompts(dataset: Path, tiny_model: Path,
                                                             full_run: dict[str, Any]) -> None:
    report = compare_models(tiny_model, Path(full_run["model_dir"]), dataset / "eval.jsonl", limit=3, max_new_tokens=4)
    assert report["generated"] == 3 and report["eval_examples"] == 6
    assert report["candidate"]["loss"] < report["base"]["loss"]
    assert {"token_f1", "rouge_l", "abstention_accuracy", "perplexity"} <= set(report["base"])
    assert {e["kind"] for e in report["examples"]} == {"curated", "grounded", "abstain"}  # stratified sample
    text = report_markdown(report)
    assert "| loss |" in text and "**Candidate:**" in text


def test_a_model_scored_on_the_same_rows_is_not_scored_twice_in_one_process(
        dataset: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's evaluate stage and its promotion gate score the same models: the second time is free."""
    import shutil

    from tasks.training import scoring as model_eval
    from tasks.training.data import read_jsonl

    model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    rows = read_jsonl(dataset / "eval.jsonl")
    first = model_eval.score_model(model, rows, rows[:2], 4)
    loads: list[Path] = []
    real_load = model_eval.load_model
    monkeypatch.setattr(model_eval, "load_model", lambda path: loads.append(path) or real_load(path))
    assert model_eval.score_model(model, rows, rows[:2], 4) == first and loads == []
    model_eval.score_model(model, rows, rows[:3], 4)  # other rows: scored
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # new weights file (mtime): scored again
    model_eval.score_model(model, rows, rows[:2], 4)
    assert len(loads) == 2


def test_models_are_scored_on_the_torch_thread(dataset: Path, tiny_model: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside another thread's OpenMP pool (the pipeline's query encoding), generation runs slower
    (docs/training.md, "Measurements behind the code")."""
    import shutil
    import threading

    from tasks.training import scoring as model_eval
    from tasks.training.data import read_jsonl

    threads: list[str] = []
    real = model_eval.generate
    monkeypatch.setattr(model_eval, "generate",
                        lambda *a, **k: threads.append(threading.current_thread().name) or real(*a, **k))
    model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    rows = read_jsonl(dataset / "eval.jsonl")
    scores, answers = model_eval.score_model(model, rows, rows[:2], 4)
    assert len(answers) == 2 and "loss" in scores
    assert len(threads) == 1 and threads[0].startswith("ragtune-torch")


# -- the flow and the CLI ------------------------------------------------------------------------------
def cache_version(settings: Any, source: Path, gate: bool) -> str:
    """A dataset version in the local cache, as tasks.dataset.versions writes it (sha256-checked on load)."""
    from tasks.dataset.versions import file_entries, version_id, write_local

    files = {n: (source / n).read_bytes() for n in ("train.jsonl", "eval.jsonl")}
    version = version_id(files) if gate else "f" * 64
    manifest = {"version": version, "files": file_entries(files), "gate": {"success": gate}}
    write_local(settings, version, {**files, "manifest.json": json.dumps(manifest).encode()})
    return version


@pytest.fixture
def flow_settings(settings: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from tasks.settings import get_settings

    monkeypatch.setenv("RAGTUNE_MODELS__GENERATOR", str(tiny_model))
    monkeypatch.setenv("RAGTUNE_MODELS__TORCH_THREADS", "1")
    monkeypatch.setenv("RAGTUNE_TRAINING__EVAL_EXAMPLES", "2")
    monkeypatch.setenv("RAGTUNE_TRAINING__MAX_NEW_TOKENS", "4")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.mark.flow
def test_flow_refuses_a_failed_gate_and_trains_an_accepted_version(flow_settings: Any, dataset: Path,
                                                                  prefect_harness: None) -> None:
    from flows.finetune import finetune_model
    from tasks.dataset.versions import DatasetError

    refused = cache_version(flow_settings, dataset, gate=False)
    with pytest.raises(DatasetError, match="did not pass its gate"):
        finetune_model(refused, preset="test", method="full")
    assert not (flow_settings.data_dir / "runs").exists()
    accepted = cache_version(flow_settings, dataset, gate=True)
    summary = finetune_model(accepted, profile="cpu-1proc", preset="test", method="full",
                             overrides={"max_steps": 2, "max_seq_len": 256, "lr": 1e-3})
    assert summary.world_size == 1 and summary.step == 2 and Path(str(summary.model_dir)).is_dir()
    assert summary.eval is not None and summary.eval.candidate["loss"] < summary.eval.base["loss"]


def test_cli_eval_model_prints_base_and_candidate(settings: Any, dataset: Path, full_run: dict[str, Any],
                                                  tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ragtune.cli import app
    from tasks.settings import get_settings

    version = cache_version(settings, dataset, gate=True)
    get_settings.cache_clear()
    report = settings.data_dir / "eval.md"
    out = CliRunner().invoke(app, ["eval", "model", str(Path(full_run["model_dir"]).parent), "--dataset", version,
                                   "--base", str(tiny_model), "--limit", "2", "--report", str(report), "--json"])
    get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["generated"] == 2 and result["candidate"]["loss"] < result["base"]["loss"]
    assert "| perplexity |" in report.read_text()
    missing = CliRunner().invoke(app, ["eval", "model", str(settings.data_dir), "--dataset", version])
    assert missing.exit_code == 1 and "not a model directory" in missing.output
