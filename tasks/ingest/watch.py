"""`ragtune watch`: poll a source and emit Prefect events for documents that changed or vanished.

Events: ``ragtune.document.changed`` / ``ragtune.document.deleted`` with resource id = document URI
and the label ``ragtune.source`` = the source root, payload = size and version. A change is emitted
once the document has stayed the same for ``debounce_s`` (a burst of writes is one event), and a
document that returns to the state already announced emits nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tasks.ingest.inventory import Source

CHANGED = "ragtune.document.changed"
DELETED = "ragtune.document.deleted"
State = tuple[int, str]


def snapshot(source: Source) -> dict[str, State]:
    return {f.uri: (f.size, f.version) for f in source.list()}


def emit_document_event(event: str, uri: str, source_uri: str, state: State | None) -> dict[str, Any]:
    from prefect.events import emit_event

    payload = {"size": state[0], "version": state[1]} if state else {}
    emit_event(event=event, resource={"prefect.resource.id": uri, "ragtune.source": source_uri}, payload=payload)
    return {"event": event, "uri": uri, **payload}


def watch_source(source: Source, interval_s: float, debounce_s: float, polls: int | None = None,
                 echo: Callable[[str], None] = print, emit: Callable[..., dict[str, Any]] = emit_document_event,
                 ) -> list[dict[str, Any]]:
    """Poll until interrupted (or ``polls`` listings, the first being the baseline); returns the events."""
    announced = snapshot(source)
    pending: dict[str, tuple[State | None, float]] = {}
    emitted: list[dict[str, Any]] = []
    done = 1
    try:
        while polls is None or done < polls:
            time.sleep(interval_s)
            done += 1
            final = polls is not None and done >= polls
            for event in _poll(source, announced, pending, debounce_s, final, emit):
                echo(f"{event['event']} {event['uri']}")
                emitted.append(event)
    except KeyboardInterrupt:
        pass
    return emitted


def _poll(source: Source, announced: dict[str, State], pending: dict[str, tuple[State | None, float]],
          debounce_s: float, final: bool, emit: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    now, current = time.monotonic(), snapshot(source)
    for uri in set(announced) | set(current) | set(pending):
        state = current.get(uri)
        if state == announced.get(uri):
            pending.pop(uri, None)  # back to what was announced: nothing to say
        elif uri not in pending or pending[uri][0] != state:
            pending[uri] = (state, now)  # (still) moving: restart its quiet period
    out = []
    for uri, (state, since) in list(pending.items()):
        if final or now - since >= debounce_s:
            out.append(emit(CHANGED if state else DELETED, uri, source.uri, state))
            if state is None:
                announced.pop(uri, None)
            else:
                announced[uri] = state
            del pending[uri]
    return out
