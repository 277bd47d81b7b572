"""Alerting as one service: channels and rules, evaluation after each detector run, triggers, the sender.

`after_run` is the hook both the scheduler and POST /detect call once a run's results
are written. It reads the rows of the run's windows (and the windows before them that
persistence looks back over) from the metrics table, then, in ONE metadata transaction
per step, moves each rule's series through the state machine and writes the
notifications of its transitions to the outbox; the same for the model's retraining
policy. The rules are row-locked for that transaction, so two evaluations of one model
(a sweep and a backfill) apply one after the other, and the second finds nothing new.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from pydantic import ValidationError

from driftline.alerts import notifiers, triggers
from driftline.alerts.crypto import SecretBox, url_hint
from driftline.alerts.defaults import default_rules
from driftline.alerts.metrics import AlertMetrics
from driftline.alerts.outbox import Sender
from driftline.alerts.rules import RuleSpec, Series
from driftline.alerts.state import Observation, Policy, advance, worth_keeping
from driftline.config import Settings, previous_secret_keys, secret_key
from driftline.detectors.results import MetricsQuery, MetricsTable
from driftline.detectors.runner import RunResult
from driftline.errors import Conflict, DriftlineError, InvalidInput, NotFound, StoreError
from driftline.storage.meta import MetaStore
from driftline.storage.meta.alerting import (
    AlertRecord,
    AlertStatus,
    ChannelRecord,
    ChannelType,
    OutboxKind,
    OutboxRecord,
    PolicyRecord,
    RuleRecord,
    TriggerRecord,
    TriggerState,
)
from driftline.storage.meta.db import Repositories
from driftline.storage.meta.records import KeyInfo

log = logging.getLogger(__name__)

KEY_NAMESPACE = uuid.UUID("6f1c2f0e-4c1b-5d9a-9a59-7c1a8f0d2b11")
READ_LIMIT = 500_000


def stable_key(*parts: object) -> str:
    """An idempotency key that is the same whenever the same notification is decided again."""
    return uuid.uuid5(KEY_NAMESPACE, ":".join(str(p) for p in parts)).hex


def actor(key: KeyInfo) -> dict[str, Any]:
    """Who acted, as recorded: the key's id, display prefix and name (never the key)."""
    return {"key_id": key.id, "key_prefix": key.prefix, "key_name": key.name, "role": key.role.value}


def actor_text(by: dict[str, Any]) -> str:
    if "key_id" in by:
        return f"key {by['key_id']} ({by['key_prefix']}…)"
    return str(by.get("system", "driftline"))


@dataclass
class Evaluation:
    """What one evaluation did, for logs and tests."""

    rules: int = 0
    series: int = 0
    transitions: int = 0
    notifications: int = 0
    triggers_proposed: int = 0
    held: list[str] | None = None


class AlertService:
    def __init__(
        self,
        settings: Settings,
        meta: MetaStore,
        table: MetricsTable,
        metrics: AlertMetrics | None = None,
        *,
        clock: Any = time.time,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.table = table
        self.metrics = metrics
        self.clock = clock
        self.box = SecretBox(secret_key(settings), previous_secret_keys(settings))
        self.sender: Sender | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the outbox sender in this process (when the settings allow)."""
        if self.settings.alerts_delivery_enabled and self.sender is None:
            self.sender = Sender(self.meta, self.box, self.settings, self.metrics, clock=self.clock)
            self.sender.start()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None

    def wake(self) -> None:
        if self.sender is not None:
            self.sender.wake()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- channels -------------------------------------------------------------------------

    def create_channel(
        self,
        project: str,
        *,
        name: str,
        type: ChannelType,
        url: str,
        secret: str | None,
        is_default: bool,
        enabled: bool,
        description: str,
    ) -> ChannelRecord:
        check_secret(type, secret)
        with self.meta.repos() as repos:
            return repos.channels.create(
                project,
                name,
                type,
                self.box.seal(url),
                url_hint(url),
                None if secret is None else self.box.seal(secret),
                is_default=is_default,
                enabled=enabled,
                description=description,
            )

    def update_channel(self, project: str, ref: str | int, changes: dict[str, Any]) -> ChannelRecord:
        columns: dict[str, Any] = {}
        if "url" in changes and not changes["url"]:
            raise InvalidInput("a channel's url cannot be removed: delete the channel instead")
        with self.meta.repos() as repos:
            current = repos.channels.require(project, ref)
            if "url" in changes:
                columns["url_token"] = self.box.seal(changes["url"])
                columns["url_hint"] = url_hint(changes["url"])
            if "secret" in changes:
                check_secret(current.type, changes["secret"])
                columns["secret_token"] = (
                    None if changes["secret"] is None else self.box.seal(changes["secret"])
                )
            for name, column in (
                ("default", "is_default"),
                ("enabled", "enabled"),
                ("description", "description"),
            ):
                if name in changes:
                    columns[column] = changes[name]
            return repos.channels.update(project, current.id, **columns)

    def delete_channel(self, project: str, ref: str | int) -> None:
        with self.meta.repos() as repos:
            channel = repos.channels.require(project, ref)
            users = repos.rules.using_channel(project, channel.name)
            if users:
                raise Conflict(
                    f"rules {', '.join(str(r.id) for r in users)} send to channel {channel.name!r}: "
                    "change them first",
                    details={"rules": [r.id for r in users]},
                )
            repos.channels.delete(project, channel.id)

    def test_channel(self, project: str, ref: str | int) -> OutboxRecord:
        """Write one test message for the channel to the outbox (one attempt: it reports, not retries)."""
        now = self.now()
        with self.meta.repos() as repos:
            channel = repos.channels.require(project, ref)
            project_id = _project_id(repos, project)
            key = uuid.uuid4().hex
            document = notifiers.sample_document(
                key=key,
                created_at=now,
                project=project,
                channel=channel.name,
                link=notifiers.dashboard_link(self.settings.public_url, "alerts"),
            )
            item = repos.outbox.enqueue(
                project_id=project_id,
                key=key,
                kind=OutboxKind.TEST,
                event="test",
                target=f"channel {channel.name}",
                body=notifiers.render(channel.type, document),
                max_attempts=1,
                channel_id=channel.id,
            )
            assert item is not None
            record = repos.outbox.get(project, item)
        self._count("test")
        self.wake()
        return record

    # -- rules ----------------------------------------------------------------------------

    def _check_channels(self, repos: Repositories, project: str, spec: RuleSpec) -> None:
        if spec.channels is None:
            return
        known = {c.name for c in repos.channels.list(project)}
        missing = [c for c in spec.channels if c not in known]
        if missing:
            raise InvalidInput(f"unknown channels: {', '.join(missing)}")

    def create_rule(self, project: str, name: str, spec: RuleSpec, *, enabled: bool) -> RuleRecord:
        with self.meta.repos() as repos:
            self._check_channels(repos, project, spec)
            created = repos.rules.create(
                project, name, spec.selector.model, spec.model_dump(mode="json"), enabled=enabled
            )
            assert created is not None
            return created

    def update_rule(self, project: str, rule_id: int, changes: dict[str, Any]) -> RuleRecord:
        """Apply a partial change; selector, condition and persistence merge one level deep."""
        with self.meta.repos() as repos:
            current = repos.rules.require(project, rule_id)
            merged = dict(current.spec)
            for name, value in changes.items():
                if name in ("name", "enabled"):
                    continue
                if isinstance(value, dict) and isinstance(merged.get(name), dict):
                    merged[name] = {**merged[name], **value}
                else:
                    merged[name] = value
            spec = parse_rule(merged)
            self._check_channels(repos, project, spec)
            enabled = bool(changes.get("enabled", current.enabled))
            updated = repos.rules.update(
                project,
                rule_id,
                name=str(changes.get("name") or current.name),
                model=spec.selector.model,
                spec=spec.model_dump(mode="json"),
                enabled=enabled,
            )
            if current.enabled and not enabled:
                repos.alerts.settle_rule(rule_id, "rule disabled")
            return updated

    def create_default_rules(self, repos: Repositories, project: str, model: str) -> list[RuleRecord]:
        """The model's default rules, in the caller's transaction (names already taken are kept)."""
        made = []
        for builtin, name, spec in default_rules(model):
            rule = repos.rules.create(
                project, name, model, spec.model_dump(mode="json"), builtin=builtin, if_missing=True
            )
            if rule is not None:
                made.append(rule)
        return made

    def ack(self, project: str, alert_id: int, key: KeyInfo) -> AlertRecord:
        with self.meta.repos() as repos:
            alert = repos.alerts.get(project, alert_id)
            if alert.status not in (AlertStatus.PENDING, AlertStatus.FIRING):
                raise Conflict(f"alert {alert_id} is {alert.status.value}: nothing to acknowledge")
            return repos.alerts.ack(project, alert_id, actor_text(actor(key)), self.now())

    # -- evaluation -----------------------------------------------------------------------

    def after_run(self, project: str, model: str, result: RunResult) -> Evaluation:
        """The hook after a detector run has written its results (the scheduler's and POST detect's).

        A store failure propagates, so the scheduler redoes the chunk (evaluation is
        idempotent); any other failure is a bug that must not stop detection: logged.
        """
        try:
            return self.evaluate(project, model, result.start, result.end, result.step)
        except StoreError:
            raise
        except Exception:
            log.exception("alert evaluation failed", extra={"project": project, "model": model})
            return Evaluation()

    def evaluate(self, project: str, model: str, start: int, end: int, step: int) -> Evaluation:
        if end <= start:
            return Evaluation()
        with self.meta.repos(readonly=True) as repos:
            rules = [r for r in repos.rules.list(project, enabled_only=True) if fnmatchcase(model, r.model)]
            policy = repos.policies.get(project, model)
        specs: dict[int, RuleSpec] = {}
        for rule in rules:
            try:
                specs[rule.id] = parse_rule(rule.spec)
            except InvalidInput as exc:
                log.warning("rule %d no longer validates: %s", rule.id, exc.message)
        policy = policy if policy is not None and policy.enabled else None
        policy_spec = parse_policy(policy.config) if policy is not None else None
        if not specs and policy_spec is None:
            return Evaluation()
        lookback = max(
            [s.persistence.windows for s in specs.values()]
            + ([policy_spec.lookback_windows] if policy_spec is not None else [1])
        )
        literals = {s.selector.literal_detector for s in specs.values()}
        detectors: set[str] | None = None
        if None not in literals:
            detectors = {d for d in literals if d is not None}
            if policy_spec is not None:
                detectors |= policy_spec.detectors
        rows = self._read(project, model, start - (lookback - 1) * step, end, step, detectors)
        now = self.now()
        outcome = Evaluation()
        if specs:
            self._apply_rules(project, model, list(specs), rows, now, outcome)
        if policy is not None and policy_spec is not None:
            self._apply_policy(project, model, policy.id, rows, step, now, outcome)
        if outcome.notifications:
            self.wake()
        return outcome

    def _read(
        self, project: str, model: str, start: int, end: int, step: int, detectors: set[str] | None
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for detector in sorted(detectors) if detectors is not None else [None]:
            got = self.table.read(
                MetricsQuery(
                    project=project, model=model, detector=detector, start=start, end=end, limit=READ_LIMIT
                )
            )
            if len(got) >= READ_LIMIT:
                log.warning(
                    "alert evaluation read %d rows, the limit: some series are not evaluated", READ_LIMIT
                )
            rows.extend(got)
        # results of runs with another window length are other series
        return [r for r in rows if int(r["window_end"]) - int(r["window_start"]) == step]

    def _apply_rules(
        self,
        project: str,
        model: str,
        rule_ids: list[int],
        rows: list[dict[str, Any]],
        now: datetime,
        outcome: Evaluation,
    ) -> None:
        with self.meta.repos() as repos:
            locked = repos.rules.lock(project, rule_ids)
            project_id = _project_id(repos, project)
            channels = repos.channels.list(project)
            for rule in locked.values():
                if not rule.enabled or not fnmatchcase(model, rule.model):
                    continue
                try:
                    spec = parse_rule(rule.spec)
                except InvalidInput:
                    continue
                outcome.rules += 1
                self._apply_rule(repos, project, project_id, model, rule, spec, rows, channels, now, outcome)

    def _apply_rule(
        self,
        repos: Repositories,
        project: str,
        project_id: int,
        model: str,
        rule: RuleRecord,
        spec: RuleSpec,
        rows: list[dict[str, Any]],
        channels: list[ChannelRecord],
        now: datetime,
        outcome: Evaluation,
    ) -> None:
        by_series: dict[Series, dict[int, Observation]] = defaultdict(dict)
        for row in rows:
            if not spec.selector.matches(row):
                continue
            breached = spec.condition.breached(row)
            if breached is None:
                continue
            series = Series.of(row)
            end = int(row["window_end"])
            seen = by_series[series].get(end)
            if seen is not None and seen.breached and not breached:
                continue  # two detector configs on one window: a breach of either counts
            by_series[series][end] = Observation(
                int(row["window_start"]), end, breached, notifiers.figures_of(row)
            )
        if not by_series:
            return
        states = repos.alerts.for_rule(rule.id, model)
        policy = Policy(
            spec.persistence.breaches, spec.persistence.windows, spec.repeat_seconds, spec.notify_resolved
        )
        for series, windows in by_series.items():
            observations = list(windows.values())
            known = states.get(series.hash)
            record = (
                replace(known, rule_name=rule.name)
                if known is not None
                else AlertRecord(
                    id=0,
                    rule_id=rule.id,
                    project_id=project_id,
                    model=model,
                    series_hash=series.hash,
                    version=series.version,
                    detector=series.detector,
                    metric=series.metric,
                    feature=series.feature,
                    slice=series.slice,
                    status=AlertStatus.OK,
                    severity=spec.severity,
                    episode=0,
                    recent=[],
                    figures={},
                    last_window_end=None,
                    since=now,
                    rule_name=rule.name,
                )
            )
            if not worth_keeping(record, observations):
                continue
            outcome.series += 1
            updated, events = advance(record, observations, policy, now)
            updated = replace(updated, severity=spec.severity, rule_name=rule.name)
            if updated == record:
                continue
            saved = repos.alerts.save(updated)
            if saved.status is not record.status:
                outcome.transitions += 1
                if self.metrics is not None:
                    self.metrics.transitions.labels(saved.status.value).inc()
                log.info(
                    "alert %d (%s on %s): %s -> %s",
                    saved.id,
                    rule.name,
                    series.label(),
                    record.status.value,
                    saved.status.value,
                    extra={"project": project, "model": model, "version": series.version},
                )
            for event in events:
                targets = _targets(spec, channels)
                for channel in targets:
                    key = stable_key("alert", saved.id, event.episode, event.kind, event.seq, channel.id)
                    document = notifiers.alert_document(
                        key=key,
                        event=event.kind,
                        created_at=now,
                        project=project,
                        alert=_alert_body(saved, rule, spec, event),
                        link=_link(self.settings.public_url, saved),
                    )
                    made = repos.outbox.enqueue(
                        project_id=project_id,
                        key=key,
                        kind=OutboxKind.ALERT,
                        event=f"alert.{event.kind}",
                        target=f"channel {channel.name}",
                        body=notifiers.render(channel.type, document),
                        max_attempts=self.settings.alerts_max_attempts,
                        channel_id=channel.id,
                        alert_id=saved.id,
                    )
                    if made is not None:
                        outcome.notifications += 1
                        self._count("alert")

    # -- retraining -----------------------------------------------------------------------

    def _apply_policy(
        self,
        project: str,
        model: str,
        policy_id: int,
        rows: list[dict[str, Any]],
        step: int,
        now: datetime,
        outcome: Evaluation,
    ) -> None:
        if not rows:
            return
        latest = max(int(r["window_end"]) for r in rows)
        with self.meta.repos() as repos:
            policy = repos.policies.get(project, policy_id, lock=True)
            if policy is None or not policy.enabled:
                return
            spec = parse_policy(policy.config)
            state = dict(policy.state)
            if int(state.get("latest_window_end") or 0) > latest:
                return  # a re-run of older windows: findings are judged at the newest window
            if not triggers.has_evidence(spec, rows, latest):
                return  # the run wrote none of the results the policy reads: no evidence either way
            info = repos.models.require(project, model)
            found = triggers.findings(
                spec, info.schema, _important_slices(repos, project, model, rows), rows, latest, step
            )
            state.update(latest_window_end=latest, evaluated_at=notifiers.iso_dt(now))
            if not triggers.holds(spec, found):
                state.update(active=False, trigger_id=None, held=[], findings=0)
                repos.policies.update(project, policy.id, state=state)
                return
            flat = [f for kind in found.values() for f in kind]
            if not state.get("active"):
                state.update(active=True, episode=int(state.get("episode") or 0) + 1, trigger_id=None)
            episode = int(state["episode"])
            fig = triggers.figures(flat, rows, latest, step)
            proof = triggers.evidence(
                project=project,
                model=model,
                database=self.table.engine.database,
                spec=spec,
                found=found,
                fig=fig,
                step=step,
                episode=episode,
            )
            state["findings"] = len(flat)
            existing = repos.triggers.by_id(int(state["trigger_id"])) if state.get("trigger_id") else None
            if existing is not None:
                if existing.state is TriggerState.PROPOSED:
                    merged = triggers.merge_evidence(existing.evidence, proof, self.table.engine.database)
                    if merged != existing.evidence:
                        repos.triggers.save(existing.id, evidence=merged)
                repos.policies.update(project, policy.id, state=state)
                return
            last = repos.triggers.latest(policy.id)
            held = triggers.gate_failures(spec, fig, last.proposed_at if last is not None else None, now)
            state["held"] = held
            outcome.held = held
            if held:
                repos.policies.update(project, policy.id, state=state)
                log.info(
                    "retraining held for model %s (episode %d): %s",
                    model,
                    episode,
                    "; ".join(held),
                    extra={"project": project, "model": model},
                )
                return
            proposed = repos.triggers.create(
                project_id=policy.project_id,
                policy_id=policy.id,
                model=model,
                episode=episode,
                evidence=proof,
                history=[
                    {
                        "state": TriggerState.PROPOSED.value,
                        "at": notifiers.iso_dt(now),
                        "by": {"system": "policy"},
                        "note": f"episode {episode}: {len(flat)} findings at the window ending {notifiers.iso(latest)}",
                    }
                ],
                at=now,
            )
            state["trigger_id"] = proposed.id
            outcome.triggers_proposed += 1
            self._trigger_step(TriggerState.PROPOSED)
            if not spec.require_approval:
                self._approve(
                    repos, project, proposed, policy, {"system": "policy"}, "approval not required", now
                )
                outcome.notifications += 1
            repos.policies.update(project, policy.id, state=state)
            log.info(
                "retraining trigger %d proposed for model %s (episode %d)",
                proposed.id,
                model,
                episode,
                extra={"project": project, "model": model},
            )

    def _approve(
        self,
        repos: Repositories,
        project: str,
        trigger: TriggerRecord,
        policy: PolicyRecord,
        by: dict[str, Any],
        note: str | None,
        now: datetime,
    ) -> TriggerRecord:
        history = [
            *trigger.history,
            {"state": TriggerState.APPROVED.value, "at": notifiers.iso_dt(now), "by": by, "note": note},
        ]
        approved = repos.triggers.save(
            trigger.id,
            state=TriggerState.APPROVED,
            history=history,
            decided_at=now,
            decided_by=actor_text(by),
        )
        key = stable_key("trigger", trigger.id, "dispatch")
        document = notifiers.trigger_document(
            key=key,
            created_at=now,
            project=project,
            trigger=trigger_body(approved),
            link=notifiers.dashboard_link(
                self.settings.public_url, "alerts", model=approved.model, trigger=approved.id
            ),
        )
        repos.outbox.enqueue(
            project_id=policy.project_id,
            key=key,
            kind=OutboxKind.TRIGGER,
            event="retraining.trigger",
            target=f"pipeline of {policy.model} ({policy.url_hint})",
            body=notifiers.dumps(document),
            max_attempts=self.settings.alerts_max_attempts,
            policy_id=policy.id,
            trigger_id=trigger.id,
        )
        self._count("trigger")
        self._trigger_step(TriggerState.APPROVED)
        return approved

    def approve(self, project: str, trigger_id: int, key: KeyInfo, note: str | None) -> TriggerRecord:
        """proposed → approved, and the evidence goes to the pipeline webhook through the outbox."""
        with self.meta.repos() as repos:
            trigger = repos.triggers.require(project, trigger_id, lock=True)
            if trigger.state is not TriggerState.PROPOSED:
                raise Conflict(f"trigger {trigger_id} is {trigger.state.value}, not proposed")
            policy = repos.policies.by_id(trigger.policy_id) if trigger.policy_id is not None else None
            if policy is None:
                raise Conflict(
                    f"the retraining policy of trigger {trigger_id} was deleted: nowhere to dispatch"
                )
            approved = self._approve(repos, project, trigger, policy, actor(key), note, self.now())
        self.wake()
        return approved

    def reject(self, project: str, trigger_id: int, key: KeyInfo, note: str | None) -> TriggerRecord:
        """proposed → rejected; nothing is sent."""
        now = self.now()
        with self.meta.repos() as repos:
            trigger = repos.triggers.require(project, trigger_id, lock=True)
            if trigger.state is not TriggerState.PROPOSED:
                raise Conflict(f"trigger {trigger_id} is {trigger.state.value}, not proposed")
            by = actor(key)
            history = [
                *trigger.history,
                {"state": TriggerState.REJECTED.value, "at": notifiers.iso_dt(now), "by": by, "note": note},
            ]
            rejected = repos.triggers.save(
                trigger.id,
                state=TriggerState.REJECTED,
                history=history,
                decided_at=now,
                decided_by=actor_text(by),
            )
        self._trigger_step(TriggerState.REJECTED)
        return rejected

    # -- policies -------------------------------------------------------------------------

    def create_policy(
        self,
        project: str,
        model: str,
        spec: triggers.PolicySpec,
        *,
        url: str,
        secret: str | None,
        enabled: bool,
    ) -> PolicyRecord:
        check_secret(ChannelType.WEBHOOK, secret)
        with self.meta.repos() as repos:
            return repos.policies.create(
                project,
                model,
                spec.model_dump(mode="json"),
                self.box.seal(url),
                url_hint(url),
                None if secret is None else self.box.seal(secret),
                enabled=enabled,
            )

    def update_policy(self, project: str, ref: int | str, changes: dict[str, Any]) -> PolicyRecord:
        if "url" in changes and not changes["url"]:
            raise InvalidInput("a policy's webhook_url cannot be removed: delete the policy instead")
        with self.meta.repos() as repos:
            current = repos.policies.require(project, ref, lock=True)
            columns: dict[str, Any] = {}
            merged = dict(current.config)
            for name, value in changes.items():
                if name in ("url", "secret", "enabled"):
                    continue
                if isinstance(value, dict) and isinstance(merged.get(name), dict):
                    merged[name] = {**merged[name], **value}
                else:
                    merged[name] = value
            columns["config"] = parse_policy(merged).model_dump(mode="json")
            if "url" in changes:
                columns["url_token"] = self.box.seal(changes["url"])
                columns["url_hint"] = url_hint(changes["url"])
            if "secret" in changes:
                check_secret(ChannelType.WEBHOOK, changes["secret"])
                columns["secret_token"] = self.box.seal(changes["secret"])
            if "enabled" in changes:
                columns["enabled"] = bool(changes["enabled"])
            return repos.policies.update(project, current.id, **columns)

    # -- small things ---------------------------------------------------------------------

    def requeue(self, project: str, item_id: int) -> OutboxRecord:
        with self.meta.repos() as repos:
            record = repos.outbox.requeue(project, item_id, self.settings.alerts_max_attempts)
        self.wake()
        return record

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(kind).inc()

    def _trigger_step(self, state: TriggerState) -> None:
        if self.metrics is not None:
            self.metrics.triggers.labels(state.value).inc()


# -- helpers ----------------------------------------------------------------------------------


MIN_SECRET_LENGTH = 16


def check_secret(type: ChannelType, secret: str | None) -> None:
    """Webhooks are signed, so they need a secret worth the name; Slack URLs carry their own."""
    if type is ChannelType.SLACK:
        if secret is not None:
            raise InvalidInput("a slack channel takes no secret: its URL is the credential")
        return
    if secret is None or len(secret) < MIN_SECRET_LENGTH:
        raise InvalidInput(f"a webhook needs a signing secret of at least {MIN_SECRET_LENGTH} characters")


def parse_rule(spec: dict[str, Any]) -> RuleSpec:
    try:
        return RuleSpec.model_validate(spec)
    except ValidationError as exc:
        raise InvalidInput(f"invalid rule: {_errors(exc)}") from None


def parse_policy(config: dict[str, Any]) -> triggers.PolicySpec:
    try:
        return triggers.PolicySpec.model_validate(config)
    except ValidationError as exc:
        raise InvalidInput(f"invalid retraining policy: {_errors(exc)}") from None


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}".lstrip(": ") for e in exc.errors()
    )


def _project_id(repos: Repositories, project: str) -> int:
    info = repos.projects.get(project)
    if info is None:
        raise NotFound(f"project {project!r} not found")
    return info.id


def _targets(spec: RuleSpec, channels: list[ChannelRecord]) -> list[ChannelRecord]:
    if spec.channels is None:
        return [c for c in channels if c.is_default and c.enabled]
    wanted = set(spec.channels)
    return [c for c in channels if c.name in wanted and c.enabled]


def _link(public_url: str | None, alert: AlertRecord) -> str | None:
    return notifiers.dashboard_link(
        public_url,
        notifiers.PAGES.get(alert.detector, "alerts"),
        model=alert.model,
        version=alert.version,
        detector=alert.detector,
        metric=alert.metric,
        feature=alert.feature,
        slice=alert.slice,
        alert=alert.id,
    )


def _alert_body(alert: AlertRecord, rule: RuleRecord, spec: RuleSpec, event: Any) -> dict[str, Any]:
    fig = event.figures
    condition = spec.condition
    return {
        "id": alert.id,
        "state": "resolved" if event.kind == "resolved" else "firing",
        "episode": event.episode,
        "severity": spec.severity.value,
        "rule": {
            "id": rule.id,
            "name": rule.name,
            "condition": {
                "op": condition.op,
                "threshold": condition.threshold,
                "adjusted": condition.adjusted,
                "details": condition.details,
                "text": condition.describe(),
            },
            "persistence": {"breaches": spec.persistence.breaches, "windows": spec.persistence.windows},
        },
        "model": alert.model,
        "version": alert.version,
        "detector": alert.detector,
        "metric": alert.metric,
        "feature": alert.feature,
        "slice": alert.slice,
        "value": fig.get("value"),
        "threshold": condition.threshold if condition.op != "alert" else fig.get("threshold"),
        "detector_threshold": fig.get("threshold"),
        "verdict": fig.get("alert"),
        "breaches": event.breaches,
        "windows": event.windows,
        "window": {
            "start": notifiers.iso(fig.get("window_start")),
            "end": notifiers.iso(fig.get("window_end")),
        },
        "sample_size": fig.get("sample_size"),
        "details": fig.get("details", {}),
        "fired_at": notifiers.iso_dt(alert.fired_at),
        "resolved_at": notifiers.iso_dt(alert.resolved_at) if event.kind == "resolved" else None,
    }


def trigger_body(trigger: TriggerRecord) -> dict[str, Any]:
    return {
        "id": trigger.id,
        "model": trigger.model,
        "state": trigger.state.value,
        "episode": trigger.episode,
        "proposed_at": notifiers.iso_dt(trigger.proposed_at),
        "decided_at": notifiers.iso_dt(trigger.decided_at),
        "decided_by": trigger.decided_by,
        "history": trigger.history,
        "evidence": trigger.evidence,
    }


def _important_slices(repos: Repositories, project: str, model: str, rows: list[dict[str, Any]]) -> set[str]:
    """The monitor's important slices and those a slice detector marks important."""
    from driftline.detectors.monitors import monitor_of

    out = {str(r["slice"]) for r in rows if isinstance((r.get("details") or {}).get("important"), dict)}
    try:
        monitor = monitor_of(repos.monitors.get(project, model))
    except DriftlineError:
        return out
    return out | {s.slice for s in monitor.config.important_slices}
