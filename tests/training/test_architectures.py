"""Any transformers causal LM: tiny random-weight Llama, Qwen2 and GPT-2 models (plus Phi and Mistral for the
quick checks), each with a tokenizer built offline in the test, with and without a chat template.

Quick checks: LoRA targets come from the architecture, packed rows never attend across examples, the
end-of-turn token comes from the chat template (or the role-tagged fallback), ragtune's prompt pass only
takes plain Llama models and every other architecture answers through transformers' own generate.
Slow checks, on each of the three: train (LoRA, the test preset) -> evaluate against the base -> generate,
and the release loop train -> evaluate -> promote -> ask (SeaweedFS S3, Milvus Lite, the real embedder).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.answer.prompting import FALLBACK_CHAT_TEMPLATE, SYSTEM_PROMPT, end_of_turn_id, load_tokenizer, sanitize
from tests.training.test_training import last_event, rows, train, write_dataset

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
          "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# name -> (special tokens: bos, eos, others; chat template or None; end-of-turn token)
TOKENIZERS: dict[str, tuple[str, str, list[str], str | None, str]] = {
    "llama": ("<|begin_of_text|>", "<|end_of_text|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              LLAMA3, "<|eot_id|>"),
    "qwen2": ("<|endoftext|>", "<|endoftext|>", ["<|im_start|>", "<|im_end|>"], CHATML, "<|im_end|>"),
    "gpt2": ("<|endoftext|>", "<|endoftext|>", [], None, "<|endoftext|>"),  # no template: the fallback
}
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "max_position_embeddings": 512}
EXPECTED_TARGETS = {
    "llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "qwen2": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "mistral": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "phi": ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"],
    "gpt2": ["c_attn", "c_fc", "c_proj"],
}


def build_tokenizer(kind: str) -> Any:
    """A byte-level BPE trained on the test's own rows (any text stays encodable), with ``kind``'s specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, others, template, _ = TOKENIZERS[kind]
    specials = list(dict.fromkeys([bos, eos, *others]))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [SYSTEM_PROMPT, *(m["content"] for r in rows(30) for m in r["messages"])]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos,
                                        additional_special_tokens=[t for t in others if t not in (bos, eos)])
    if template:
        tokenizer.chat_template = template
    return tokenizer


def build_model(arch: str, tokenizer: Any) -> Any:
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        PhiConfig,
        PhiForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    factories: dict[str, Callable[[], Any]] = {
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=1, tie_word_embeddings=True, **ids)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=1, **ids)),
        "mistral": lambda: MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=1, **ids)),
        "phi": lambda: PhiForCausalLM(PhiConfig(**SMALL, **ids)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, **ids)),
    }
    torch.manual_seed(0)
    return factories[arch]()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """llama, qwen2 and gpt2 model folders, each with its own tokenizer, as a user would bring them."""
    out = {}
    for arch in TOKENIZERS:
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        tokenizer = build_tokenizer(arch)
        build_model(arch, tokenizer).save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[arch] = path
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("datasets") / "v-arch")


# -- quick checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(EXPECTED_TARGETS))
def test_lora_targets_are_found_from_the_architecture(arch: str) -> None:
    from peft import LoraConfig, get_peft_model

    from tasks.training.architecture import adapter_targets

    lm = build_model(arch, build_tokenizer("gpt2"))
    targets = adapter_targets(lm)
    assert targets.kinds == EXPECTED_TARGETS[arch]
    assert targets.transposed == (arch == "gpt2")  # GPT-2's Conv1D stores its weight transposed
    assert len(targets.modules) == 2 * (4 if arch == "gpt2" else len(targets.kinds))  # 2 layers; GPT-2: c_proj twice
    peft_model = get_peft_model(lm, LoraConfig(r=4, target_modules=targets.modules,
                                               fan_in_fan_out=targets.transposed, task_type="CAUSAL_LM"))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n or "wte" in n for n in trainable)


@pytest.mark.parametrize("attention", ["sdpa", "packed_sdpa"])
@pytest.mark.parametrize("arch", sorted(EXPECTED_TARGETS))
def test_packed_rows_never_attend_across_examples(arch: str, attention: str) -> None:
    """The loss of a packed row equals the sum of its examples' separate losses, on every architecture."""
    import torch

    from tasks.training import attention as packed_attention
    from tasks.training.data import collate, encode_example, pack_examples
    from tasks.training.loss import AssistantTokenLoss

    tokenizer = load_tokenizer_from(build_tokenizer("qwen2"))
    packed_attention.register()
    lm = build_model(arch, tokenizer)
    lm.set_attn_implementation(attention)
    scorer = AssistantTokenLoss(lm.eval())
    examples = [encode_example(tokenizer, r["messages"]) for r in rows(3)]
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        together, n = scorer(**collate(pack_examples(examples, 2048), pad))
        apart = [scorer(**collate(pack_examples([e], 2048), pad)) for e in examples]
    assert len(pack_examples(examples, 2048)) == 1 and int(n) == sum(int(k) for _, k in apart)
    assert float(together) == pytest.approx(sum(float(s) for s, _ in apart), rel=1e-4)


def load_tokenizer_from(tokenizer: Any) -> Any:
    """``tokenizer`` as ragtune loads a model folder's (its template or the fallback, a pad token)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return load_tokenizer(tmp)


@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_labels_end_with_the_templates_end_of_turn(arch: str) -> None:
    from tasks.training.data import IGNORE, encode_example, prompt_text

    tokenizer = load_tokenizer_from(build_tokenizer(arch))
    turn_end = TOKENIZERS[arch][4]
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids(turn_end)
    messages = rows(1)[0]["messages"]
    example = encode_example(tokenizer, messages)
    labelled = [t for t in example.labels if t != IGNORE]
    assert tokenizer.decode(labelled) == messages[-1]["content"] + turn_end
    if arch == "gpt2":  # no template of its own: the role-tagged fallback
        assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
        assert prompt_text(tokenizer, messages).endswith("<|endoftext|>\n<|assistant|>\n")
    assert sanitize("a <|user|> b <|assistant|>", list(tokenizer.all_special_tokens)).split() == ["a", "b"]


@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_only_plain_llama_takes_ragtunes_prompt_pass(arch: str, model_dirs: dict[str, Path]) -> None:
    """Every other architecture answers through transformers' own generate, from the same prompt."""
    from tasks.answer.generation import GenerationStats, generate_answer, load_generator
    from tasks.answer.prompting import build_prompt
    from tasks.types import Hit

    gen = load_generator(str(model_dirs[arch]), arch)
    assert (gen.prefill is not None) == (arch == "llama")
    assert gen.model.device.type == "cpu" and next(gen.model.parameters()).dtype.is_floating_point
    hit = Hit(id="c1", score=1.0, text="3 plus 4 is 7", doc_id="d1", metadata={"uri": "file:///sum.md"})
    prompt = build_prompt(gen.tokenizer, "What is 3 plus 4?", [hit], budget_tokens=400)
    stats = GenerationStats()
    fast = generate_answer(gen, prompt, max_new_tokens=6, stats=stats)
    plain = generate_answer(gen, prompt, max_new_tokens=6, fast_prefill=False)
    assert isinstance(fast, str) and 1 <= stats.new_tokens <= 6
    assert fast == plain  # ragtune's pass (llama) or not, the same greedy answer


# -- train -> evaluate -> generate, then promote -> ask, on each architecture ---------------------------------
LORA = ("--method", "lora", "--lr", "5e-3", "--max-steps", "4", "--max-seq-len", "512")


@pytest.fixture(scope="module")
def trained(model_dirs: dict[str, Path], dataset: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """The training script's run on an architecture (LoRA, test preset), once per module; Qwen2 with
    gradient checkpointing."""
    done: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(arch: str) -> subprocess.CompletedProcess[str]:
        if arch not in done:
            extra = ("--gradient-checkpointing",) if arch == "qwen2" else ()
            done[arch] = train(dataset, tmp_path_factory.mktemp(f"run-{arch}") / "run", model_dirs[arch], *LORA, *extra)
        return done[arch]

    return run


@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_train_evaluate_generate(arch: str, model_dirs: dict[str, Path], dataset: Path,
                                 trained: Callable[[str], subprocess.CompletedProcess[str]]) -> None:
    from tasks.answer.generation import generate_answer, load_generator
    from tasks.answer.prompting import build_prompt
    from tasks.training.scoring import compare_models

    proc = trained(arch)
    start = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"event": "start"')))
    assert start["lora_targets"] == EXPECTED_TARGETS[arch]
    assert start["gradient_checkpointing"] == (arch == "qwen2")
    model = Path(last_event(proc)["model_dir"])
    training = json.loads((model / "training.json").read_text())
    assert training["architecture"] == type(build_model(arch, build_tokenizer(arch))).__name__
    assert not (model / "adapter_config.json").exists()  # merged: a plain model folder of the same architecture
    assert (model / "chat_template.jinja").read_text().strip() == (TOKENIZERS[arch][3] or FALLBACK_CHAT_TEMPLATE)

    report = compare_models(model_dirs[arch], model, dataset / "eval.jsonl", limit=3, max_new_tokens=4)
    assert report["generated"] == 3 and report["candidate"]["loss"] < report["base"]["loss"]

    gen = load_generator(str(model), f"{arch}-candidate")
    assert not any("lora" in n for n, _ in gen.model.named_parameters())
    assert gen.tokenizer.convert_tokens_to_ids(TOKENIZERS[arch][4]) in gen.stop_ids
    prompt = build_prompt(gen.tokenizer, "What is 2 plus 3?", [], budget_tokens=300)
    assert isinstance(generate_answer(gen, prompt, max_new_tokens=4), str)


@pytest.mark.flow
@pytest.mark.parametrize("arch", sorted(TOKENIZERS))
def test_train_evaluate_promote_ask(arch: str, model_dirs: dict[str, Path], dataset: Path, s3_settings: Any,
                                    trained: Callable[[str], subprocess.CompletedProcess[str]],
                                    prefect_harness: None, tmp_path: Path) -> None:
    """The release loop with the architecture's base folder as the configured generator (models.generator)."""
    from flows.promote import promote_release
    from tasks.answer.answering import ask
    from tasks.dataset.versions import file_entries, publish_version, version_id
    from tasks.release import promotion
    from tasks.release.cache import forget
    from tests.release.test_promote_flow import PAGES, QUESTIONS, build_generation

    model = Path(last_event(trained(arch))["model_dir"])
    files = {n: (dataset / n).read_bytes() for n in ("train.jsonl", "eval.jsonl")}
    version = version_id(files)
    env = s3_settings.model_copy(update={
        "models": s3_settings.models.model_copy(update={"generator": str(model_dirs[arch]), "torch_threads": 1}),
        "milvus": s3_settings.milvus.model_copy(update={"uri": str(tmp_path / "milvus.db")}),
        "answer": s3_settings.answer.model_copy(update={"mode": "dense", "k": 2, "max_new_tokens": 8,
                                                        "prompt_tokens": 400}),
        "training": s3_settings.training.model_copy(update={"eval_examples": 2, "max_new_tokens": 4})})
    publish_version(env, f"arch-{arch}", files, {"version": version, "files": file_entries(files),
                                                 "gate": {"success": True}})
    generation = build_generation(env, PAGES)

    promoted = promote_release(promotion.Candidate(collection=generation, checkpoint=str(model)),
                               promotion.GateConfig(model_dataset=version), settings=env)
    assert promoted.promoted, promoted.decision.reasons
    decision = promoted.decision
    assert decision.candidate["model.loss"] < decision.production["model.loss"]  # against the base model

    forget()
    answer = ask(env, QUESTIONS["rockets"]).complete()
    assert answer.release_id == promoted.release_id and answer.model.startswith("checkpoint:sha256-")
    assert answer.sources and 1 <= answer.new_tokens <= 8 and isinstance(answer.text, str)
