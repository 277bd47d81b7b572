"""Start the real API in a subprocess on loopback, for benchmarks that drive it over HTTP."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
        self.port = free_port()
        self.key = "bench-" + secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DRIFTLINE_HOME": str(self.home),
            "DRIFTLINE_BOOTSTRAP_KEY": self.key,
            "DRIFTLINE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "driftline.ingest.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=self.env,
            stderr=(self.home / "server.log").open("wb"),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the API did not start: " + (self.home / "server.log").read_text()[-2000:])

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        import shutil

        shutil.rmtree(self.home, ignore_errors=True)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def server_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
