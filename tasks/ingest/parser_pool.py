"""Parsing in isolation: one worker process per slot, killed and replaced on timeout or crash.

Every file parses in a separate process with a wall-clock and an address-space bound: a hostile file
(zip bomb, fuzzed PDF, 50 MB single line) can only cost its own parse, never the run. Workers are
plain subprocesses (``python -m tasks.ingest.parsing``, which runs ``serve``) rather than
multiprocessing "spawn": spawn re-runs the caller's __main__, which breaks any script without a main guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from tasks.ingest import narrative
from tasks.ingest.parsing import (
    NO_LANGUAGE,
    Element,
    ParseError,
    ParseLimits,
    configure_pandoc,
    parse_file,
    use_rst_reader,
)
from tasks.ingest.spacy_model import use_packaged_model


def serve(config: str) -> None:
    """The worker's loop: ``config`` is the JSON its pool passed (limits, spaCy choice); files in, elements out."""
    import resource

    options = json.loads(config)
    limits = ParseLimits(**options["limits"])

    # spaCy's thinc imports torch whenever it can (seconds and hundreds of MB per worker: docs/ingestion.md),
    # and no parser here uses it. A None entry makes `import torch` fail, so thinc runs its torch-free path.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    bound = limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (bound, bound))
    out = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # parsers print notices; stdout carries only the protocol
    inbox = Connection(0, writable=False)
    narrative.use_batched(options.get("batch_nlp", True))
    use_rst_reader(options.get("rst_reader", "docutils"))
    _preload(options["packaged_spacy"])
    out.send(("ready", None))  # the parent starts a file's clock only now: imports are not the file's fault
    while True:
        try:
            path, suffix = inbox.recv()
        except EOFError:
            return
        try:
            out.send(("ok", parse_file(Path(path), suffix, limits)))
        except ParseError as exc:
            out.send(("error", str(exc)))
        except BaseException as exc:  # noqa: BLE001 - report, then let the parent replace us
            out.send(("error", f"parser crashed: {type(exc).__name__}: {str(exc)[:200]}"))


def _preload(packaged_spacy: bool) -> None:
    """Warm the common paths (imports, spaCy, markdown) once per worker, not inside a file's time bound."""
    from unstructured.partition.md import partition_md
    from unstructured.partition.text import partition_text

    use_packaged_model(packaged_spacy)
    configure_pandoc()
    partition_md(text="# Warm up\n\nA sentence to parse.", languages=NO_LANGUAGE)
    partition_text(text="Another sentence to tag.", languages=NO_LANGUAGE)


@dataclass
class _Slot:
    process: subprocess.Popen[bytes]
    inbox: Connection
    outbox: Connection
    job: tuple[str, float] | None = None  # (key, deadline)


class ParserPool:
    """Parse files in worker processes; a file that fails, crashes or overruns yields a reason."""

    def __init__(self, workers: int, limits: ParseLimits, packaged_spacy: bool = True, batch_nlp: bool = True,
                 rst_reader: str = "docutils"):
        self.limits, self.packaged_spacy, self.batch_nlp = limits, packaged_spacy, batch_nlp
        self.rst_reader = rst_reader
        self._slots = [self._spawn() for _ in range(max(1, workers))]
        for slot in self._slots:
            self._wait_ready(slot)

    def __enter__(self) -> ParserPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for slot in self._slots:
            self._kill(slot)

    def _spawn(self) -> _Slot:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        config = json.dumps({"limits": asdict(self.limits), "packaged_spacy": self.packaged_spacy,
                             "batch_nlp": self.batch_nlp, "rst_reader": self.rst_reader})
        argv = [sys.executable, "-m", "tasks.ingest.parsing", config]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root)
        assert process.stdin and process.stdout
        return _Slot(process, Connection(process.stdout.fileno(), writable=False),
                     Connection(process.stdin.fileno(), readable=False))

    def _wait_ready(self, slot: _Slot, timeout_s: float = 300.0) -> None:
        why = f"it did not start within {timeout_s:g} s"
        try:
            if slot.inbox.poll(timeout_s):
                message = slot.inbox.recv()
                if message[0] == "ready":
                    return
                why = f"it sent {str(message)[:200]!r} instead of 'ready'"
        except (EOFError, OSError) as exc:
            why = f"its pipe closed ({type(exc).__name__}: something in it wrote to stdout, or it died)"
        self._kill(slot)
        raise RuntimeError(f"a parser process failed to start: {why} (exit code {slot.process.returncode}; "
                           f"memory bound {self.limits.memory_mb} MiB; its errors are on stderr above)")

    @staticmethod
    def _kill(slot: _Slot) -> None:
        if slot.process.poll() is None:
            slot.process.kill()
        slot.process.wait(5)
        for conn in (slot.inbox, slot.outbox):
            conn._handle = None  # type: ignore[attr-defined]  # the Popen's pipes own the fds
        for pipe in (slot.process.stdin, slot.process.stdout):
            if pipe:
                pipe.close()

    def parse(self, jobs: Sequence[tuple[str, Path, str]]) -> Iterator[tuple[str, list[Element] | str]]:
        """For each (key, path, suffix): (key, elements) or (key, quarantine reason), as they finish."""
        pending = list(reversed(jobs))
        while pending or any(s.job for s in self._slots):
            for i, slot in enumerate(self._slots):
                if slot.job is None and pending:
                    key, path, suffix = pending.pop()
                    slot.job = (key, time.monotonic() + self.limits.timeout_s)
                    try:
                        slot.outbox.send((str(path), suffix))
                    except OSError:  # the worker died between jobs: replace it and retry
                        self._kill(slot)
                        self._slots[i] = self._spawn()
                        self._wait_ready(self._slots[i])
                        pending.append((key, path, suffix))
            yield from self._collect()

    def _collect(self) -> Iterator[tuple[str, list[Element] | str]]:
        busy = [s for s in self._slots if s.job]
        timeout = max(0.0, min(s.job[1] for s in busy if s.job) - time.monotonic())
        ready = wait([s.inbox for s in busy], timeout=timeout)
        for i, slot in enumerate(self._slots):
            if slot.job is None:
                continue
            key, deadline = slot.job
            if slot.inbox in ready:
                try:
                    status, value = slot.inbox.recv()
                    slot.job = None
                    yield key, (value if status == "ok" else str(value))
                    continue
                except (EOFError, OSError):
                    code = slot.process.wait(5)
                    reason = f"parser process died (exit code {code}: memory bound or crash)"
            elif time.monotonic() >= deadline:
                reason = f"timeout: parsing took longer than {self.limits.timeout_s:g} s"
            else:
                continue
            self._kill(slot)
            self._slots[i] = self._spawn()
            self._wait_ready(self._slots[i])
            yield key, reason


def default_workers(requested: int = 0) -> int:
    """``requested`` workers, or one per free core but one, at least 1 and at most 2: the embedder, in the run's own
    process, needs a core beside the parsers. On this 2-vCPU host a second parser made the Ray docs ingestion
    slower, 116 s -> 125 s (its imports and the cores it took from the embedder cost more than its parsing saved:
    docs/ingestion.md)."""
    from tasks.runtime.cpu import free_cores

    return requested or max(1, min(2, free_cores() - 1))
