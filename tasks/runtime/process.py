"""Process-wide switches, applied once where a process starts: the CLI, the HTTP API and every flow run.

A deployment's flow run is a process of its own (a worker starts it), so flows read their settings with
``process_settings`` rather than ``get_settings``: the same settings, with these switches applied.
"""

from __future__ import annotations

from tasks.settings import Settings, get_settings


def start_process(settings: Settings) -> Settings:
    """Apply the process-wide switches ``settings`` ask for (idempotent) and return them."""
    from tasks.stores.milvus_lite import search as lite_search

    # Milvus Lite runs inside this process: its search code is patched (or restored) for the whole process
    lite_search.enable() if settings.milvus.lite_fast_search else lite_search.disable()
    return settings


def process_settings() -> Settings:
    """This process's settings, read from its environment, with the process-wide switches applied."""
    return start_process(get_settings())
