"""Model evaluation on a dataset version's held-out split: base and candidate, same prompts, one run.

Metrics: loss and perplexity on the assistant tokens of every eval example; on a stratified sample,
greedy answers scored by token F1 and ROUGE-L against the reference, citation validity (every cited
[n] is a document of the prompt and the cited documents hold the answer's words) and abstention
accuracy (says "I don't know" exactly when the example is an abstention one).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections import Counter
from itertools import zip_longest
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.settings import Settings

_DOCUMENT = re.compile(r'<document id="(\d+)"[^>]*>\n(.*?)\n</document>', re.DOTALL)
_QUESTION = re.compile(r"<question>\n(.*?)\n</question>", re.DOTALL)
_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_ABSTAIN = ("i don't know", "i do not know", "i dont know")
_STOP = frozenset(("a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "was", "were", "be",
                   "it", "this", "that", "with", "as", "by", "at", "from"))
SCORE_KEYS = ("loss", "perplexity", "token_f1", "rouge_l", "citation_validity", "abstention_accuracy")


# -- text metrics (pure) ------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """SQuAD-style normalisation: citations, punctuation and articles removed, lower case."""
    text = _CITATION.sub(" ", text.lower())
    text = "".join(" " if ch in string.punctuation and ch != "'" else ch for ch in text)
    return [w for w in text.split() if w not in ("a", "an", "the")]


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = words(prediction), words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: longest common subsequence of words."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    prev = [0] * (len(ref) + 1)
    for p in pred:
        row = [0]
        for j, r in enumerate(ref):
            row.append(prev[j] + 1 if p == r else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    return 0.0 if not lcs else 2 * lcs / (len(pred) + len(ref))


def is_abstention(text: str) -> bool:
    return any(p in text.lower().replace("’", "'") for p in _ABSTAIN)


def documents(messages: list[dict[str, str]]) -> dict[int, str]:
    """The numbered documents of a prompt as tasks.answer.prompting renders them."""
    return {int(n): body for m in messages[:-1] for n, body in _DOCUMENT.findall(m["content"])}


def cited(answer: str) -> list[int]:
    return [int(n) for match in _CITATION.finditer(answer) for n in match.group(1).split(",")]


def citation_valid(answer: str, docs: dict[int, str]) -> bool | None:
    """None without citations; else every [n] exists and the cited documents hold half the answer's words."""
    numbers = cited(answer)
    if not numbers:
        return None
    if any(n not in docs for n in numbers):
        return False
    content = {w for w in words(answer) if w not in _STOP}
    source = set(words(" ".join(docs[n] for n in numbers)))
    return not content or len(content & source) >= 0.5 * len(content)


def question_of(messages: list[dict[str, str]]) -> str:
    user = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "user"), "")
    match = _QUESTION.search(user)
    return (match.group(1) if match else user).strip()


def generation_scores(rows: list[dict[str, Any]], answers: list[str]) -> dict[str, float | None]:
    f1 = [token_f1(a, r["reference"] or r["messages"][-1]["content"]) for r, a in zip(rows, answers, strict=True)]
    rl = [rouge_l(a, r["reference"] or r["messages"][-1]["content"]) for r, a in zip(rows, answers, strict=True)]
    grounded = [(r, a) for r, a in zip(rows, answers, strict=True) if r.get("kind") in ("grounded", "abstain")]
    checks = [v for r, a in grounded if (v := citation_valid(a, documents(r["messages"]))) is not None]
    abstain = [is_abstention(a) == (r.get("kind") == "abstain") for r, a in grounded]
    return {"token_f1": _mean(f1), "rouge_l": _mean(rl), "citation_validity": _mean(checks),
            "citation_rate": len(checks) / len(grounded) if grounded else None,
            "abstention_accuracy": _mean(abstain)}


def _mean(values: list[Any]) -> float | None:
    return sum(values) / len(values) if values else None


def stratified(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` rows taking kinds in turn, so abstention examples are never crowded out."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_kind.setdefault(str(row.get("kind")), []).append(row)
    mixed = [r for group in zip_longest(*by_kind.values()) for r in group if r is not None]
    return mixed[:limit]


# -- model side ---------------------------------------------------------------------------------------
def load_model(path: Path) -> tuple[Any, Any]:
    """The model on the GPU where there is one (fp32 weights, bf16 autocast where it pays), else the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.answer.prompting import load_tokenizer

    tokenizer = load_tokenizer(path)  # its chat template or the fallback, as training rendered the prompts
    tokenizer.padding_side = "left"  # generation continues each prompt from its last token
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def _autocast() -> Any:
    """bf16 autocast where it is faster (CUDA with bf16, CPUs where it measures faster): same for both models."""
    import torch

    from tasks.runtime.cpu import cpu_bf16_pays

    if torch.cuda.is_available():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_bf16_supported())
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16_pays(torch.get_num_threads()))


def heldout_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_len: int = 2048) -> dict[str, float]:
    """Mean cross-entropy over every assistant token of ``rows`` (packed: no attention across examples)."""
    import torch

    from tasks.training.data import collate, encode_rows, pack_examples
    from tasks.training.loss import AssistantTokenLoss

    examples, dropped = encode_rows(tokenizer, rows, max_len)
    packed = pack_examples(examples, max_len)
    scorer, total, count = AssistantTokenLoss(model), 0.0, 0
    with torch.inference_mode(), _autocast():
        for i in range(0, len(packed), 4):
            batch = collate(packed[i : i + 4], tokenizer.pad_token_id)
            loss_sum, n = scorer(**{k: v.to(model.device) for k, v in batch.items()})
            total, count = total + float(loss_sum), count + int(n)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "loss_tokens": count, "too_long": dropped}


def generate(model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int, batch: int = 8) -> list[str]:
    """Greedy answers, batched by prompt length (left padding), returned in ``rows`` order."""
    import torch

    from tasks.answer.prompting import stop_token_ids
    from tasks.training.data import prompt_text

    stops = stop_token_ids(tokenizer, model.generation_config)
    prompts = [prompt_text(tokenizer, r["messages"]) for r in rows]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        with torch.inference_mode(), _autocast():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        for i, seq in zip(idx, out[:, enc["input_ids"].shape[1] :], strict=True):
            answers[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    return [answers[i] for i in range(len(rows))]


# Scores already computed in this process, by model weights and eval rows: the release pipeline's
# evaluate stage and its promotion gate score the same two models on the same rows minutes apart.
_SCORED: dict[tuple[Any, ...], tuple[dict[str, Any], list[str]]] = {}


def score_model(path: Path, rows: list[dict[str, Any]], sample: list[dict[str, Any]],
                max_new_tokens: int) -> tuple[dict[str, Any], list[str]]:
    from tasks.runtime.torch_thread import on_torch_thread

    key = _score_key(path, rows, sample, max_new_tokens)
    if key not in _SCORED:  # on the process's one torch thread: beside another thread's OpenMP pool, slower
        _SCORED[key] = on_torch_thread(_score, path, rows, sample, max_new_tokens)
    scores, answers = _SCORED[key]
    return dict(scores), list(answers)


def _score(path: Path, rows: list[dict[str, Any]], sample: list[dict[str, Any]],
           max_new_tokens: int) -> tuple[dict[str, Any], list[str]]:
    model, tokenizer = load_model(path)
    answers = generate(model, tokenizer, sample, max_new_tokens)
    return {**heldout_loss(model, tokenizer, rows), **generation_scores(sample, answers)}, answers


def _score_key(path: Path, rows: list[dict[str, Any]], sample: list[dict[str, Any]],
               max_new_tokens: int) -> tuple[Any, ...]:
    """The model dir and its weight files (size, mtime), the exact eval rows, the decoding budget."""
    weights = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(path).glob("*.safetensors")))
    data = hashlib.sha256(json.dumps([rows, sample], sort_keys=True, default=str).encode()).hexdigest()
    return str(Path(path).resolve()), weights, data, max_new_tokens


def compare_models(base: Path, candidate: Path, eval_path: Path, limit: int, max_new_tokens: int,
                   n_examples: int = 3, loss_limit: int = 0) -> dict[str, Any]:
    """Base and candidate on the same eval split and the same generation sample, greedy decoding."""
    from tasks.training.data import read_jsonl, seeded_sample

    rows = read_jsonl(eval_path)
    sample = stratified(rows, limit)
    rows = seeded_sample(rows, loss_limit, seed=0)
    base_scores, base_answers = score_model(base, rows, sample, max_new_tokens)
    cand_scores, cand_answers = score_model(candidate, rows, sample, max_new_tokens)
    examples = [{"kind": r.get("kind"), "question": question_of(r["messages"])[:500], "reference": r["reference"],
                 "base": b, "candidate": c}
                for r, b, c in list(zip(sample, base_answers, cand_answers, strict=True))[:n_examples]]
    return {"base_model": str(base), "candidate_model": str(candidate), "eval_examples": len(rows),
            "generated": len(sample), "max_new_tokens": max_new_tokens, "base": base_scores,
            "candidate": cand_scores, "examples": examples}


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Model evaluation: {report['generated']} examples generated, "
             f"{report['eval_examples']} for loss", "",
             f"base: `{report['base_model']}`  \ncandidate: `{report['candidate_model']}`", "",
             "| metric | base | candidate | change |", "|---|---|---|---|"]
    for key in (*SCORE_KEYS, "citation_rate"):
        b, c = report["base"].get(key), report["candidate"].get(key)
        change = f"{c - b:+.4f}" if b is not None and c is not None else "n/a"
        lines.append(f"| {key} | {_fmt(b)} | {_fmt(c)} | {change} |")
    for n, ex in enumerate(report["examples"], start=1):
        lines += ["", f"## Example {n} ({ex['kind']})", f"**Question:** {_quote(ex['question'])}",
                  f"**Reference:** {_quote(ex['reference'])}", f"**Base:** {_quote(ex['base'])}",
                  f"**Candidate:** {_quote(ex['candidate'])}"]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _quote(text: str | None) -> str:
    return (text or "").replace("\n", " ").replace("|", "\\|")[:400]


# -- entry points -------------------------------------------------------------------------------------
def model_path(path: Path) -> Path:
    """A checkpoint dir, or a training run dir (its model/)."""
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json) nor a training run")
    return path


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_models(settings: Settings, candidate: Path, eval_path: Path, base: Path | None = None,
                    limit: int | None = None) -> dict[str, Any]:
    from tasks.runtime.cpu import configure_torch
    from tasks.runtime.sources import generator_source
    from tasks.runtime.torch_thread import on_torch_thread

    on_torch_thread(configure_torch, settings.models.torch_threads)  # where score_model runs the models
    base = base or generator_source(settings.cache_dir, settings.models.generator).path
    return compare_models(model_path(base), model_path(candidate), eval_path, limit or settings.training.eval_examples,
                          settings.training.max_new_tokens, loss_limit=settings.training.eval_loss_examples)


def evaluate_for_gate(settings: Settings, checkpoint: Path | None, dataset: str) -> dict[str, float]:
    """One model's scores (None: the base model) on a dataset version's eval split, for the promotion gate."""
    from tasks.dataset.versions import load_dataset_version
    from tasks.runtime.cpu import configure_torch
    from tasks.runtime.sources import generator_source
    from tasks.runtime.torch_thread import on_torch_thread
    from tasks.training.data import read_jsonl, seeded_sample

    on_torch_thread(configure_torch, settings.models.torch_threads)  # where score_model runs the models
    base = generator_source(settings.cache_dir, settings.models.generator).path
    path = model_path(checkpoint) if checkpoint else base
    rows = read_jsonl(load_dataset_version(settings, dataset).eval_path)
    scores, _ = score_model(path, seeded_sample(rows, settings.training.eval_loss_examples, seed=0),
                            stratified(rows, settings.training.eval_examples), settings.training.max_new_tokens)
    return {k: float(v) for k, v in scores.items() if k in SCORE_KEYS and v is not None}
