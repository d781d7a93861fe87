"""Telemetry is off by default in ragtune's processes (offline, Prefect logged "Failed to send telemetry" on
every run), and a user's own setting wins. Each case is a fresh process: the switch must be in place before
Prefect is imported or starts its ephemeral API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

VARIABLES = ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")
ENV = "import os; print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'], os.environ['DO_NOT_TRACK'], end=' '); "
SERVER = "from prefect.settings import get_current_settings; print(get_current_settings().server.analytics_enabled)"
# The CLI sets them before Prefect is imported: Prefect's own settings agree. A flow module imports Prefect
# first; what matters there is the environment, which Prefect's ephemeral API subprocess is started with.
CLI = ("from typer.testing import CliRunner; from ragtune.cli import app; "
       "assert CliRunner().invoke(app, ['config']).exit_code == 0; " + ENV + SERVER)
FLOW = "import flows.evaluate_retrieval; " + ENV + "print()"  # what `python -m flows.evaluate_retrieval` runs first


def run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(("code", "off", "on"), [(CLI, "false 1 False", "true 0 True"), (FLOW, "false 1", "true 0")],
                         ids=["cli", "flow"])
def test_telemetry_is_off_by_default_and_a_users_setting_wins(code: str, off: str, on: str) -> None:
    assert run(code) == off
    assert run(code, PREFECT_SERVER_ANALYTICS_ENABLED="true", DO_NOT_TRACK="0") == on
