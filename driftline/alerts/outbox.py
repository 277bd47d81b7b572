"""The outbox sender: claims due notifications, posts them, retries with backoff, dead-letters.

At-least-once with a stable key: an item is claimed under a lease (one conditional UPDATE),
posted, then marked delivered. A sender killed between the post and the mark leaves the
item claimed; once the lease expires any sender claims it again and posts the same body
under the same `Idempotency-Key`, which is what lets the receiver drop the repeat. Nothing
is lost: an item leaves the outbox only as delivered or, after its last attempt, dead
(kept, listed by the API, counted on /metrics, and re-queueable).

Backoff doubles from `alerts_retry_base_seconds` up to `alerts_retry_max_seconds`, with
jitter so that many failing items do not retry in step; a receiver's Retry-After is
honoured (up to `alerts_retry_after_max_seconds`). Refusals that cannot heal (a 4xx
other than 408, 425 and 429, a redirect, a deleted channel) dead-letter at once.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx

from driftline.alerts import notifiers
from driftline.alerts.crypto import SecretBox, SecretUnreadable, redact
from driftline.alerts.metrics import AlertMetrics
from driftline.config import Settings
from driftline.errors import DriftlineError
from driftline.storage.meta import MetaStore
from driftline.storage.meta.alerting import OutboxRecord, TriggerState
from driftline.storage.meta.db import Repositories

log = logging.getLogger(__name__)


def default_owner() -> str:
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay after the attempt-th failure: base·2^(attempt-1), capped, with equal jitter (half to all of it)."""
    delay = min(base * 2.0 ** max(attempt - 1, 0), cap)
    return float(delay / 2 + rng.random() * delay / 2)


class Target:
    """Where an item goes, decrypted just before the post and never kept."""

    def __init__(self, url: str, secret: str | None, hint: str) -> None:
        self.url = url
        self.secret = secret
        self.hint = hint


class Sender:
    """A background thread that claims due items and posts them from a small pool."""

    def __init__(
        self,
        meta: MetaStore,
        box: SecretBox,
        settings: Settings,
        metrics: AlertMetrics | None = None,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.meta = meta
        self.box = box
        self.settings = settings
        self.metrics = metrics
        self.owner = owner or default_owner()
        self.clock = clock
        self.transport = transport or httpx.HTTPTransport(retries=0)
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._failing = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.settings.alerts_concurrency, thread_name_prefix="driftline-send")
        self._thread = threading.Thread(target=self._loop, name="driftline-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; attempts in flight finish (each is bounded by the HTTP timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> None:
        self.stop()
        self.transport.close()

    def wake(self) -> None:
        """Look for due items now (new ones were just committed)."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                free = self.settings.alerts_concurrency - len(self._inflight)
            claimed: list[OutboxRecord] = []
            if free > 0:
                try:
                    claimed = self.claim(free)
                    if self._failing:
                        log.info("outbox: the metadata store answers again")
                    self._failing = False
                except DriftlineError as exc:
                    if not self._failing:
                        log.warning("outbox: cannot claim notifications: %s", exc.message)
                    self._failing = True
                except Exception:
                    log.exception("outbox: claiming failed")
            for record in claimed:
                assert self._pool is not None
                future = self._pool.submit(self.deliver, record)
                with self._lock:
                    self._inflight.add(future)
                future.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue  # more may be due
            self._wake.wait(self.settings.alerts_poll_seconds)
            self._wake.clear()

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._inflight.discard(future)
        self._wake.set()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def claim(self, limit: int) -> list[OutboxRecord]:
        """Claim up to `limit` due items (a read first, so an idle sender takes no write lock)."""
        now = self.now()
        with self.meta.repos(readonly=True) as repos:
            due = repos.outbox.due(now, limit * 2)
        if not due:
            return []
        claimed: list[OutboxRecord] = []
        with self.meta.repos() as repos:
            for item_id in due:
                record = repos.outbox.claim(item_id, self.owner, self.settings.alerts_lease_seconds, now)
                if record is not None:
                    claimed.append(record)
                    if len(claimed) == limit:
                        break
        return claimed

    def run_once(self, limit: int = 100) -> int:
        """Claim and deliver what is due now, in this thread; how many were attempted."""
        records = self.claim(limit)
        for record in records:
            self.deliver(record)
        return len(records)

    # -- one attempt ----------------------------------------------------------------------

    def _target(self, repos: Repositories, record: OutboxRecord) -> Target | str:
        """The decrypted destination, or why there is none (a permanent failure)."""
        if record.channel_id is not None:
            channel = repos.channels.by_id(record.channel_id)
            if channel is None:
                return "the channel was deleted"
            if not channel.enabled:
                return "the channel is disabled"
            secret = None if channel.secret_token is None else self.box.open(channel.secret_token)
            return Target(self.box.open(channel.url_token), secret, channel.url_hint)
        if record.policy_id is not None:
            policy = repos.policies.by_id(record.policy_id)
            if policy is None:
                return "the retraining policy was deleted"
            secret = None if policy.secret_token is None else self.box.open(policy.secret_token)
            return Target(self.box.open(policy.url_token), secret, policy.url_hint)
        return "the notification has no target"

    def deliver(self, record: OutboxRecord) -> None:
        """Post one claimed item and record the outcome; never raises (the lease covers a crash)."""
        try:
            with self.meta.repos(readonly=True) as repos:
                target = self._target(repos, record)
        except SecretUnreadable as exc:
            target = exc.message
        except DriftlineError as exc:
            log.warning("outbox item %d: cannot read its target (%s); retried later", record.id, exc.message)
            return
        if isinstance(target, str):
            self._finish(record, notifiers.Outcome(False, retryable=False, error=target), None)
            return
        body = record.body.encode("utf-8")
        headers = notifiers.headers_for(
            body, key=record.key, event=record.event, attempt=record.attempts, secret=target.secret
        )
        outcome = notifiers.post(
            self.transport, target.url, body, headers, self.settings.alerts_timeout_seconds
        )
        if outcome.error:
            outcome = notifiers.Outcome(
                outcome.ok,
                outcome.status,
                outcome.retryable,
                outcome.retry_after,
                redact(outcome.error, target.url, target.secret),
            )
        self._finish(record, outcome, target)

    def _finish(self, record: OutboxRecord, outcome: notifiers.Outcome, target: Target | None) -> None:
        kind = record.kind.value
        now = self.now()
        where = target.hint if target is not None else record.target
        try:
            with self.meta.repos() as repos:
                if outcome.ok:
                    marked = repos.outbox.delivered(record.id, outcome.status or 200, now)
                    if marked and record.trigger_id is not None:
                        _dispatched(repos, record, now, where, outcome.status)
                    outcome_name = "delivered"
                else:
                    retry_at = self._retry_at(record, outcome, now)
                    repos.outbox.failed(
                        record.id,
                        self.owner,
                        status=outcome.status,
                        error=outcome.error or "failed",
                        retry_at=retry_at,
                        now=now,
                    )
                    outcome_name = "retry" if retry_at is not None else "dead"
        except DriftlineError as exc:
            # the lease runs out and the item is sent again: at least once, same key
            log.warning("outbox item %d: outcome not recorded (%s)", record.id, exc.message)
            return
        if self.metrics is not None:
            self.metrics.attempts.labels(kind, outcome_name).inc()
            if outcome_name == "dead":
                self.metrics.dead.labels(kind).inc()
        if outcome_name == "delivered":
            log.info("notification %d (%s %s) delivered to %s", record.id, kind, record.event, where)
        elif outcome_name == "dead":
            log.warning(
                "notification %d (%s %s) to %s is dead after %d attempts: %s",
                record.id,
                kind,
                record.event,
                where,
                record.attempts,
                outcome.error,
            )
        else:
            log.info(
                "notification %d to %s failed (attempt %d): %s; retried",
                record.id,
                where,
                record.attempts,
                outcome.error,
            )

    def _retry_at(self, record: OutboxRecord, outcome: notifiers.Outcome, now: datetime) -> datetime | None:
        if not outcome.retryable or record.attempts >= record.max_attempts:
            return None
        s = self.settings
        delay = backoff(record.attempts, s.alerts_retry_base_seconds, s.alerts_retry_max_seconds, self._rng)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, s.alerts_retry_after_max_seconds))
        return now + timedelta(seconds=delay)


def _dispatched(
    repos: Repositories, record: OutboxRecord, now: datetime, where: str, status: int | None
) -> None:
    """A delivered retraining dispatch moves its trigger to dispatched, in the same transaction."""
    assert record.trigger_id is not None
    trigger = repos.triggers.by_id(record.trigger_id, lock=True)
    if trigger is None or trigger.state is not TriggerState.APPROVED:
        return
    history = [
        *trigger.history,
        {
            "state": TriggerState.DISPATCHED.value,
            "at": notifiers.iso_dt(now),
            "by": {"system": "outbox"},
            "note": f"delivered to {where} (HTTP {status}), notification {record.id}",
        },
    ]
    repos.triggers.save(trigger.id, state=TriggerState.DISPATCHED, history=history, dispatched_at=now)
