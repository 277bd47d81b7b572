"""Prometheus series of alerting, on the app's registry.

Counters count what this process did; the outbox gauge reads the metadata store at
scrape time, so dead letters show whichever process gave up on them, and survive restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from driftline.errors import DriftlineError
from driftline.storage.meta import MetaStore
from driftline.storage.meta.alerting import OutboxState

log = logging.getLogger(__name__)

OUTBOX_GAUGE = "driftline_outbox_items"


class OutboxCollector(Collector):
    """`driftline_outbox_items{state}`: notifications per outbox state, read from the store."""

    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(OUTBOX_GAUGE, "Notifications in the outbox by state", labels=["state"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(OUTBOX_GAUGE, "Notifications in the outbox by state", labels=["state"])
        try:
            with self.meta.repos(readonly=True) as repos:
                counts = repos.outbox.counts()
        except DriftlineError as exc:
            log.warning("outbox counts unavailable: %s", exc.message)
            return
        for state in OutboxState:
            family.add_metric([state.value], counts.get(state, 0))
        yield family


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry, meta: MetaStore | None = None) -> None:
        r = registry
        self.transitions = Counter(
            "driftline_alert_transitions", "Alert state changes by new state", ["state"], registry=r
        )
        self.notifications = Counter(
            "driftline_notifications", "Notifications written to the outbox by kind", ["kind"], registry=r
        )
        self.attempts = Counter(
            "driftline_notification_attempts",
            "Delivery attempts by kind and outcome (delivered, retry, dead)",
            ["kind", "outcome"],
            registry=r,
        )
        self.dead = Counter(
            "driftline_notifications_dead",
            "Notifications dead-lettered after their last attempt",
            ["kind"],
            registry=r,
        )
        self.triggers = Counter(
            "driftline_retraining_triggers", "Retraining trigger steps by state", ["state"], registry=r
        )
        if meta is not None:
            registry.register(OutboxCollector(meta))
