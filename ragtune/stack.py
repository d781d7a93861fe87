"""The local stack: SeaweedFS (S3), Prefect server, optional Milvus server — real services on loopback.

Each service is a child process with a pid file and a log under ``<data_dir>/stack``; start is
idempotent (a healthy service is left alone), stop kills the whole process group (no orphans).
Test fixtures use the same functions on free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.settings import Settings

BIN = Path(sys.executable).parent


@dataclass
class Service:
    name: str
    argv: list[str]
    home: Path
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def read_pid(service: Service) -> int | None:
    try:
        pid = int(service.pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(service: Service) -> int:
    """Start the service unless it already runs; wait until healthy or raise with its log tail."""
    pid = read_pid(service)
    if pid and service.healthy():
        return pid
    service.home.mkdir(parents=True, exist_ok=True)
    log = service.log_file.open("ab")
    proc = subprocess.Popen(  # its own session: `stop` kills the group, nothing is orphaned
        service.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=service.home, env={**os.environ, **service.env}, start_new_session=True,
    )
    service.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + service.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited at start (code {proc.returncode}):\n{_tail(service)}")
        if service.healthy():
            return proc.pid
        time.sleep(0.3)
    stop(service)
    raise RuntimeError(f"{service.name} not healthy after {service.start_timeout_s:.0f}s:\n{_tail(service)}")


def stop(service: Service, timeout_s: float = 15.0) -> bool:
    pid = read_pid(service)
    service.pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):  # reap our child, so it does not linger as a zombie
        os.waitpid(pid, os.WNOHANG)
    return True


def _tail(service: Service, lines: int = 20) -> str:
    try:
        return "\n".join(service.log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def seaweedfs(settings: Settings, home: Path | None = None) -> Service:
    """`weed mini` with S3 on settings' port, credentials from settings, every other port derived."""
    home = home or settings.data_dir / "stack"
    port = settings.s3.port
    config = home / "seaweedfs-s3.json"
    home.mkdir(parents=True, exist_ok=True)
    identity = {
        "name": "ragtune",
        "credentials": [{
            "accessKey": settings.s3.access_key_id.get_secret_value(),
            "secretKey": settings.s3.secret_access_key.get_secret_value(),
        }],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    config.chmod(0o600)
    ports = _derived_ports(port)
    argv = [
        str(BIN / "weed"), "mini", f"-dir={home / 'seaweedfs'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={port}", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false", "-admin.ui=false",
        *(f"-{flag}={value}" for flag, value in ports.items()),
    ]
    return Service("seaweedfs", argv, home, lambda: port_open(port) and http_ok(f"http://127.0.0.1:{port}/healthz"))


def _derived_ports(s3_port: int) -> dict[str, int]:
    """SeaweedFS opens a dozen ports; derive them from the S3 port so two stacks never collide."""
    names = ["s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc", "debug.port"]
    return {name: _offset_port(s3_port, i + 1) for i, name in enumerate(names)}


def _offset_port(base: int, offset: int) -> int:
    port = base + offset * 7
    return port if port < 65535 else 20000 + (port % 40000)


def prefect_server(settings: Settings, home: Path | None = None) -> Service:
    home = home or settings.data_dir / "stack"
    port = settings.prefect.port
    env = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return Service("prefect", argv, home, lambda: http_ok(f"http://127.0.0.1:{port}/api/health"),
                   env=env, start_timeout_s=120)


def milvus_server(settings: Settings, home: Path | None = None) -> Service:
    """A real Milvus 2.3 standalone (the `milvus` package) for the server code path."""
    home = home or settings.data_dir / "stack"
    port = settings.milvus.server_port
    argv = [str(BIN / "milvus-server"), "--data", str(home / "milvus"), "--proxy-port", str(port),
            *_milvus_port_flags(port)]
    # Milvus 2.3 serves /healthz on its fixed metrics port 9091: one Milvus server per machine.
    return Service("milvus", argv, home, lambda: port_open(port) and http_ok("http://127.0.0.1:9091/healthz"),
                   start_timeout_s=180)


def _milvus_port_flags(port: int) -> list[str]:
    flags = ["etcd-port", "root-coord-port", "proxy-internal-port", "query-coord-port",
             "query-node-port", "index-coord-port", "index-node-port", "data-coord-port", "data-node-port"]
    return [arg for i, flag in enumerate(flags) for arg in (f"--{flag}", str(_offset_port(port, i + 1)))]


def services(settings: Settings, with_milvus: bool = False) -> list[Service]:
    found = [seaweedfs(settings), prefect_server(settings)]
    return found + [milvus_server(settings)] if with_milvus else found


def require_binaries() -> None:
    for name in ("weed", "prefect"):
        if not (BIN / name).exists() and shutil.which(name) is None:
            raise RuntimeError(f"`{name}` not found next to {sys.executable}: run `make test` to install")
