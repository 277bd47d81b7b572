"""The real driftline API in a child process, for tests that need a server to talk to or kill.

Each instance owns a temp dir (DRIFTLINE_HOME under it, and the server's captured output)
and a port on 127.0.0.1. kill() and restart() keep both, as crash tests need: a restarted
server replays its spool from the same home on the same URL. stop() removes the dir unless
told to keep it. The process asks Linux to SIGKILL it if the thread that started it dies, so
an aborted test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class LiveServerError(RuntimeError):
    """The server did not start, or did not answer /healthz in time."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port on 127.0.0.1 outside the ephemeral range.

    The kernel hands ephemeral ports to outgoing connections and to bind(0). A server killed
    in a test must get its port back on restart: had the port come from that range, a client
    retrying against the dead server could be given it as its own source port (TCP
    self-connect) or another process could take it, and the restart would fail to bind.
    """
    low, _ = _ephemeral_range()
    if low > 12_000:
        rng = random.Random()
        for _ in range(200):
            port = rng.randrange(10_000, low)
            if _bindable(port, reuse=False):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _bindable(port: int, *, reuse: bool = True) -> bool:
    """Whether uvicorn could bind the port now (it sets SO_REUSEADDR, so TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return hook


class _Handle:
    """What the finalizer needs, apart from the server object so it does not keep it alive."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.keep_dir = False


def _cleanup(handle: _Handle) -> None:
    if handle.proc is not None and handle.proc.poll() is None:
        handle.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            handle.proc.wait(timeout=10)
    if not handle.keep_dir:
        shutil.rmtree(handle.base, ignore_errors=True)


class LiveServer:
    """`uvicorn --factory driftline.ingest.app:create_app` on a free port of 127.0.0.1."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        start_timeout: float = 60.0,
        keep_dir: bool = False,
    ) -> None:
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.admin_key = secrets.token_urlsafe(24)  # 32 characters
        self._port = port or free_port()
        self._port_fixed = port is not None
        self._started_once = False
        self._handle = _Handle(Path(tempfile.mkdtemp(prefix="driftline-live-")))
        self._handle.keep_dir = keep_dir
        self._finalizer = weakref.finalize(self, _cleanup, self._handle)
        self.home.mkdir()

    # -- what tests use -------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._port}"

    @property
    def base_dir(self) -> Path:
        return self._handle.base

    @property
    def home(self) -> Path:
        return self._handle.base / "home"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr, appended across restarts."""
        return self._handle.base / "server.log"

    @property
    def pid(self) -> int | None:
        proc = self._handle.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def keep_dir(self) -> bool:
        return self._handle.keep_dir

    @keep_dir.setter
    def keep_dir(self, value: bool) -> None:
        self._handle.keep_dir = value

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start and return once GET /healthz answers 200 (the app's stores are open by then)."""
        if self.running:
            raise LiveServerError(f"the server is already running (pid {self.pid})")
        if not self.base_dir.exists():
            raise LiveServerError("the server was stopped for good; its dir is gone")
        # A first start on a port we picked may move to another if someone took it; a
        # restart must keep its URL, so it waits for the port to be free instead.
        may_move = not self._started_once and not self._port_fixed
        attempts = 3
        for attempt in range(attempts):
            self._wait_bindable(timeout=0.0 if may_move else 10.0)
            if not _bindable(self._port) and may_move:
                self._port = free_port()
            self._spawn()
            try:
                self._wait_healthy()
            except LiveServerError:
                clash = "address already in use" in self._last_output().lower()
                if attempt + 1 == attempts or not clash:
                    raise
                self._reap(timeout=5)
                if may_move:
                    self._port = free_port()
                continue
            self._started_once = True
            return

    def stop(self, timeout: float = 15.0, *, keep_dir: bool | None = None) -> None:
        """SIGTERM and wait (SIGKILL after `timeout`); then remove the dir unless kept."""
        self._signal(signal.SIGTERM, timeout)
        keep = self._handle.keep_dir if keep_dir is None else keep_dir
        if not keep:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL now and reap: a crash. Home, port and env stay for restart()."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        """Stop gracefully if running, then start on the same home, port and environment."""
        if self.running:
            self.stop(keep_dir=True)
        self.start()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LiveServer(url={self.url!r}, pid={self.pid})"

    # -- internals ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
        env.update(
            {
                "DRIFTLINE_HOME": str(self.home),
                "DRIFTLINE_BOOTSTRAP_KEY": self.admin_key,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(self) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "driftline.ingest.app:create_app",
            "--host",
            HOST,
            "--port",
            str(self._port),
            "--log-level",
            "warning",
        ]
        with self.log_path.open("ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')} port {self._port}\n".encode())
            out.flush()
            self._handle.proc = subprocess.Popen(
                command,
                cwd=self.base_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches pytest, which then stops the server
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )

    def _wait_healthy(self) -> None:
        proc = self._handle.proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        last: str = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    self._reap(timeout=5)
                    raise LiveServerError(
                        f"the server exited with code {code} during start-up; its output:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(f"{self.url}/healthz")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.05)
        self._signal(signal.SIGKILL, 10.0)
        raise LiveServerError(
            f"the server on {self.url} did not answer /healthz within {self.start_timeout:.0f} s "
            f"(last: {last}); its output:\n{self.log_tail()}"
        )

    def _last_output(self) -> str:
        """What the latest start printed (the log holds every start's output)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text.rpartition("--- start ")[2]

    def _wait_bindable(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _bindable(self._port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._handle.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        self._reap(timeout)

    def _reap(self, timeout: float) -> None:
        proc = self._handle.proc
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        self._handle.proc = None
