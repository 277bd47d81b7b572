"""The background sender: a bounded queue drained by one daemon thread.

Modelled on sentry-python's transport. The serving thread only appends to a deque
under a lock; everything that can be slow (HTTP, retries, backoff) happens on the
sender thread. Memory is bounded by `max_queue` rows and `max_queue_bytes`, counting
rows being sent; when full, new rows are refused (and counted) instead of blocking.

While the server is unreachable or says "not now" (connection errors, 408, 429,
502-504) rows stay queued: the sender backs off exponentially with jitter, honours
Retry-After, and after `max_retries` consecutive failures probes only every
`max_backoff` seconds, so a long outage costs one request per interval, not a storm.
A 4xx is final for the rows it names; a 5xx that is not an outage is retried
`max_retries` times per row, then dropped, so one poisonous batch cannot stall the rest.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx
import orjson

from driftline.client import _http
from driftline.client._records import Kind, batch_body

log = logging.getLogger("driftline.client")

# Drop reasons, as counted in stats()["dropped"].
QUEUE_FULL = "queue_full"  # the queue (rows or bytes) had no room
INVALID = "invalid"  # a bad argument, refused before queueing
REJECTED = "rejected"  # the server refused the rows for good (4xx)
SERVER_ERROR = "server_error"  # the server failed on these rows max_retries times (5xx, not an outage)
CLOSED = "closed"  # logged after close()
SHUTDOWN = "shutdown"  # still undelivered when close() gave up waiting


class ClientStats(TypedDict):
    queued: int
    sent: int
    duplicates: int
    violations: int
    dropped: dict[str, int]
    retries: int
    last_error: str | None


@dataclass(slots=True)
class _Item:
    seq: int
    kind: Kind
    model: str
    payload: bytes
    born: float
    failures: int = 0  # 5xx answers (not outages) this row has met
    salvaged: int = 0  # times this row was re-sent after its batch's other rows were refused


@dataclass(slots=True)
class _Outcome:
    requeue: list[_Item]
    delay: float | None = None  # back off this long before sending again
    asked: bool = False  # the delay is the server's Retry-After: a flush does not cut it short


class Transport:
    """Queue plus sender thread; every public method is safe to call from any thread."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        max_queue: int,
        max_queue_bytes: int,
        batch_size: int,
        flush_interval: float,
        timeout: float,
        max_retries: int,
        backoff_base: float,
        max_backoff: float,
        max_retry_after: float,
        min_probe_interval: float,
        headers: dict[str, str] | None,
        verify: bool | str,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.min_probe_interval = min_probe_interval
        self._headers = {**_http.base_headers(api_key, headers), "Content-Type": "application/json"}
        self._verify = verify
        self._rng = random.Random()  # noqa: S311 (jitter, not secrets)
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (its parent sends its own rows)."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the sender waits here
        self._done = threading.Condition(self._lock)  # flush() waits here
        self._queue: collections.deque[_Item] = collections.deque()
        self._seq = 0
        self._pending_rows = 0  # queued + in flight
        self._pending_bytes = 0
        self._inflight_min: int | None = None  # lowest seq of the chunk being sent
        self._flushers = 0
        self._batch_cap = self.batch_size  # lowered when the server answers 413
        self._retry_at = 0.0  # our own backoff: a waiting flush() may probe earlier
        self._not_before = 0.0  # the server's Retry-After: always honoured
        self._last_attempt = 0.0
        self._failures = 0  # consecutive failed attempts
        self._closed = False
        self._abandon = False
        self._thread: threading.Thread | None = None
        self._sent = 0
        self._duplicates = 0
        self._violations = 0
        self._retries = 0
        self._dropped: dict[str, int] = {}
        self._warned: set[str] = set()
        self._last_error: str | None = None

    # -- the serving side: never blocks on I/O, never raises ------------------------------

    def submit(self, kind: Kind, model: str, payload: bytes) -> bool:
        """Queue one serialised record; False (and a counted drop) when there is no room."""
        reason = None
        with self._lock:
            if self._closed:
                reason = CLOSED
            elif (
                self._pending_rows >= self.max_queue
                or self._pending_bytes + len(payload) > self.max_queue_bytes
            ):
                reason = QUEUE_FULL
            else:
                self._seq += 1
                self._queue.append(_Item(self._seq, kind, model, payload, time.monotonic()))
                self._pending_rows += 1
                self._pending_bytes += len(payload)
                if self._thread is None or not self._thread.is_alive():
                    self._start()  # first use, or after a fork, or if the sender ever died
                n = len(self._queue)
                if n in (1, self._batch_cap):  # the timer starts, or a batch is full
                    self._wake.notify()
                return True
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
            first = reason not in self._warned
            self._warned.add(reason)
        if first:
            self._warn_drop(reason, 1, None)
        return False

    def drop(self, reason: str, n: int, detail: str | None) -> None:
        """Count rows that will never be sent; the first drop of each reason is logged."""
        if n <= 0:
            return
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n
            if detail is not None and reason != INVALID:
                self._last_error = detail
            first = reason not in self._warned
            self._warned.add(reason)
        if first:
            self._warn_drop(reason, n, detail)

    def _warn_drop(self, reason: str, n: int, detail: str | None) -> None:
        with contextlib.suppress(Exception):  # a broken logging handler must not reach the caller
            log.warning(
                "driftline: dropped %d row(s) (%s)%s; further drops of this kind are only counted in stats()",
                n,
                reason,
                f": {detail}" if detail else "",
            )

    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                queued=self._pending_rows,
                sent=self._sent,
                duplicates=self._duplicates,
                violations=self._violations,
                dropped=dict(self._dropped),
                retries=self._retries,
                last_error=self._last_error,
            )

    # -- flush and close ----------------------------------------------------------------

    def flush(self, timeout: float | None) -> bool:
        """Wait until every row queued before the call is delivered or dropped.

        While someone waits here, partial batches go at once and a down server is probed
        at most every `min_probe_interval` seconds instead of following the backoff.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._lock:
            target = self._seq
            if self._thread is None or not self._thread.is_alive():
                return self._lowest_unresolved() > target
            self._flushers += 1
            self._wake.notify()
            try:
                while self._lowest_unresolved() <= target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._done.wait(remaining)
                return True
            finally:
                self._flushers -= 1

    def _lowest_unresolved(self) -> float:
        lowest = float("inf")
        if self._queue:
            lowest = self._queue[0].seq
        if self._inflight_min is not None:
            lowest = min(lowest, self._inflight_min)
        return lowest

    def close(self, timeout: float | None) -> None:
        """Flush within `timeout`, stop the sender; what is left is counted as dropped."""
        start = time.monotonic()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.flush(timeout)
        with self._lock:
            self._abandon = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            remaining = None if timeout is None else max(timeout - (time.monotonic() - start), 0.0)
            # a request in progress ends within the HTTP timeout; do not wait longer than asked
            thread.join(remaining if remaining is not None else self.timeout + 1)
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            self._pending_rows -= len(left)
            self._pending_bytes -= sum(len(it.payload) for it in left)
            self._done.notify_all()
        self.drop(SHUTDOWN, len(left), f"{len(left)} row(s) undelivered at close")

    # -- the sender thread ----------------------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="driftline-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = httpx.Client(
            base_url=self.url,
            headers=self._headers,
            timeout=self.timeout,
            verify=self._verify,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        )
        try:
            while True:
                chunk = self._next_chunk()
                if chunk is None:
                    return
                try:
                    outcome = self._send_chunk(client, chunk)
                except Exception as exc:  # never let the thread die; keep the rows
                    log.exception("driftline: unexpected error in the sender")
                    outcome = _Outcome(chunk, self._failed(f"sender error: {exc!r}", None))
                self._finish_chunk(outcome)
        finally:
            client.close()

    def _next_chunk(self) -> list[_Item] | None:
        with self._lock:
            while True:
                if self._abandon:
                    return None
                if not self._queue:
                    self._wake.wait()
                    continue
                now = time.monotonic()
                urgent = self._flushers > 0
                if urgent or len(self._queue) >= self._batch_cap:
                    ready = now
                else:
                    ready = self._queue[0].born + self.flush_interval
                gate = self._retry_at
                if urgent:
                    gate = min(gate, self._last_attempt + self.min_probe_interval)
                due = max(ready, gate, self._not_before)
                if due <= now:
                    break
                self._wake.wait(due - now)
            chunk = [self._queue.popleft() for _ in range(min(self._batch_cap, len(self._queue)))]
            self._inflight_min = chunk[0].seq
            self._last_attempt = now
            return chunk

    def _finish_chunk(self, outcome: _Outcome) -> None:
        abandoned: list[_Item] = []
        with self._lock:
            if self._abandon:  # close() gave up waiting and already counted the queue
                abandoned = outcome.requeue
                self._pending_rows -= len(abandoned)
                self._pending_bytes -= sum(len(it.payload) for it in abandoned)
            elif outcome.requeue:
                outcome.requeue.sort(key=lambda it: it.seq)
                self._queue.extendleft(reversed(outcome.requeue))
            self._inflight_min = None
            if outcome.delay is not None:
                self._retry_at = time.monotonic() + outcome.delay
                self._not_before = self._retry_at if outcome.asked else 0.0
            self._done.notify_all()
        self.drop(SHUTDOWN, len(abandoned), f"{len(abandoned)} row(s) undelivered at close")

    def _send_chunk(self, client: httpx.Client, chunk: list[_Item]) -> _Outcome:
        groups: dict[tuple[Kind, str], list[_Item]] = {}
        for item in chunk:
            groups.setdefault((item.kind, item.model), []).append(item)
        requeue: list[_Item] = []
        delay: float | None = None
        asked = False
        for (kind, model), items in groups.items():
            if delay is not None:  # the server is down: keep the rest for the next attempt
                requeue.extend(items)
                continue
            outcome = self._deliver(client, kind, model, items)
            requeue.extend(outcome.requeue)
            delay, asked = outcome.delay, outcome.asked
        return _Outcome(requeue, delay, asked)

    def _deliver(self, client: httpx.Client, kind: Kind, model: str, items: list[_Item]) -> _Outcome:
        body = batch_body(model, [it.payload for it in items])
        try:
            response = client.post(f"/v1/{kind}", content=body)
        except httpx.HTTPError as exc:
            return _Outcome(items, self._failed(f"cannot reach {self.url}: {exc!r}", None))
        status = response.status_code
        if 200 <= status < 300:
            self._delivered(items, response)
            return _Outcome([])
        detail, errors = _http.error_parts(response)
        message = f"HTTP {status} from POST /v1/{kind} (model {model!r}): {detail}"
        if status in _http.RETRY_STATUSES:
            wait = _http.retry_after(response.headers.get("retry-after"))
            return _Outcome(items, self._failed(message, wait), asked=wait is not None)
        if status >= 500:
            keep: list[_Item] = []
            give_up: list[_Item] = []
            for it in items:
                it.failures += 1
                (keep if it.failures <= self.max_retries else give_up).append(it)
            self._resolve(len(give_up), sum(len(it.payload) for it in give_up))
            self.drop(SERVER_ERROR, len(give_up), message)
            return _Outcome(keep, self._failed(message, None))
        with self._lock:  # the server answered: it is up, only these rows are at fault
            self._failures = 0
            self._retry_at = self._not_before = 0.0
            if status == 413 and len(items) > 1:
                self._batch_cap = max(1, len(items) // 2)
                return _Outcome(items)
        if status == 422 and errors:
            return self._salvage(items, errors, message)
        self._refuse(items, message)
        return _Outcome([])

    def _salvage(self, items: list[_Item], errors: list[dict[str, Any]], message: str) -> _Outcome:
        """Drop the rows a 422 names and send the others again (nothing of the batch was stored)."""
        bad = {e["row"] for e in errors if isinstance(e.get("row"), int) and 0 <= e["row"] < len(items)}
        good = [it for i, it in enumerate(items) if i not in bad]
        if not bad or not good or any(it.salvaged >= 2 for it in good):
            self._refuse(items, message)
            return _Outcome([])
        self._refuse([items[i] for i in sorted(bad)], message)
        for it in good:
            it.salvaged += 1
        return _Outcome(good)

    def _refuse(self, items: list[_Item], message: str) -> None:
        self._resolve(len(items), sum(len(it.payload) for it in items))
        self.drop(REJECTED, len(items), message)

    def _resolve(self, rows: int, nbytes: int) -> None:
        with self._lock:
            self._pending_rows -= rows
            self._pending_bytes -= nbytes

    def _delivered(self, items: list[_Item], response: httpx.Response) -> None:
        duplicates = violations = 0
        try:
            body = orjson.loads(response.content)
            duplicates = int(body.get("duplicates", 0))
            violations = int(body.get("violations", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            pass
        with self._lock:
            self._pending_rows -= len(items)
            self._pending_bytes -= sum(len(it.payload) for it in items)
            self._sent += len(items)
            self._duplicates += duplicates
            self._violations += violations
            self._failures = 0
            self._retry_at = self._not_before = 0.0

    def _failed(self, message: str, retry_after: float | None) -> float:
        """Note a failed attempt and return how long to back off before the next one."""
        with self._lock:
            self._failures += 1
            self._retries += 1
            self._last_error = message
            failures = self._failures
        if retry_after is not None:
            delay = max(min(retry_after, self.max_retry_after), self.backoff_base)
            delay *= self._rng.uniform(1.0, 1.1)
        elif failures <= self.max_retries:
            delay = _http.backoff(failures, self.backoff_base, self.max_backoff, self._rng)
        else:
            delay = self.max_backoff * self._rng.uniform(0.8, 1.0)
        if failures == self.max_retries + 1:
            log.warning(
                "driftline: %d attempts failed (%s); keeping rows queued (up to %d) and retrying every ~%g s",
                failures,
                message,
                self.max_queue,
                self.max_backoff,
            )
        else:
            log.debug("driftline: attempt %d failed (%s); next in %.2f s", failures, message, delay)
        return delay


def _after_fork(ref: weakref.ref[Transport]) -> None:
    transport = ref()
    if transport is not None:
        transport._reset()
