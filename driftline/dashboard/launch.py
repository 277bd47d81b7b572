"""Run the dashboard as `streamlit run` in a child process.

The API URL and key reach the child through its environment (`DRIFTLINE_API_URL`,
`DRIFTLINE_API_KEY`), never its command line, which any local user can read with ps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

URL_ENV = "DRIFTLINE_API_URL"
KEY_ENV = "DRIFTLINE_API_KEY"
APP = Path(__file__).with_name("app.py")


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line: only settings, never the key."""
    return [
        sys.executable,
        "-m",
        "driftline.dashboard",  # streamlit's command, after importing what every page needs
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--theme.base",
        "light",
    ]


def environment(api: str, key: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env[URL_ENV] = api.rstrip("/")
    env[KEY_ENV] = key
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return env


def start(
    api: str,
    key: str,
    *,
    port: int = 8501,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start the dashboard and return at once; the caller owns the process."""
    if not api or not key:
        raise ValueError("the dashboard needs the API's URL and a key")
    return subprocess.Popen(  # noqa: S603 - a fixed command of this interpreter
        command(port, host),
        env=environment(api, key, env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return int(proc.returncode or 0)


def run(api: str, key: str, *, port: int = 8501, host: str = "127.0.0.1", grace: float = 10.0) -> int:
    """Run in the foreground until the child exits or Ctrl-C / SIGTERM stops both.

    The signal handler only passes SIGTERM on: waiting for the child inside the handler
    would wait on the very `wait` it interrupted, which then never returns.
    """
    proc = start(api, key, port=port, host=host)
    asked: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        asked.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0] > grace:
                    proc.kill()
            except KeyboardInterrupt:  # the child got the same SIGINT from the terminal
                forward(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            stop(proc)
