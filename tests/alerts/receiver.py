"""A real HTTP receiver on 127.0.0.1 for notification tests: records every request, answers as scripted.

It behaves like a careful webhook consumer: it checks the signature when given the
secret, and deduplicates by Idempotency-Key (a key it already processed is answered 200
and counted as a duplicate, not processed again). `hold` makes it process a request and
then keep the connection open until released, which is how a test kills a sender in the
middle of a delivery.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from driftline.alerts.notifiers import verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    signature_ok: bool | None = None
    index: int = 0  # arrival order, from 0

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")


@dataclass
class Script:
    """Responses in order: (status, headers); once used up, `then` for every request."""

    responses: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    then: int = 200


class Receiver:
    def __init__(
        self,
        *,
        path: str = "/hook",
        secret: str | None = None,
        script: Script | None = None,
        hold: Callable[[Received], bool] | None = None,
    ) -> None:
        self.path = path
        self.secret = secret
        self.script = script or Script()
        self.hold = hold
        self.requests: list[Received] = []
        self.processed: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.truncated = 0  # bodies cut short by a sender that died mid-send, never processed
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    # the sender went away mid-body (killed): no request reached the consumer
                    receiver.truncated += 1
                    return
                receiver._handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            status, extra = self.script.responses.pop(0) if self.script.responses else (self.script.then, {})
        received = Received(handler.path, headers, body, status, time.monotonic())
        if self.secret is not None:
            received.signature_ok = verify(body, self.secret, headers.get("x-driftline-signature"))
        with self._changed:
            received.index = len(self.requests)
            self.requests.append(received)
            if 200 <= status < 300:
                if self.processed[received.key]:
                    self.duplicates[received.key] += 1
                else:
                    self.processed[received.key] += 1
            self._changed.notify_all()
        if 200 <= status < 300 and self.hold is not None and self.hold(received):
            self.holding.set()
            self.release.wait(60)
        try:
            handler.send_response(status)
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:
            pass  # the sender is gone (killed mid-delivery)

    # -- what tests use -------------------------------------------------------------------

    def wait_for(self, check: Callable[[Receiver], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not check(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver: condition not met in {timeout}s; got {len(self.requests)} requests"
                    )
                self._changed.wait(min(left, 0.1))

    def wait_requests(self, n: int, timeout: float = 30.0) -> list[Received]:
        self.wait_for(lambda r: len(r.requests) >= n, timeout)
        return list(self.requests)

    def successes(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class DeadPort:
    """A port on 127.0.0.1 that refuses every connection (bound, never listening) while held."""

    def __init__(self) -> None:
        import socket

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._sock.close()
