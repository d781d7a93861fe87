"""Training throughput: our script (packing, labelled-only logits) vs a plain transformers Trainer.

Same model, same examples, same micro-batch (B sequences of at most L tokens), same precision and
threads, measured in one run, each in its own process, alternated over ``--rounds`` (best of each:
interference on a shared machine only ever slows a run down). Ours runs under `accelerate launch` with the
cpu-1proc and cpu-2proc profiles (or single-gpu on CUDA). The first step of each is warm-up and
not timed. Prints one JSON line last: ratio_vs_trainer = ours/Trainer tokens per second (padding
counted), useful_ratio_vs_trainer = the same for non-padding tokens.

    python bench/train.py [--data BITEXT_CSV | --data DATASET_DIR] [--steps 6] [--batch 4] [--max-seq-len 256]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.training.launch import launch_command, launch_env, load_profile, resolve_bf16, stream  # noqa: E402

BITEXT = (REPO.parent / "shared" / "data" / "bitext_customer_support"
          / "Bitext_Sample_Customer_Support_Training_Dataset.csv")
PUBMEDQA = REPO.parent / "shared" / "data" / "pubmedqa_pqal" / "ori_pqal.json"
SYSTEM = "You are a helpful assistant. Answer the question accurately and concisely."  # tasks.dataset.rows' prompt


def bitext_rows(path: Path, limit: int) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))[:limit]
    return [{"id": f"bitext-{i}", "kind": "curated", "group": r["intent"], "reference": r["response"],
             "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["response"]}]} for i, r in enumerate(records)]


def pubmedqa_rows(path: Path, limit: int) -> list[dict[str, Any]]:
    """Grounded rows as ragtune renders them: numbered abstract passages, the long answer citing [1]."""
    from tasks.dataset.grounding import lead_with_citation, training_messages

    items = list(json.loads(path.read_text()).items())[:limit]
    return [{"id": f"pubmedqa-{pmid}", "kind": "grounded", "group": pmid, "reference": r["LONG_ANSWER"],
             "messages": training_messages(r["QUESTION"], r["CONTEXTS"], lead_with_citation(r["LONG_ANSWER"], 1))}
            for pmid, r in items]


def dataset_dir(args: argparse.Namespace, work: Path) -> Path:
    if (args.data / "train.jsonl").is_file():
        return args.data
    rows = bitext_rows(args.data, args.examples)
    if args.grounded:  # ragtune's datasets mix short curated and long grounded rows: lengths vary a lot
        rows = [r for pair in zip(rows, pubmedqa_rows(PUBMEDQA, args.grounded), strict=False) for r in pair] + \
            rows[args.grounded :]
    out = work / "data"
    out.mkdir()
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    return out


def ours(args: argparse.Namespace, data: Path, work: Path, profile: str, threads: int) -> dict[str, Any]:
    """Our script under accelerate launch; its own report gives the timed tokens/s (warm-up step excluded).

    bf16 is decided as ``ragtune finetune`` decides it: ``auto`` goes to the script on a GPU (bf16 where
    CUDA supports it), and on a CPU the launcher measures once and passes yes/no.
    """
    spec = load_profile(profile)
    run_dir = work / f"run-{profile}-{time.monotonic_ns()}"
    train_args = ["--data-dir", str(data), "--output-dir", str(run_dir), "--base-model", str(args.model),
                  "--method", args.method, "--max-seq-len", str(args.max_seq_len), "--batch-rows", str(args.batch),
                  "--grad-accum", "1", "--max-steps", str(args.steps), "--epochs", "100", "--eval-every", "100000",
                  "--save-every", "100000", "--log-every", "1", "--patience", "0", "--threads", str(threads),
                  "--expect-world-size", str(spec.world_size), "--bf16", resolve_bf16("auto", spec, threads)]
    started: dict[str, Any] = {}
    result = stream(launch_command(spec, train_args), launch_env(spec, threads),
                    lambda e: started.update(e) if e["event"] == "start" else None)
    return {"tokens_per_s": result["tokens_per_s"], "useful_tokens_per_s": result["useful_tokens_per_s"],
            "world_size": result["world_size"], "mixed_precision": started.get("mixed_precision"),
            "attention": started.get("attention")}


def trainer_worker(args: argparse.Namespace) -> dict[str, Any]:
    """A plain Trainer: padded batches (DataCollatorForSeq2Seq), full logits, the same examples and batch."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from tasks.answer.prompting import load_tokenizer
    from tasks.training.data import encode_rows, read_jsonl

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)  # as our script loads it: the same rendered examples and pad token
    examples, _ = encode_rows(tokenizer, read_jsonl(args.data / "train.jsonl"), args.max_seq_len)
    features = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e)} for e in examples]
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    seen: list[tuple[int, int]] = []

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = pad(batch)
        seen.append((out["input_ids"].numel(), int(out["attention_mask"].sum())))
        return out

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class StepTimer(TrainerCallback):
        """The Trainer does not wait for the GPU each step (ours does, reading its loss): synchronize, or
        the timed steps are only the time to queue kernels."""

        seconds: list[float] = []
        started = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            sync()
            self.seconds.append(time.perf_counter() - self.started)

    timer = StepTimer()
    targs = TrainingArguments(output_dir=str(args.work / "trainer"),
                              per_device_train_batch_size=args.trainer_batch or args.batch,
                              max_steps=args.steps, learning_rate=5e-5, bf16=_bf16(cuda), use_cpu=not cuda,
                              save_strategy="no", eval_strategy="no", logging_steps=10**6, report_to=[],
                              dataloader_num_workers=0, remove_unused_columns=False, seed=1234)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    Trainer(model=model, args=targs, train_dataset=features, data_collator=collate, callbacks=[timer]).train()
    timed = seen[1 : len(timer.seconds)]  # step i consumed batch i; step 0 is warm-up
    seconds = sum(timer.seconds[1:])
    return {"tokens_per_s": round(sum(t for t, _ in timed) / seconds, 1),
            "useful_tokens_per_s": round(sum(u for _, u in timed) / seconds, 1)}


def _bf16(cuda: bool) -> bool:
    import torch

    from tasks.runtime.cpu import cpu_bf16_pays

    return torch.cuda.is_bf16_supported() if cuda else cpu_bf16_pays(torch.get_num_threads())


def run_trainer(args: argparse.Namespace, data: Path, work: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--trainer-worker", "--data", str(data), "--work", str(work), "--model",
           str(args.model), "--steps", str(args.steps), "--batch", str(args.batch), "--trainer-batch",
           str(args.trainer_batch), "--max-seq-len",
           str(args.max_seq_len), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"Trainer run failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def mfu(tokens_per_s: float, model: Path, seq: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation with the usual 6·N per token plus attention (12·layers·width·seq)."""
    config = json.loads((model / "config.json").read_text())
    d, layers, vocab, ff = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"], \
        config["intermediate_size"]
    kv = d * config["num_key_value_heads"] // config["num_attention_heads"]
    params = layers * (2 * d * d + 2 * d * kv + 3 * d * ff) + vocab * d
    return tokens_per_s * (6 * params + 12 * layers * d * seq) / (peak_tflops * 1e12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("RAGTUNE_BENCH_DATA", BITEXT)))
    parser.add_argument("--model", type=Path, default=None, help="Model dir (default: SmolLM2).")
    parser.add_argument("--method", default="full", choices=("full", "lora"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--trainer-batch", type=int, default=0,
                        help="The Trainer's examples per step (default --batch): ours packs several into a row.")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--grounded", type=int, default=0, help="Also this many PubMedQA grounded rows.")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="Alternated ours/Trainer rounds; best of each.")
    parser.add_argument("--procs", default="1,2", help="CPU process counts to measure ours with.")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="Dense bf16 peak for MFU (H100: 989).")
    parser.add_argument("--trainer-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        from tasks.runtime.sources import generator_source
        from tasks.settings import get_settings

        args.model = generator_source(get_settings().cache_dir).path
    if args.trainer_worker:
        print(json.dumps(trainer_worker(args)))
        return
    print(json.dumps(bench(args)))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tasks.runtime.cpu import free_cores

    cuda = torch.cuda.is_available()
    threads = args.threads or free_cores()
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        work = Path(tmp)
        data = dataset_dir(args, work)
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trainer": []}
        for _ in range(args.rounds):  # alternated, so drifting load on a shared machine hits both alike
            runs["ours"].append(ours(args, data, work, "single-gpu" if cuda else "cpu-1proc", threads))
            runs["trainer"].append(run_trainer(args, data, work, threads))
        multi = {}
        for n in (int(p) for p in args.procs.split(",") if int(p) > 1 and not cuda):
            multi[n] = ours(args, data, work, f"cpu-{n}proc", max(1, threads // n))
    # the least disturbed round of each: on a shared machine interference only ever slows a run down
    mine = max(runs["ours"], key=lambda x: x["tokens_per_s"])
    base = max(runs["trainer"], key=lambda x: x["tokens_per_s"])
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "method": args.method, "steps": args.steps,
        "data": args.data.name if args.data.is_dir() else f"{args.data.name} ({args.examples} rows + "
                f"{args.grounded} grounded)",
        "batch": args.batch, "trainer_batch": args.trainer_batch or args.batch, "max_seq_len": args.max_seq_len,
        "threads": threads, "bf16": _bf16(cuda), "mixed_precision": mine["mixed_precision"],
        "attention": mine["attention"],
        "tokens_per_s": mine["tokens_per_s"], "useful_tokens_per_s": mine["useful_tokens_per_s"],
        "trainer_tokens_per_s": base["tokens_per_s"], "trainer_useful_tokens_per_s": base["useful_tokens_per_s"],
        "rounds": {k: [(x["tokens_per_s"], x["useful_tokens_per_s"]) for x in v] for k, v in runs.items()},
        "ratio_vs_trainer": round(mine["tokens_per_s"] / base["tokens_per_s"], 3),
        "useful_ratio_vs_trainer": round(mine["useful_tokens_per_s"] / base["useful_tokens_per_s"], 3),
    }
    for n, result in multi.items():
        out[f"cpu_{n}proc_tokens_per_s"] = result["tokens_per_s"]
        out[f"cpu_{n}proc_world_size"] = result["world_size"]
        out[f"cpu_{n}proc_vs_1proc"] = round(result["tokens_per_s"] / mine["tokens_per_s"], 3)
    if cuda:
        out["peak_tflops"] = args.peak_tflops
        out["mfu"] = round(mfu(mine["useful_tokens_per_s"], args.model, args.max_seq_len, args.peak_tflops), 4)
        out["trainer_mfu"] = round(mfu(base["useful_tokens_per_s"], args.model, args.max_seq_len, args.peak_tflops), 4)
    return out


if __name__ == "__main__":
    main()
