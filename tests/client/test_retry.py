"""Backoff, Retry-After and refusals against a real HTTP peer on 127.0.0.1.

The driftline server answers 503 only when its spool is full, which a test cannot
arrange on cue; this small http.server answers from a script instead (503 with
Retry-After, 500, 413 ...) so the client's timing can be measured. It is a real socket
peer, not a mock of the client's internals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from driftline.client import Driftline
from driftline.client._http import backoff, retry_after

# (status, headers, body) for one request, given the request's JSON body
Answer = tuple[int, dict[str, str], dict[str, Any]]


@dataclass
class Peer:
    url: str
    script: Callable[[int, dict[str, Any]], Answer]
    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    path_log: list[str] = field(default_factory=list)

    def paths(self) -> list[tuple[str, dict[str, Any]]]:
        return [(path, body) for path, (_, body) in zip(self.path_log, self.seen, strict=True)]


@pytest.fixture
def peer() -> Iterator[Callable[[Callable[[int, dict[str, Any]], Answer]], Peer]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: Callable[[int, dict[str, Any]], Answer]) -> Peer:
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    state.seen.append((time.monotonic(), body))
                    state.path_log.append(self.path)
                    n = len(state.seen)
                status, headers, answer = state.script(n, body)
                data = orjson.dumps(answer)
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(httpd)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        state = Peer(f"http://127.0.0.1:{httpd.server_address[1]}", script)
        return state

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def accepted(body: dict[str, Any]) -> Answer:
    return 202, {}, {"accepted": len(body["records"]), "duplicates": 0, "violations": 0}


def client(url: str, **options: Any) -> Driftline:
    settings: dict[str, Any] = {
        "model": "m",
        "version": "v1",
        "flush_interval": 0.05,
        "backoff_base": 0.01,
        "max_backoff": 0.2,
        "min_probe_interval": 0.05,
    }
    settings.update(options)
    return Driftline(url, "k" * 32, **settings)


def test_retry_after_is_honoured(peer: Any) -> None:
    def script(n: int, body: dict[str, Any]) -> Answer:
        if n == 1:
            return 503, {"Retry-After": "1"}, {"detail": "the ingest spool is full"}
        return accepted(body)

    p = peer(script)
    with client(p.url) as dl:
        assert dl.log_prediction("r1", features={"x": 1})
        assert dl.flush(10.0)
        stats = dl.stats()
    assert len(p.seen) == 2
    gap = p.seen[1][0] - p.seen[0][0]
    assert 1.0 <= gap < 2.0, f"retried after {gap:.2f} s; the server asked for 1 s"
    assert p.seen[0][1] == p.seen[1][1]  # the same rows, with the same event time
    assert stats["sent"] == 1 and stats["retries"] == 1 and stats["dropped"] == {}
    assert "503" in (stats["last_error"] or "") and "spool is full" in (stats["last_error"] or "")


def test_an_outage_costs_few_requests_and_loses_nothing(peer: Any) -> None:
    start = time.monotonic()

    def script(n: int, body: dict[str, Any]) -> Answer:
        if time.monotonic() - start < 1.5:
            return 503, {}, {"detail": "down"}
        return accepted(body)

    p = peer(script)
    # a waiting flush() probes at most every min_probe_interval, which keeps its default here
    with client(p.url, max_retries=3, batch_size=50, min_probe_interval=1.0) as dl:
        for i in range(400):
            assert dl.log_prediction(f"r{i}", features={"x": i})
            time.sleep(0.002)
        assert dl.flush(10.0)
        stats = dl.stats()
    assert stats["sent"] == 400 and stats["dropped"] == {}
    failures = sum(1 for t, _ in p.seen if t - start < 1.5)
    # 3 quick retries, then one probe per ~max_backoff (0.2 s): nowhere near a storm
    assert failures <= 3 + 1.5 / 0.16 + 2, failures
    delivered = [r["request_id"] for _, body in p.seen[failures:] for r in body["records"]]
    assert sorted(delivered, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(400)]
    assert delivered == [f"r{i}" for i in range(400)]  # requeued rows keep their order


def test_a_server_error_is_retried_then_dropped(peer: Any) -> None:
    p = peer(lambda n, body: (500, {}, {"detail": "internal error"}))
    with client(p.url, max_retries=2) as dl:
        assert dl.log_prediction("r1", features={"x": 1})
        assert dl.flush(5.0)
        stats = dl.stats()
    assert len(p.seen) == 3
    assert stats["dropped"] == {"server_error": 1}
    assert stats["queued"] == 0


def test_too_large_batches_are_split(peer: Any) -> None:
    def script(n: int, body: dict[str, Any]) -> Answer:
        if len(body["records"]) > 30:
            return 413, {}, {"detail": "too many records"}
        return accepted(body)

    p = peer(script)
    with client(p.url, batch_size=200, flush_interval=5.0) as dl:
        for i in range(100):
            assert dl.log_prediction(f"r{i}", features={"x": i})
        assert dl.flush(5.0)
        stats = dl.stats()
    assert stats["sent"] == 100 and stats["dropped"] == {}
    assert max(len(body["records"]) for _, body in p.seen[-3:]) <= 30


def test_models_and_kinds_go_in_separate_batches(peer: Any) -> None:
    p = peer(lambda n, body: accepted(body))
    with client(p.url, flush_interval=5.0) as dl:
        assert dl.log_prediction("r1", features={"x": 1})
        assert dl.log_prediction("r2", model="other", features={"x": 2})
        assert dl.log_label("r1", 1)
        assert dl.log_feedback("r1", "accepted", reviewer="bo")
        assert dl.flush(5.0)
    batches = sorted(
        (path, body["model"], len(body["records"]), sorted(body["records"][0])) for path, body in p.paths()
    )
    assert batches == [
        ("/v1/feedback", "m", 1, ["outcome", "request_id", "reviewer", "timestamp"]),
        ("/v1/labels", "m", 1, ["label", "request_id", "timestamp"]),
        ("/v1/predictions", "m", 1, ["features", "request_id", "timestamp", "version"]),
        ("/v1/predictions", "other", 1, ["features", "request_id", "timestamp", "version"]),
    ]


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert retry_after("3") == 3.0
    assert retry_after(" 0.5 ") == 0.5
    assert retry_after("-4") == 0.0
    assert retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7.0)
    assert retry_after(formatdate(now - 7, usegmt=True), now=now) == 0.0
    assert retry_after("soon") is None
    assert retry_after(None) is None


def test_backoff_grows_jitters_and_is_capped() -> None:
    import random

    rng = random.Random(5)
    delays = [backoff(k, 0.5, 8.0, rng) for k in range(1, 9)]
    for k, d in enumerate(delays, start=1):
        ceiling = min(8.0, 0.5 * 2 ** (k - 1))
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 8.0
