"""build_dataset: curated (+ grounded) examples -> GX gate -> content-addressed dataset version on S3.

Run locally: ``python -m flows.dataset examples/ragtune_qa.jsonl [--grounded-from docs]``.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from tasks.dataset import build as steps
from tasks.dataset.build import prepare_examples, publish_dataset, quarantine_examples, validate_examples
from tasks.dataset.versions import DatasetVersion, check_name, name_for
from tasks.runtime.process import process_settings
from tasks.settings import Settings


class DatasetSummary(BaseModel):
    """The published (or reused) dataset version; ``ragtune dataset build --json`` prints these keys."""

    version: str
    name: str
    reused: bool
    passed: bool
    counts: dict[str, Any]
    tokens: dict[str, Any]
    path: str
    warnings: list[str]


@flow(name="build-dataset", log_prints=True)
def build_dataset(examples: str, mapping: str = "default", grounded_from: str | None = None, name: str | None = None,
                  seed: int = 13, eval_share: float | None = None, max_seq_len: int | None = None) -> DatasetSummary:
    """Validate examples with the GX gate; publish them as a dataset version only if every critical check holds.

    Args:
        examples: Curated examples: JSONL, CSV or Parquet, a local path or s3://.
        mapping: Column mapping of the examples (`ragtune dataset build --help` lists them).
        grounded_from: Collection to retrieve context from for grounded examples; empty = curated only.
        name: Dataset name (label drift is checked against its previous accepted version); empty = from the file.
        seed: Seed of the deterministic group split.
        eval_share: Target share of rows in the eval split; empty = settings.dataset.eval_share.
        max_seq_len: Longest example in tokens; empty = settings.dataset.max_seq_len.
    """
    settings, name = run_settings(eval_share, max_seq_len), check_name(name or name_for(examples))
    run_id = str(runtime.flow_run.id or uuid.uuid4())
    prepared = prepare_examples(settings, examples, mapping, seed, grounded_from)
    report = validate_examples(settings, prepared, name)
    if not report.success:
        where = quarantine_examples(settings, prepared, report, run_id)
        create_markdown_artifact(steps.gate_markdown(report, f"refused; quarantine: {where['s3']}"), key="dataset-gate")
        raise steps.refuse(report, where)
    version, reused = publish_dataset(settings, prepared, report, name, run_id)
    create_markdown_artifact(steps.gate_markdown(report, f"version `{version.version}`"), key="dataset-gate")
    get_run_logger().info("dataset %s %s: %s", name, "unchanged" if reused else "published", version.version)
    return summary(version, reused)


def run_settings(eval_share: float | None, max_seq_len: int | None) -> Settings:
    """Settings with this run's overrides of the dataset section (flow parameters win)."""
    settings = process_settings()
    overrides = {k: v for k, v in {"eval_share": eval_share, "max_seq_len": max_seq_len}.items() if v is not None}
    section = settings.dataset.model_validate({**settings.dataset.model_dump(), **overrides})
    return settings.model_copy(update={"dataset": section})


def summary(version: DatasetVersion, reused: bool) -> DatasetSummary:
    m = version.manifest
    return DatasetSummary(version=version.version, name=m["name"], reused=reused, passed=version.passed,
                          counts=m["counts"], tokens=m["tokens"], path=str(version.path),
                          warnings=[e["name"] for e in m["gate"]["expectations"] if not e["success"]])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=build_dataset.__doc__)
    parser.add_argument("examples")
    parser.add_argument("--mapping", default="default")
    parser.add_argument("--grounded-from")
    parser.add_argument("--name")
    args = parser.parse_args()
    print(json.dumps(build_dataset(args.examples, args.mapping, args.grounded_from, args.name).model_dump(mode="json"),
                     indent=2))
