"""`driftline serve` in a child process, and a webhook receiver that repeats what it was sent.

LiveServer starts uvicorn on the app factory, which leaves logging as uvicorn set it. The
command operators run, `driftline serve`, configures driftline's own structured logs; tests
that judge what the logs hold start that command, at DEBUG, and read its captured output.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.support.live_server import HOST, LiveServer, _die_with_parent


class ServedApi(LiveServer):
    """A LiveServer running `python -m driftline serve` (port and host from its options)."""

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "driftline", "serve", "--host", HOST, "--port", str(self.port)]
        with self.log_path.open("ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')} port {self.port}\n".encode())
            out.flush()
            self._handle.proc = subprocess.Popen(
                command,
                cwd=self.base_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr, across restarts."""
        return self.log_path.read_text(errors="replace")


class EchoReceiver:
    """Answers every POST with 500 and a body repeating the request line and headers.

    A careless or hostile receiver does this; whatever it repeats must not carry a
    channel's credentials into stored errors, API answers or logs.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                receiver.paths.append(self.path)
                text = f"rejected POST {self.path} " + " ".join(f"{k}={v}" for k, v in self.headers.items())
                body = text.encode()[:180]
                self.send_response(500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
