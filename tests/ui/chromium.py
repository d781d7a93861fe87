"""Headless Chromium driven over the DevTools protocol: open a page, wait for what it renders, read it, screenshot it.

Only the standard library and `websockets` (a Prefect dependency): no browser-automation package.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Page:
    """One browser tab: navigate, evaluate JavaScript, wait for a condition, capture a PNG."""

    def __init__(self, socket: Any) -> None:
        self._socket, self._ids = socket, itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        sent = next(self._ids)
        self._socket.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:  # no domain is enabled, but skip any event all the same
            reply = json.loads(self._socket.recv())
            if reply.get("id") == sent:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout_s: float = 60.0) -> bool:
        """Poll until ``expression`` is truthy; False when it never was within the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, path: Path) -> Path:
        """The whole page (page coordinates = pixels: the scale factor is 1)."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def headless(command: str, home: Path, width: int = 1400, height: int = 1800) -> Iterator[Page]:
    """Chromium (``command``, e.g. `chromium`) headless with a private profile under ``home``; yields its tab."""
    from websockets.sync.client import connect

    home.mkdir(parents=True, exist_ok=True)
    (home / "profile" / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's is stale
    argv = [*shlex.split(command), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--force-device-scale-factor=1", "--remote-debugging-port=0",
            f"--user-data-dir={home / 'profile'}", f"--window-size={width},{height}", "about:blank"]
    log = (home / "chromium.log").open("wb")
    # its own process group: the renderer and GPU helpers go with it
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with connect(_page_socket(home / "profile", process), max_size=None, open_timeout=30) as socket:
            yield Page(socket)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _page_socket(profile: Path, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> str:
    """The tab's DevTools WebSocket: Chromium writes its chosen port to DevToolsActivePort."""
    deadline, port_file = time.monotonic() + timeout_s, profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited at start (code {process.returncode}): "
                               f"see {profile.parent}/chromium.log")
        if port_file.exists() and (port := port_file.read_text().split("\n")[0].strip()):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
                    pages = [t for t in json.load(resp) if t.get("type") == "page"]
            except OSError:  # written a moment before the port listens
                pages = []
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
        time.sleep(0.2)
    raise RuntimeError(f"chromium opened no DevTools port within {timeout_s:.0f}s: see {profile.parent}/chromium.log")
