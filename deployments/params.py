"""Typed parameters of the release pipeline: the Prefect UI renders this model as a form.

Field defaults and descriptions are what a user sees on "Run > Custom run"; every deployment
runs from the UI without edits because every field has a working default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ReleaseParams(BaseModel):
    """What one release run indexes, trains on, and how its candidate is gated."""

    docs: str = Field("docs", description="Documents to index: a folder (relative to the project) or "
                      "s3://bucket/prefix.")
    examples: str = Field("examples/support.jsonl", description="Curated examples: JSONL, CSV or Parquet, "
                          "local or s3://.")
    mapping: str = Field("default", description="Column mapping of the examples (`ragtune dataset build --help`).")
    collection: str = Field("", description="Serving alias of the index; empty = settings (milvus.collection).")
    grounded: bool = Field(True, description="Add retrieval-grounded examples (context from the collection, "
                           "answers citing [n]) to the dataset.")
    profile: str = Field("", description="accelerate profile, infra/accelerate/<profile>.yaml; empty = settings.")
    preset: str = Field("", description="Training preset: default, demo or test; empty = settings.")
    method: Literal["", "lora", "full"] = Field("", description="LoRA or full fine-tuning; empty = settings.")
    evaluate: bool = Field(True, description="Evaluate the fine-tuned model against the base model "
                           "(loss, token F1, citations, abstention) before promotion.")
    gate_questions: str | None = Field(None, description="Page-eval JSONL (question, source) for the retrieval "
                                       "gate; empty = gate on the model evaluation only.")
    force: bool = Field(False, description="Promote even if the gate refuses (recorded in the release manifest).")
