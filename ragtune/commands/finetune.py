"""`ragtune finetune` and `ragtune eval model`: train the generator on a dataset version, compare it to the base."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ragtune.commands._common import JsonOption, clear_errors, emit, subgroup

if TYPE_CHECKING:
    from flows.finetune import FinetuneSummary


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
    subgroup(app, "eval", "Evaluate retrieval, answers and models.").command("model")(eval_model)


@clear_errors
def finetune(
    dataset: str = typer.Option(..., "--dataset", help="Dataset version (64 hex) or accepted dataset name."),
    profile: str = typer.Option("", "--profile", help="accelerate profile in infra/accelerate (settings default)."),
    preset: str = typer.Option("", "--preset", help="Training preset: default, demo, test (settings default)."),
    lora: bool | None = typer.Option(None, "--lora/--full", help="LoRA adapters (merged) or full fine-tuning."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest unfinished run of this dataset."),
    max_steps: int = typer.Option(0, "--max-steps", help="Cap the optimizer steps (0: the preset decides)."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Compare with the base model afterwards."),
    as_json: bool = JsonOption,
) -> None:
    """Fine-tune the generator on a dataset version whose gate passed; the best checkpoint is the output."""
    from flows.finetune import finetune_model

    method = "" if lora is None else ("lora" if lora else "full")
    overrides = {"max_steps": max_steps} if max_steps else None
    emit(finetune_model(dataset, profile, preset, method, resume, evaluate, overrides), as_json, _human_finetune)


@clear_errors
def eval_model(
    checkpoint: str = typer.Argument(..., help="Fine-tuned model dir (or a training run dir)."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset version whose eval split is used."),
    base: str = typer.Option("", "--base", help="Model to compare with (default: the base generator)."),
    limit: int = typer.Option(0, "--limit", help="Examples to generate answers for (settings default)."),
    report: str = typer.Option("", "--report", help="Markdown report path (default under the data dir)."),
    as_json: bool = JsonOption,
) -> None:
    """Held-out loss/perplexity and greedy-answer metrics, base vs candidate on the same prompts."""
    from tasks.dataset.versions import load_dataset_version
    from tasks.settings import get_settings
    from tasks.training.scoring import evaluate_models, model_path, report_markdown

    settings = get_settings()
    candidate = model_path(Path(checkpoint))
    version = load_dataset_version(settings, dataset)
    result = evaluate_models.fn(settings, candidate, version.eval_path, Path(base) if base else None,
                                limit or None)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(report) if report else settings.data_dir / "reports" / f"model-eval-{stamp}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_markdown(result))
    emit({**result, "dataset": version.version, "report": str(path)}, as_json, _human_eval)


def _human_finetune(r: FinetuneSummary) -> str:
    lines = [f"run {r.run_dir} ({r.world_size} process(es)): step {r.step}, "
             f"best eval loss {r.best_eval_loss} at step {r.best_step}",
             f"  model: {r.model_dir}"]
    if r.eval is not None:
        b, c = r.eval.base, r.eval.candidate
        lines.append("  " + ", ".join(f"{k} {_num(b.get(k))} -> {_num(c.get(k))}" for k in c if k in b))
    return "\n".join(lines)


def _human_eval(r: dict[str, Any]) -> str:
    from tasks.training.scoring import SCORE_KEYS

    rows = [f"{k:<20} {_num(r['base'].get(k)):>10} {_num(r['candidate'].get(k)):>10}" for k in SCORE_KEYS]
    return "\n".join([f"{'metric':<20} {'base':>10} {'candidate':>10}", *rows, f"report: {r['report']}"])


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
