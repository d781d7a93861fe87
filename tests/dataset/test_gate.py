"""The Great Expectations gate: a Bitext-format sample passes, each injected defect fails with the right
expectation named, and the build_dataset flow publishes a version only when the gate passes.

GX takes seconds to import: the tests share one ephemeral context (``tasks.dataset.gx`` keeps it per process)
and keep the number of validations small.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tasks.dataset import build as steps
from tasks.dataset import gx
from tasks.dataset import rows as ds
from tasks.settings import Settings

# The header of ../shared/data/bitext_customer_support/Bitext_Sample_Customer_Support_Training_Dataset.csv
BITEXT_HEADER = ["context", "role", "instruction", "intent", "entity_type", "entity_value", "start_offset",
                 "end_offset", "category", "tags", "response"]
INTENTS = {"cancel_order": ("ORDER", "cancel the order {n}"), "track_order": ("ORDER", "track my parcel {n}"),
           "change_order": ("ORDER", "add an item to purchase {n}"), "check_invoice": ("INVOICE", "see bill {n}"),
           "get_refund": ("REFUND", "get my money back for {n}"), "recover_password": ("ACCOUNT", "reset my PIN"),
           "delivery_options": ("DELIVERY", "pick a faster shipping method"),
           "change_shipping_address": ("SHIPPING", "send it to my new flat"),
           "contact_customer_service": ("CONTACT", "talk to a real person"),
           "newsletter_subscription": ("NEWSLETTER", "stop the weekly emails")}
PHRASINGS = ["how can I {x}?", "I need help to {x} right now", "could you show me the way to {x}",
             "what do I have to do to {x}", "{x}, is that possible?"]


def bitext_rows() -> list[dict[str, str]]:
    rows = []
    for intent, (category, task) in INTENTS.items():
        for i, phrasing in enumerate(PHRASINGS):
            x = task.format(n=f"{4200 + i:06d}")
            rows.append({"context": "customer support", "role": "virtual assistant",
                         "instruction": phrasing.format(x=x), "intent": intent, "entity_type": "", "entity_value": "",
                         "start_offset": "", "end_offset": "", "category": category, "tags": "BL",
                         "response": f"I understand that you want to {task.format(n='{{Order Number}}')}. Sign in to "
                                     f"{{{{Website Name}}}}, open {{{{{category.title()} Section}}}} and follow "
                                     f"step {i + 1} of the guide; we are here {{{{Customer Support Hours}}}}."})
    return rows


def write_bitext(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=BITEXT_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


def prepare(settings: Settings, tmp_path: Path, rows: list[dict[str, str]]) -> steps.PreparedExamples:
    return steps.prepare_examples.fn(settings, str(write_bitext(tmp_path / "bitext.csv", rows)), "bitext", 13)


def validate(settings: Settings, rows: list[ds.DatasetRow], previous: dict[str, float] | None = None) -> gx.GateReport:
    return gx.validate(ds.gate_frame(rows), gx.DatasetGateConfig.from_settings(settings.dataset, previous))


def names(outcomes: list[gx.Outcome]) -> set[str]:
    return {o.name for o in outcomes}


def test_bitext_sample_passes(settings: Settings, tmp_path: Path) -> None:
    prepared = prepare(settings, tmp_path, bitext_rows())
    report = validate(settings, prepared.rows)
    assert report.success and not report.failed and not report.warnings, report.message()
    assert len(prepared.rows) == 50 and prepared.removed["exact_duplicates"] == 0
    train, evals = ({r.group for r in prepared.rows if r.split == s} for s in ("train", "eval"))
    assert evals and not train & evals
    assert report.gx_result["success"] is True and len(report.gx_result["results"]) == len(report.outcomes)


def _null(rows: list[dict[str, str]]) -> None:
    rows[3]["response"] = "   "


def _over_long(rows: list[dict[str, str]]) -> None:
    rows[5]["response"] = "Please follow these steps carefully. " * 200


def _email(rows: list[dict[str, str]]) -> None:
    rows[7]["response"] += " You can also write to jane.doe@example.com."


def _duplicate(table: list[ds.DatasetRow]) -> None:
    # the build removes duplicate prompts before splitting; the gate is the safety net behind it
    table.append(ds.DatasetRow(**{**table[9].__dict__, "id": "injected-duplicate"}))


def _overlap(table: list[ds.DatasetRow]) -> None:
    next(r for r in table if r.split == "eval").split = "train"  # the split keeps groups whole; inject a leak


DEFECTS = {"null": (_null, None, "required_response"), "over-long": (_over_long, None, "max_tokens"),
           "email": (_email, None, "pii_email"), "duplicate": (None, _duplicate, "unique_prompts"),
           "train-eval-overlap": (None, _overlap, "no_group_overlap")}


@pytest.mark.parametrize(("in_source", "in_table", "expected"), DEFECTS.values(), ids=DEFECTS.keys())
def test_injected_defect_fails_with_the_right_expectation(settings: Settings, tmp_path: Path, in_source: Any,
                                                          in_table: Any, expected: str) -> None:
    rows = bitext_rows()
    if in_source:
        in_source(rows)
    prepared = prepare(settings, tmp_path, rows)
    if in_table:
        in_table(prepared.rows)
    report = validate(settings, prepared.rows)
    assert not report.success and names(report.failed) == {expected}, report.message()
    assert report.message().startswith(f"dataset gate failed: {expected} (")
    flagged = report.reasons_by_id()
    assert flagged and all(expected in reasons for reasons in flagged.values())


def test_duplicates_in_the_source_are_removed_before_the_gate(settings: Settings, tmp_path: Path) -> None:
    rows = bitext_rows()
    rows.append({**rows[0], "instruction": rows[0]["instruction"].upper().replace("4200", "9999")})
    prepared = prepare(settings, tmp_path, rows)
    assert prepared.removed["exact_duplicates"] == 1 and len(prepared.rows) == 50


def test_phone_and_card_numbers_fail_but_order_numbers_do_not(settings: Settings, tmp_path: Path) -> None:
    rows = bitext_rows()
    rows[1]["response"] += " Call us on (555) 123-4567."
    rows[2]["response"] += " Paid with 4111 1111 1111 1111."  # Luhn-valid test card
    rows[3]["response"] += " Order 4111 1111 1111 1112 and 10 000 000 points."  # fails Luhn; not a phone
    report = validate(settings, prepare(settings, tmp_path, rows).rows)
    assert names(report.failed) == {"pii_phone", "pii_card_number"}, report.message()
    assert {o.name: o.unexpected_count for o in report.failed} == {"pii_phone": 1, "pii_card_number": 1}


def test_pii_detectors() -> None:
    import re

    assert gx.luhn_valid("4111111111111111") and not gx.luhn_valid("4111111111111112")
    assert gx.card_number("card 5500-0000-0000-0004 ok") == "5500-0000-0000-0004"
    assert gx.card_number("order 113542617735902") is None
    for phone in ("555-123-4567", "+44 20 7946 0958", "(555) 123 4567", "+1 555 123 4567"):
        assert re.search(gx.PHONE, f"call {phone}."), phone
    for not_phone in ("10 000 000 tokens", "version 1.24.1", "2024-06-07", "192.168.1.10"):
        assert not re.search(gx.PHONE, not_phone), not_phone
    assert re.search(gx.EMAIL, "mail a.b+c@mail.example.org") and not re.search(gx.EMAIL, "{{Email Address}}")


def test_label_drift_blocks_and_new_labels_only_warn(settings: Settings, tmp_path: Path) -> None:
    rows = prepare(settings, tmp_path, bitext_rows()).rows
    share = {label: 0.1 for label in INTENTS}  # the sample: 10 intents, 5 rows each
    tilted = {"cancel_order": 0.55, **{k: 0.05 for k in list(INTENTS)[1:]}}  # TVD = 0.55 - 0.1 = 0.45
    drifted = validate(settings, rows, tilted)
    assert names(drifted.failed) == {"label_drift"}
    assert next(o for o in drifted.outcomes if o.name == "label_drift").observed == pytest.approx(0.45)
    dropped = {k: v for k, v in share.items() if k != "track_order"}  # one label new, TVD 0.1
    warned = validate(settings, rows, dropped)
    assert warned.success and names(warned.warnings) == {"new_labels"}


# --- the flow: publish only what passed --------------------------------------------------------------


@pytest.fixture
def env_settings(s3_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Route get_settings() (what the flow and the CLI read) to this test's data dir and S3 prefix."""
    from tasks.settings import get_settings

    s3 = s3_settings.s3
    for key, value in {"PORT": s3.port, "BUCKET": s3.bucket, "PREFIX": s3.prefix}.items():
        monkeypatch.setenv(f"RAGTUNE_S3__{key}", str(value))
    get_settings.cache_clear()
    yield s3_settings
    get_settings.cache_clear()


def s3_keys(settings: Settings, prefix: str) -> list[str]:
    from tasks.stores.s3 import S3Store

    return sorted(o.key for o in S3Store(settings).list(prefix))


@pytest.mark.flow
def test_build_publishes_a_version_and_rebuilding_returns_the_same_id(env_settings: Settings, prefect_harness: None,
                                                                      tmp_path: Path) -> None:
    from flows.dataset import build_dataset
    from tasks.dataset.versions import load_dataset_version

    path = write_bitext(tmp_path / "bitext.csv", bitext_rows())
    first = build_dataset(str(path), "bitext")
    version = first.version
    assert not first.reused and first.passed and first.counts["train"] + first.counts["eval"] == 50
    assert s3_keys(env_settings, "datasets/") == sorted(["datasets/accepted/bitext.json"] + [
        f"datasets/{version}/{f}" for f in ("eval.jsonl", "manifest.json", "train.jsonl", "validation.json")])
    again = build_dataset(str(path), "bitext")
    assert again.version == version and again.reused

    shutil.rmtree(env_settings.cache_dir / "datasets")  # a fresh machine: fetched from S3, checked by sha256
    loaded = load_dataset_version(env_settings, version)
    m = loaded.manifest
    assert loaded.passed and m["gate"]["success"] and m["sources"][0]["sha256"] and m["gx_result"]["success"]
    assert m["counts"]["by_kind_total"]["curated"] == 50 and m["tokens"]["train"]["max"] <= m["max_seq_len"]
    lines = [json.loads(line) for line in loaded.train_path.read_text().splitlines()]
    assert len(lines) == m["counts"]["train"] and lines[0]["reference"] == lines[0]["messages"][-1]["content"]
    assert json.loads((loaded.path / "validation.json").read_text()) == m["gx_result"]


@pytest.mark.flow
def test_failed_build_publishes_nothing_but_the_report(env_settings: Settings, prefect_harness: None,
                                                       tmp_path: Path) -> None:
    from flows.dataset import build_dataset
    from tasks.dataset.versions import GateFailedError

    rows = bitext_rows()
    rows[7]["response"] += " Write to jane.doe@example.com."
    with pytest.raises(GateFailedError, match=r"pii_email \(1 row\(s\), e\.g\. id=") as failure:
        build_dataset(str(write_bitext(tmp_path / "bitext.csv", rows)), "bitext")
    assert failure.value.failed == ["pii_email"]
    assert s3_keys(env_settings, "datasets/") == []
    (run_dir,) = {k.split("/")[1] for k in s3_keys(env_settings, "quarantine/")}
    assert s3_keys(env_settings, f"quarantine/{run_dir}/") == [
        f"quarantine/{run_dir}/{f}" for f in ("report.md", "rows.jsonl", "validation.json")]
    (flagged,) = [json.loads(line) for line in (env_settings.data_dir / "quarantine" / run_dir / "rows.jsonl")
                  .read_text().splitlines()]
    assert flagged["reasons"] == ["pii_email"] and "jane.doe@example.com" in flagged["reference"]
    assert not (env_settings.cache_dir / "datasets").exists()
    assert _artifact_markdown("dataset-gate").startswith("# Dataset gate: FAILED")


def _artifact_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                            limit=1, sort="CREATED_DESC")
    return str(artifact.data)


@pytest.mark.flow
def test_cli_builds_from_s3_shows_and_refuses_label_drift(env_settings: Settings, prefect_harness: None,
                                                          tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ragtune.cli import app
    from tasks.stores.s3 import S3Store

    store = S3Store(env_settings)
    store.ensure_bucket()
    store.put_bytes("inbox/support.csv", write_bitext(tmp_path / "b.csv", bitext_rows()).read_bytes())
    runner = CliRunner()
    built = runner.invoke(app, ["dataset", "build", "--examples", store.uri("inbox/support.csv"), "--mapping",
                                "bitext", "--json"])
    assert built.exit_code == 0, built.output
    result = json.loads(built.stdout.strip().splitlines()[-1])
    shown = runner.invoke(app, ["dataset", "show", "support", "--json"])  # a name resolves to its accepted version
    assert shown.exit_code == 0 and json.loads(shown.stdout.strip().splitlines()[-1])["version"] == result["version"]

    skewed = [r for r in bitext_rows() if r["intent"] in list(INTENTS)[:4]]  # 4 of 10 intents: TVD 0.6
    refused = runner.invoke(app, ["dataset", "build", "--examples", str(write_bitext(tmp_path / "s.csv", skewed)),
                                  "--mapping", "bitext", "--name", "support"])
    assert refused.exit_code == 1 and "label_drift" in refused.stderr and "Traceback" not in refused.output
    assert os.environ["RAGTUNE_S3__PREFIX"] == env_settings.s3.prefix


# --- opt-in data tier (RAGTUNE_SHARED_DATA=../shared/data) ------------------------------------------


def _shared(relative: str) -> Path:
    from tests.conftest import shared_data

    root = shared_data()
    if root is None:
        pytest.skip("set RAGTUNE_SHARED_DATA to ../shared/data to run the data tier")
    return root / relative


@pytest.mark.data
def test_real_bitext_fails_only_on_its_two_email_addresses(settings: Settings) -> None:
    path = _shared("bitext_customer_support/Bitext_Sample_Customer_Support_Training_Dataset.csv")
    prepared = steps.prepare_examples.fn(settings, str(path), "bitext", 13)
    report = validate(settings, prepared.rows)
    # the published CSV has two responses giving support@company.com: the gate must catch exactly those
    assert names(report.failed) == {"pii_email"} and report.failed[0].unexpected_count == 2
    flagged = set(report.reasons_by_id())
    assert all("support@company.com" in r.response for r in prepared.rows if r.id in flagged)
    clean = validate(settings, [r for r in prepared.rows if r.id not in flagged])
    assert clean.success, clean.message()
    assert len(prepared.rows) > 4000 and prepared.removed["exact_duplicates"] > 0
    assert {r.split for r in prepared.rows} == {"train", "eval"}


@pytest.mark.data
def test_real_pubmedqa_with_question_context_and_long_answer(settings: Settings) -> None:
    path = _shared("pubmedqa_pqal/ori_pqal.json")
    prepared = steps.prepare_examples.fn(settings, str(path), "pubmedqa", 13)
    assert len(prepared.rows) == 1000 and {r.label for r in prepared.rows} == {"yes", "no", "maybe"}
    assert all('<document id="1"' in r.messages[1]["content"] for r in prepared.rows)
    report = validate(settings, prepared.rows)  # 1024 tokens: one abstract + answer is longer
    assert names(report.failed) == {"max_tokens"}
    longer = settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"max_seq_len": 1536})})
    assert validate(longer, prepared.rows).success
