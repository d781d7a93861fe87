"""Process-wide switches, applied once where a process starts: the CLI, the HTTP API and every flow run.

A deployment's flow run is a process of its own (a worker starts it), so flows read their settings with
``process_settings`` rather than ``get_settings``: the same settings, with these switches applied.
"""

from __future__ import annotations

import os

from tasks.settings import Settings, get_settings

# Telemetry off unless the user's environment says otherwise (offline, each attempt logged "Failed to send
# telemetry"). PREFECT_SERVER_ANALYTICS_ENABLED: the heartbeat of a Prefect server, including the ephemeral
# API a CLI command or `python -m flows.X` starts as a subprocess of this one; DO_NOT_TRACK: Prefect's SDK
# events and first-run notice (and huggingface_hub's telemetry). Child processes inherit both.
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def telemetry_off_by_default() -> None:
    """Set each ``TELEMETRY_OFF`` variable the environment does not already set (a user's value wins)."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


# On import as well: a flow module imports this before its first run starts Prefect's ephemeral API.
telemetry_off_by_default()


def start_process(settings: Settings) -> Settings:
    """Apply the process-wide switches ``settings`` ask for (idempotent) and return them."""
    from tasks.stores.milvus_lite import search as lite_search

    telemetry_off_by_default()

    # Milvus Lite runs inside this process: its search code is patched (or restored) for the whole process
    lite_search.enable() if settings.milvus.lite_fast_search else lite_search.disable()
    return settings


def process_settings() -> Settings:
    """This process's settings, read from its environment, with the process-wide switches applied."""
    return start_process(get_settings())
