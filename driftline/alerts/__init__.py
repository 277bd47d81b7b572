"""Alerts and retraining triggers: rules over detector results, their state machine, notifiers
(Slack, webhook) fed by a durable outbox, and retraining policies with gated, approved triggers.

    service = AlertService(settings, meta, MetricsTable(engine), AlertMetrics(registry, meta))
    service.start()                                   # the outbox sender
    service.after_run(project, model, start, end, step)  # after every detector run
"""

from driftline.alerts.crypto import SecretBox, url_hint
from driftline.alerts.metrics import AlertMetrics
from driftline.alerts.notifiers import SCHEMA_VERSION, signature, verify
from driftline.alerts.outbox import Sender
from driftline.alerts.rules import Condition, Persistence, RuleSpec, Selector
from driftline.alerts.service import AlertService, Evaluation
from driftline.alerts.triggers import PolicySpec

__all__ = [
    "SCHEMA_VERSION",
    "AlertMetrics",
    "AlertService",
    "Condition",
    "Evaluation",
    "Persistence",
    "PolicySpec",
    "RuleSpec",
    "SecretBox",
    "Selector",
    "Sender",
    "signature",
    "url_hint",
    "verify",
]
