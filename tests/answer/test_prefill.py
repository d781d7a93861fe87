"""The lean prompt pass (tasks/answer/prefill.py) computes what transformers computes: logits, cache, greedy
answers; its off switch and its version check each leave transformers' own pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tasks.answer import prefill as prefill_module
from tasks.answer.decoding import Decoding
from tasks.answer.generation import generate_answer, load_generator
from tasks.answer.prefill import FastPrefill
from tasks.answer.prompting import SYSTEM_PROMPT, build_prompt, shared_prefix_ids
from tasks.runtime.cpu import configure_torch
from tasks.runtime.sources import generator_source
from tasks.types import Hit

AUTOSCALER = ("The Ray autoscaler adds worker nodes when tasks or actors wait for resources, and removes nodes "
              "that stayed idle for idle_timeout_minutes (default 5).")
BATTERY = "The X200 battery lasts 14 hours on a full charge and recharges in 90 minutes."


def tiny_llama(**overrides: Any) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **overrides)
    return AutoModelForCausalLM.from_config(cfg).eval()


def hit(text: str, uri: str) -> Hit:
    return Hit(id=f"{uri}-00000", score=0.5, text=text, doc_id=uri, metadata={"uri": uri, "path": uri})


@pytest.fixture(scope="module")
def generator(model_cache: Path) -> Any:
    configure_torch(1)
    source = generator_source(model_cache)
    return load_generator(str(source.path), source.name)


@pytest.mark.parametrize("shared", [0, 7, 40])
def test_logits_and_cache_match_transformers(shared: int) -> None:
    model = tiny_llama()
    ids = torch.randint(3, 300, (41,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        reference = model(torch.tensor([ids]), use_cache=True)
        prefill = FastPrefill.for_model(model)
        assert prefill is not None
        logits, cache = prefill(ids, shared)
        again, _ = prefill(ids, shared)  # the shared prefix now comes from the prefill's own store
    torch.testing.assert_close(logits[0], reference.logits[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, logits, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(cache.layers, reference.past_key_values.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(mine.values, theirs.values, rtol=1e-4, atol=1e-4)


def test_a_different_prefix_is_recomputed_not_reused() -> None:
    model = tiny_llama()
    prefill = FastPrefill.for_model(model)
    assert prefill is not None
    first, second = list(range(3, 40)), [7, *range(4, 40)]
    with torch.inference_mode():
        prefill(first, 20)
        logits, _ = prefill(second, 20)
        reference = model(torch.tensor([second])).logits[0, -1]
    torch.testing.assert_close(logits[0], reference, rtol=1e-4, atol=1e-4)


def test_only_models_it_reproduces_get_the_lean_pass() -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    assert FastPrefill.for_model(tiny_llama()) is not None
    assert FastPrefill.for_model(tiny_llama(attention_bias=True)) is None
    assert FastPrefill.for_model(tiny_llama(hidden_act="gelu")) is None
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    assert FastPrefill.for_model(gpt2) is None


def test_the_shared_prefix_is_the_system_turn(generator: Any) -> None:
    tok = generator.tokenizer
    a = build_prompt(tok, "How does the autoscaler add nodes?", [hit(AUTOSCALER, "ray.md")], 1024)
    b = build_prompt(tok, "How long does the battery last?", [hit(BATTERY, "x200.md")], 1024)
    assert a.shared_prefix == b.shared_prefix == len(shared_prefix_ids(tok)) > 0
    assert a.input_ids[: a.shared_prefix] == b.input_ids[: b.shared_prefix]
    prefix_text = tok.decode(a.input_ids[: a.shared_prefix])
    assert SYSTEM_PROMPT in prefix_text and "ray.md" not in prefix_text and "autoscaler" not in prefix_text


@pytest.mark.parametrize("decoding", [Decoding(), Decoding(repetition_penalty=1.15, no_repeat_ngram=4)])
def test_greedy_answers_are_the_same_on_both_paths(generator: Any, decoding: Decoding) -> None:
    assert generator.prefill is not None, "SmolLM2 is a plain Llama: it must get the lean pass"
    tok = generator.tokenizer
    for question, chunk in [("How does the autoscaler decide to add nodes?", hit(AUTOSCALER, "ray.md")),
                            ("How long does the battery last?", hit(BATTERY, "x200.md"))]:
        prompt = build_prompt(tok, question, [chunk], 1024)
        fast = generate_answer(generator, prompt, 24, decoding=decoding)
        plain = generate_answer(generator, prompt, 24, decoding=decoding, fast_prefill=False)
        assert fast == plain and fast.strip()


def test_a_one_token_answer_stops_after_the_prefill(generator: Any) -> None:
    prompt = build_prompt(generator.tokenizer, "How long does the battery last?", [hit(BATTERY, "x200.md")], 1024)
    one = generate_answer(generator, prompt, 1)
    assert one == generate_answer(generator, prompt, 1, fast_prefill=False)
    assert len(generator.tokenizer(one, add_special_tokens=False)["input_ids"]) == 1


def test_the_answer_runs_on_the_answering_thread_and_stops_with_its_reader(generator: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torch op of an answer runs on one thread (tasks.runtime.torch_thread), and a reader that
    stops early (a client gone) ends the decoding instead of leaving that thread busy."""
    import threading

    from tasks.answer.generation import stream_answer

    real, seen = generator.model.generate, []

    def generate(**kwargs: Any) -> Any:
        out = real(**kwargs)
        seen.append((threading.current_thread().name, out.shape[1] - kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(generator.model, "generate", generate)
    prompt = build_prompt(generator.tokenizer, "How does the autoscaler decide to add nodes?",
                          [hit(AUTOSCALER, "ray.md")], 1024)
    stream = stream_answer(generator, prompt, 64)
    assert next(stream).strip()
    stream.close()
    [(thread, new_tokens)] = seen
    assert thread.startswith("ragtune-torch") and threading.current_thread().name == "MainThread"
    assert 1 <= new_tokens < 16, f"decoded {new_tokens} tokens after the reader left"
    assert generate_answer(generator, prompt, 8).strip()  # the answering thread is free for the next answer


def _full_prompt_passes(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, for each generate() call, how many prompt tokens it was given: the full prompt means that
    transformers ran the prompt pass; ragtune's pass hands generate() the cache and one more token."""
    real, seen = model.generate, []

    def generate(**kwargs: Any) -> Any:
        seen.append(int(kwargs["input_ids"].shape[1]) if "cache" not in kwargs else -1)
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return seen


def test_the_switch_loads_the_generator_without_the_lean_pass(generator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """answer.fast_prefill=false (RAGTUNE_ANSWER__FAST_PREFILL): no FastPrefill is built, transformers prefills."""
    from tasks.answer.answering import serving_generator
    from tasks.answer.serving import Serving
    from tasks.settings import Settings

    monkeypatch.setenv("RAGTUNE_ANSWER__FAST_PREFILL", "false")
    answer = Settings().answer
    assert answer.fast_prefill is False
    plain = serving_generator(Serving("docs", generator.path, generator.name), answer)
    assert plain is not generator and plain.prefill is None
    assert serving_generator(Serving("docs", generator.path, generator.name), answer) is plain  # loaded once

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("ragtune's prompt pass ran with the switch off")

    monkeypatch.setattr(FastPrefill, "__call__", never)
    seen = _full_prompt_passes(plain.model, monkeypatch)
    prompt = build_prompt(plain.tokenizer, "How long does the battery last?", [hit(BATTERY, "x200.md")], 1024)
    text = generate_answer(plain, prompt, 12)
    assert seen == [prompt.n_tokens] and text.strip()
    monkeypatch.undo()
    assert text == generate_answer(generator, prompt, 12)  # the same answer as the lean pass gives


def test_an_untested_transformers_release_keeps_transformers_pass(caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    monkeypatch.setattr(prefill_module, "_refused", [])
    assert prefill_module.transformers_tested(), f"installed transformers {transformers.__version__} untested"
    assert not prefill_module.transformers_tested("6.0.0") and not prefill_module.transformers_tested("5.23.1")
    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    model = tiny_llama()
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    caplog.clear()
    with caplog.at_level("WARNING", logger="tasks.answer.prefill"):
        assert FastPrefill.for_model(model) is None
        assert FastPrefill.for_model(model) is None
    assert [r.getMessage() for r in caplog.records] == [
        "transformers 5.99.0: ragtune's prompt pass is off (tested on "
        f"{', '.join(prefill_module.TESTED_TRANSFORMERS)}); transformers' own runs"]
    assert model.model.layers[0].self_attn.q_proj.weight is q_proj  # the model's weights are left as loaded


def test_an_untested_transformers_release_answers_through_transformers(generator: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from tasks.answer.generation import _load_generator

    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    plain = _load_generator(str(generator.path), generator.name)  # uncached: a fresh load on this "release"
    assert plain.prefill is None
    seen = _full_prompt_passes(plain.model, monkeypatch)
    prompt = build_prompt(plain.tokenizer, "How long does the battery last?", [hit(BATTERY, "x200.md")], 1024)
    generate_answer(plain, prompt, 4)
    assert seen == [prompt.n_tokens]
