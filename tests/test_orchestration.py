"""Orchestration against a real `prefect server` (started here): deploy, run as the UI does, events, schedules.

Flow runs execute the way production runs them: a process worker (`prefect worker start
--run-once`) picks them up and runs each in a subprocess from this checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import register as reg
from deployments.events import ingest_event
from deployments.params import ReleaseParams
from deployments.pools import CPU_POOL, GPU_POOL
from ragtune import stack
from tasks.settings import Settings
from tests.conftest import prefect_server

REPO = Path(__file__).resolve().parent.parent
NAMED_BY_THE_RUN = {"reindex-document": {"uris"}, "compare-approaches": {"questions"}}  # no sensible default
DEPLOYMENTS = {"ingest-documents", "ingest-documents-gpu", "reindex-document", "build-dataset", "finetune-model",
               "finetune-model-gpu", "promote-release", "release-pipeline", "compare-approaches"}


class Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/ragtune-failures"
    server.shutdown()


@pytest.fixture(scope="module")
def orch(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, webhook: str) -> Iterator[Settings]:
    """A real Prefect server on a free port; this process and the workers it starts point at it."""
    env = {"RAGTUNE_ORCHESTRATION__FAILURE_WEBHOOK_URL": webhook, "RAGTUNE_ORCHESTRATION__RELEASE_MIN_CHANGED": "2"}
    with prefect_server(tmp_path_factory.mktemp("orchestration"), model_cache, env) as settings:
        yield settings


@pytest.fixture(scope="module")
def registered(orch: Settings) -> dict[str, Any]:
    return reg.register(orch)


def client_call(settings: Settings, method: str, *args: Any, **kwargs: Any) -> Any:
    async def call() -> Any:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await getattr(client, method)(*args, **kwargs)

    return reg.on_server(settings, call())


def run_worker(settings: Settings) -> str:
    done = subprocess.run(reg.worker_argv(CPU_POOL, limit=2, run_once=True), cwd=REPO, env=reg.prefect_env(settings),
                          capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def deployment_runs(settings: Settings, deployment_id: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client_call(settings, "read_flow_runs",
                       deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def by_name(registered: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in registered["deployments"]}


def test_loss_curve_png_from_checkpoint_metrics(tmp_path: Path) -> None:
    from tasks.training.curves import loss_png, loss_points, publish_training_curves

    metrics = {"evals": [{"step": 0, "eval_loss": 2.5}, {"step": 20, "eval_loss": 2.1}],
               "train_losses": [{"step": 5, "loss": 2.4}, {"step": 10, "loss": 2.2}]}
    series = loss_points(metrics)
    assert series == {"eval loss": [(0, 2.5), (20, 2.1)], "train loss": [(5, 2.4), (10, 2.2)]}
    assert loss_png(series, "run").startswith(b"\x89PNG")
    assert publish_training_curves.fn(str(tmp_path))["published"] is False  # a run without metrics


def test_ingest_event_counts_changes_and_labels_release_worthiness() -> None:
    report = {"added": 3, "updated": 1, "deleted": 1, "unchanged": 40, "quarantined": 2, "quarantine": []}
    event = ingest_event("docs", "s3://corp/docs", report, min_changed=5)
    assert event["resource"]["prefect.resource.id"] == "ragtune.collection.docs"
    assert event["resource"]["ragtune.release-worthy"] == "true"
    assert event["payload"] == {"changed": 5, "min_changed": 5, "added": 3, "updated": 1, "deleted": 1,
                                "unchanged": 40, "quarantined": 2}
    assert ingest_event("docs", "docs", report, min_changed=6)["resource"]["ragtune.release-worthy"] == "false"


def test_stage_summaries_keep_what_a_person_reads() -> None:
    from flows.finetune import ModelComparison
    from flows.pipeline import STAGES, stage_summary
    from tasks.release.manifest import GateDecision
    from tasks.release.result import PromotionResult

    evaluation = ModelComparison(base={"loss": 5.1, "too_long": 0, "token_f1": 0.14},
                                 candidate={"loss": 4.5, "token_f1": 0.1})
    assert stage_summary("evaluate", evaluation, 61.0) == {"base": {"loss": 5.1, "token_f1": 0.14},
                                                           "candidate": {"loss": 4.5, "token_f1": 0.1}, "seconds": 61.0}
    assert stage_summary("evaluate", None, None) == {"seconds": None}  # evaluation switched off
    promote = PromotionResult(promoted=False, release_id=None,
                              decision=GateDecision(promote=False, reasons=["model.token_f1 regressed"]))
    assert stage_summary("promote", promote, 3.0)["reasons"] == ["model.token_f1 regressed"]
    assert STAGES == ("ingest", "dataset", "finetune", "evaluate", "promote")


def test_demo_summary_shows_base_vs_candidate_and_says_when_the_gate_refused() -> None:
    from ragtune.commands.demo import _human

    stages = {"evaluate": {"base": {"loss": 2.1, "token_f1": 0.14}, "candidate": {"loss": 2.4, "token_f1": 0.08},
                           "seconds": 61.0},
              "promote": {"promoted": False, "release_id": None, "reasons": ["REGRESSED: model.token_f1"]}}
    answer = {"text": "A generation is ... [1].", "release_id": None, "model": "SmolLM2",
              "cited": [{"n": 1, "uri": "docs/architecture.md", "how": "model"}]}
    result = {"stages": stages, "answer": answer, "promoted_release": None, "wall_s": 600.0, "ui_url": "http://u",
              "stop": "ragtune stack down", "seconds": {"stack": 20.0, "pipeline": 560.0, "ask": 20.0}}
    text = _human(result)
    assert "token_f1                0.140      0.080" in text
    assert "NO promoted release (the gate refused the candidate); served by release none" in text
    assert "cited: [1] docs/architecture.md" in text and "REGRESSED: model.token_f1" in text
    promoted = {**result, "promoted_release": "r-1", "answer": {**answer, "release_id": "r-1"}}
    assert "answer (release r-1, model SmolLM2)" in _human(promoted)


def test_cli_refuses_clearly_without_a_server_or_inputs(tmp_path: Path) -> None:
    ragtune = str(Path(reg.PREFECT).parent / "ragtune")
    dead = f"http://127.0.0.1:{stack.free_port()}/api"
    env = {**os.environ, "RAGTUNE_PREFECT__API_URL": dead, "RAGTUNE_DATA_DIR": str(tmp_path)}
    done = subprocess.run([ragtune, "deploy", "--no-worker"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"no Prefect server answers at {dead}" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run([ragtune, "demo", "--docs", str(tmp_path / "missing")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "missing does not exist" in done.stderr


def test_prefect_yaml_is_the_source_of_truth() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == DEPLOYMENTS
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {CPU_POOL, GPU_POOL}
    assert all("ragtune" in d["tags"] for d in spec["deployments"])
    chain = next(d for d in spec["deployments"] if d["name"] == "release-pipeline")["triggers"][0]
    event = ingest_event("docs", "docs", {"added": 15, "updated": 5, "deleted": 0}, min_changed=20)
    assert event["event"] in chain["expect"]
    assert all(event["resource"][k] == v for k, v in chain["match"].items() if "*" not in v)
    assert ingest_event("docs", "docs", {"added": 19}, min_changed=20)["resource"]["ragtune.release-worthy"] == "false"


@pytest.mark.integration
def test_register_deploys_every_deployment_with_schedules_and_triggers(registered: dict[str, Any]) -> None:
    found = by_name(registered)
    assert set(found) == DEPLOYMENTS
    assert found["ingest-documents"]["schedules"] == ["0 * * * *"]
    assert found["release-pipeline"]["schedules"] == ["0 2 * * *"]
    assert found["reindex-document"]["triggers"] == ["reindex-on-document-event"]
    assert found["release-pipeline"]["triggers"] == ["release-after-large-ingest"]
    assert found["finetune-model-gpu"]["work_pool"] == GPU_POOL
    assert found["ingest-documents-gpu"]["work_pool"] == GPU_POOL and found["ingest-documents-gpu"]["schedules"] == []
    assert registered["failure_automation"]["notifies"] == "send-notification"


@pytest.mark.integration
def test_every_deployment_runs_from_the_ui_without_edits(orch: Settings, registered: dict[str, Any]) -> None:
    """Each required parameter has a default, every form field a description, every schedule is active."""
    for name, info in by_name(registered).items():
        deployment = client_call(orch, "read_deployment", info["id"])
        schema = deployment.parameter_openapi_schema
        undescribed = [k for k, v in schema["properties"].items() if not v.get("description")]
        assert not undescribed, f"{name}: form fields without a description: {undescribed}"
        missing = set(schema.get("required", [])) - set(deployment.parameters)
        # reindex-document is event-driven: its trigger supplies the document; a UI run has to name one.
        # compare-approaches compares on the user's own questions: a UI run has to name the QA file.
        assert missing == NAMED_BY_THE_RUN.get(name, set()), f"{name}: no default for {missing}"
        schedules = client_call(orch, "read_deployment_schedules", deployment.id)
        assert all(s.active for s in schedules)
    pipeline = client_call(orch, "read_deployment", by_name(registered)["release-pipeline"]["id"])
    form = pipeline.parameter_openapi_schema["definitions"]["ReleaseParams"]["properties"]
    assert set(form) == set(ReleaseParams.model_fields)
    assert all(field.get("description") and "default" in field for field in form.values())


@pytest.fixture(scope="module")
def ingested(orch: Settings, registered: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ingest-documents run created through the API with parameters, as the UI's form does, run by a worker."""
    docs = tmp_path_factory.mktemp("corpus")
    (docs / "alpha.md").write_text("# Alpha\n\nAlpha documents describe the zebra-crossing protocol.\n")
    (docs / "beta.md").write_text("# Beta\n\nBeta documents describe the heron migration schedule.\n")
    params = {"source": str(docs), "collection": "orchtest"}
    flow_run = client_call(orch, "create_flow_run_from_deployment", by_name(registered)["ingest-documents"]["id"],
                           parameters=params)
    log = run_worker(orch)
    return {"flow_run": flow_run, "params": params, "log": log, "chained": _take_chained_runs(orch, registered)}


def _take_chained_runs(orch: Settings, registered: dict[str, Any]) -> list[Any]:
    """release-pipeline runs the ingestion's completion event started; deleted so no worker ever runs them."""
    pipeline_id = by_name(registered)["release-pipeline"]["id"]
    try:
        runs = _wait_for(lambda: [r for r in deployment_runs(orch, pipeline_id) if not r.auto_scheduled], 30)
    except AssertionError:
        return []
    for run in runs:
        client_call(orch, "delete_flow_run", run.id)
    return runs


@pytest.mark.integration
def test_run_a_deployment_with_parameters_as_the_ui_does(orch: Settings, ingested: dict[str, Any]) -> None:
    done = client_call(orch, "read_flow_run", ingested["flow_run"].id)
    assert done.state.is_completed(), ingested["log"][-3000:]
    assert done.parameters == ingested["params"]
    artifacts = client_call(orch, "read_artifacts", flow_run_filter=_run_filter(done.id))
    report = next(a for a in artifacts if a.key == "ingest-report")
    assert "| added | 2 |" in report.data


@pytest.mark.integration
def test_a_large_scheduled_ingestion_chains_a_release(ingested: dict[str, Any]) -> None:
    """The ingestion changed 2 documents (the module sets release_min_changed=2): its completion event
    started release-pipeline for the same collection and source (the fixture deleted it unrun)."""
    assert [r.parameters["params"] for r in ingested["chained"]] == [
        {"collection": "orchtest", "docs": ingested["params"]["source"]}]


@pytest.mark.integration
def test_document_event_reindexes_exactly_that_document(orch: Settings, registered: dict[str, Any],
                                                        tmp_path: Path) -> None:
    doc = tmp_path / "gamma.md"
    doc.write_text("# Gamma\n\nGamma documents describe the lighthouse keeper rota.\n")
    uri = doc.as_uri()
    deployment_id = by_name(registered)["reindex-document"]["id"]
    for _ in range(3):  # a burst of saves of one document: one run (the trigger's 30 s window)
        subprocess.run([str(reg.PREFECT), "event", "emit", "ragtune.document.changed", "--resource-id", uri],
                       env=reg.prefect_env(orch), check=True, capture_output=True)
    runs = _wait_for(lambda: deployment_runs(orch, deployment_id), timeout_s=30)
    time.sleep(3)  # would a second run appear for the repeated events?
    runs = deployment_runs(orch, deployment_id)
    assert [r.parameters for r in runs] == [{"uris": [uri], "source": ""}]
    log = run_worker(orch)
    done = client_call(orch, "read_flow_run", runs[0].id)
    assert done.state.is_completed(), log[-3000:]


@pytest.mark.integration
def test_failed_run_notifies_the_configured_webhook(orch: Settings, registered: dict[str, Any]) -> None:
    deployment_id = by_name(registered)["build-dataset"]["id"]
    flow_run = client_call(orch, "create_flow_run_from_deployment", deployment_id,
                           parameters={"examples": "/nonexistent/examples.jsonl"})
    run_worker(orch)
    assert client_call(orch, "read_flow_run", flow_run.id).state.is_failed()
    notices = _wait_for(lambda: [m for m in Webhook.received if flow_run.name in m["subject"]], timeout_s=30)
    assert "build-dataset" in notices[0]["subject"] and "Failed" in notices[0]["subject"]
    assert "/nonexistent/examples.jsonl" in notices[0]["text"]


def _run_filter(flow_run_id: Any) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def _wait_for(probe: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"nothing after {timeout_s} s")


@pytest.mark.integration
def test_pools_refuse_a_type_clash(orch: Settings, registered: dict[str, Any]) -> None:
    from deployments.pools import ensure_work_pools

    async def clash() -> None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            await ensure_work_pools(client, "kubernetes")

    with pytest.raises(ValueError, match="exists with type 'process'"):
        reg.on_server(orch, clash())
