"""The alert state machine of one rule on one series: ok → pending → firing → resolved.

The state follows the breach flags of the last M windows (by window end), kept with the
state: `firing` once at least N of them breach, `resolved` once fewer do; `pending` when
the newest window breaches but fewer than N do, `ok` when a pending breach has left the
window.
Events (what is notified) are emitted on transitions only, so one episode notifies once
when it fires and once when it resolves, however many windows it spans. A re-run of
windows already seen sets the same flags again: no transition, no notification. A re-run
whose results changed (late labels) updates those flags, and notifies only if that
changes the state.

Repeats: while firing and not acknowledged, a window seen for the first time notifies
again when `repeat` seconds of wall-clock time passed since the last notification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from driftline.storage.meta.alerting import AlertRecord, AlertStatus

EventKind = Literal["firing", "resolved", "repeat"]


@dataclass(frozen=True)
class Observation:
    """One window of a series: whether it breached, and the figures to report."""

    window_start: int
    window_end: int
    breached: bool
    figures: dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A notification to send: `episode` and `seq` (its number within the episode) make its key."""

    kind: EventKind
    figures: dict[str, Any]
    breaches: int
    windows: int
    episode: int
    seq: int


@dataclass(frozen=True)
class Policy:
    breaches: int
    windows: int
    repeat_seconds: int | None
    notify_resolved: bool


def _trim(recent: dict[int, bool], windows: int) -> dict[int, bool]:
    return {w: recent[w] for w in sorted(recent)[-windows:]}


def _count(recent: dict[int, bool]) -> int:
    return sum(1 for b in recent.values() if b)


def _step(
    record: AlertRecord, recent: dict[int, bool], figures: dict[str, Any], policy: Policy, now: datetime
) -> tuple[AlertRecord, Event | None]:
    """Apply the flags to the state: the new state and the event to notify, if any."""
    count = _count(recent)
    status = record.status
    updated = replace(record, recent=sorted(recent.items()), figures=figures)
    fired = count >= policy.breaches
    event: Event | None = None
    if status in (AlertStatus.OK, AlertStatus.RESOLVED, AlertStatus.PENDING):
        if fired:
            episode = record.episode if status is AlertStatus.PENDING else record.episode + 1
            updated = replace(
                updated,
                status=AlertStatus.FIRING,
                episode=episode,
                since=now,
                fired_at=now,
                resolved_at=None,
                acked_at=None,
                acked_by=None,
                notifications=0,
            )
            event = Event("firing", figures, count, len(recent), episode, 0)
        elif status is not AlertStatus.PENDING and recent[max(recent)]:
            # a new breach; older breaches still in the window after a resolve do not re-open it
            updated = replace(updated, status=AlertStatus.PENDING, episode=record.episode + 1, since=now)
        elif count == 0 and status is AlertStatus.PENDING:
            updated = replace(updated, status=AlertStatus.OK, since=now)
    elif status is AlertStatus.FIRING and not fired:
        updated = replace(updated, status=AlertStatus.RESOLVED, since=now, resolved_at=now)
        if policy.notify_resolved:
            event = Event("resolved", figures, count, len(recent), record.episode, 0)
    return updated, event


def _notified(state: AlertRecord, event: Event, now: datetime) -> tuple[AlertRecord, Event]:
    seq = state.notifications + 1
    return replace(state, last_notified_at=now, notifications=seq), replace(event, seq=seq)


def advance(
    record: AlertRecord, observations: Sequence[Observation], policy: Policy, now: datetime
) -> tuple[AlertRecord, list[Event]]:
    """Fold a run's windows of one series into its state; the events to notify, in order."""
    recent = _trim(dict(record.recent), policy.windows)
    last = record.last_window_end
    seen = sorted((o for o in observations if last is not None and o.window_end <= last), key=_end)
    new = sorted((o for o in observations if last is None or o.window_end > last), key=_end)
    events: list[Event] = []
    state = record

    # windows seen before (a re-run): correct their flags within the kept horizon, then step once
    horizon = min(recent) if len(recent) >= policy.windows else None
    changed = False
    figures = dict(state.figures)
    for o in seen:
        if (o.window_end in recent or horizon is None or o.window_end > horizon) and recent.get(
            o.window_end
        ) != o.breached:
            recent[o.window_end] = o.breached
            changed = True
        if o.window_end == last:
            figures = o.figures
    if changed:
        recent = _trim(recent, policy.windows)
        state, event = _step(state, recent, figures, policy, now)
        if event is not None:
            state, event = _notified(state, event, now)
            events.append(event)
    elif figures != state.figures:
        state = replace(state, figures=figures)

    for o in new:
        recent[o.window_end] = o.breached
        recent = _trim(recent, policy.windows)
        state, event = _step(state, recent, o.figures, policy, now)
        state = replace(state, last_window_end=o.window_end)
        if event is not None:
            state, event = _notified(state, event, now)
            events.append(event)

    if (
        new
        and not events
        and state.status is AlertStatus.FIRING
        and state.acked_at is None
        and policy.repeat_seconds is not None
        and state.last_notified_at is not None
        and now - state.last_notified_at >= timedelta(seconds=policy.repeat_seconds)
    ):
        repeat = Event("repeat", state.figures, _count(recent), len(recent), state.episode, 0)
        state, repeat = _notified(state, repeat, now)
        events.append(repeat)
    return state, events


def _end(o: Observation) -> int:
    return o.window_end


def worth_keeping(record: AlertRecord, observations: Sequence[Observation]) -> bool:
    """A series never seen breaching needs no row: most series never do."""
    return record.id != 0 or any(o.breached for o in observations)
