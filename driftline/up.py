"""`driftline up`: the whole stack on this machine, supervised, stopped cleanly by Ctrl-C.

The API (with its scheduler) owns the embedded store, so it runs in one process; the
dashboard runs in another and reads through the API. With `--demo`, a local webhook
receiver logs every notification it gets, and the demo scenario is loaded through the
public API before the URLs are printed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import httpx


def free_port(preferred: int) -> int:
    """`preferred` when it is free, else any free port on loopback."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url} exited with code {proc.returncode} before answering")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Receiver:
    """A webhook receiver on loopback that logs what it gets: where the demo's alerts go."""

    def __init__(self, log_path: Path, echo: Callable[[str], None]) -> None:
        self.log_path = log_path
        self.echo = echo
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver.got(self.headers.get("idempotency-key", ""), body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="driftline-receiver", daemon=True
        )

    def got(self, key: str, body: bytes) -> None:
        self.count += 1
        with self.log_path.open("ab") as f:
            f.write(body + b"\n")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        what = payload.get("title") or payload.get("event") or payload.get("kind") or "notification"
        self.echo(f"  webhook received: {what} (key {key[:12]})")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Stack:
    """The API and dashboard processes, and on --demo the receiver."""

    def __init__(
        self, home: Path, api_port: int, dashboard_port: int, key: str, echo: Callable[[str], None]
    ) -> None:
        self.home = home
        self.api_port = api_port
        self.dashboard_port = dashboard_port
        self.key = key
        self.echo = echo
        self.procs: list[subprocess.Popen[bytes]] = []
        self.receiver: Receiver | None = None
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DRIFTLINE_HOME": str(self.home), "DRIFTLINE_BOOTSTRAP_KEY": self.key})
        env.setdefault("DRIFTLINE_PUBLIC_URL", self.dashboard_url)
        return env

    def start(self, *, dashboard: bool = True) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        api = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "driftline", "serve", "--port", str(self.api_port)],
            env=self.env(),
            stdout=(logs / "api.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(api)
        wait_http(self.api_url + "/readyz", 90, api)
        if dashboard:
            env = self.env() | {"DRIFTLINE_API_URL": self.api_url, "DRIFTLINE_API_KEY": self.key}
            dash = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "driftline",
                    "dashboard",
                    "--api",
                    self.api_url,
                    "--port",
                    str(self.dashboard_port),
                ],
                env=env,
                stdout=(logs / "dashboard.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
            self.procs.append(dash)
            wait_http(self.dashboard_url + "/_stcore/health", 90, dash)

    def demo(self) -> dict[str, Any]:
        from driftline import demo

        self.receiver = Receiver(self.home / "webhook.log", self.echo)
        self.receiver.start()
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=60) as client:
            got = client.post(
                "/v1/channels",
                json={
                    "name": "demo-receiver",
                    "type": "webhook",
                    "url": self.receiver.url,
                    "secret": secrets.token_urlsafe(24),
                    "default": True,
                    "description": "A local receiver that logs what it gets (driftline up --demo)",
                },
            )
            if got.status_code not in (201, 409):
                got.raise_for_status()
        result = demo.load(self.api_url, self.key, setup=self._after_registration)
        return result

    def _after_registration(self, model: str) -> None:
        """A retraining policy, so that persistent drift proposes a trigger to approve."""
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=60) as client:
            client.post(
                "/v1/retraining-policies",
                json={
                    "model": model,
                    "webhook_url": self.receiver.url if self.receiver else "http://127.0.0.1:9/hook",
                    "webhook_secret": secrets.token_urlsafe(24),
                },
            )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.receiver is not None:
            self.receiver.stop()

    def wait(self) -> int:
        """Block until Ctrl-C, SIGTERM or a child dying; returns the exit code."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop.wait(0.5):
            for proc in self.procs:
                if proc.poll() is not None:
                    self.echo(f"a process exited with code {proc.returncode}; see {self.home / 'logs'}")
                    return 1
        return 0


def demo_home(base: Path) -> Path:
    """The demo's own data dir under home, made fresh at each start (its timeline starts now)."""
    home = base / "demo"
    if home.exists():
        shutil.rmtree(home)
    return home
