"""The state machine on its own: persistence N of M, repeats, resolve, re-runs, late corrections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from driftline.alerts.state import Observation, Policy, advance
from driftline.storage.meta.alerting import AlertRecord, AlertStatus, Severity

DAY = 86_400
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def fresh() -> AlertRecord:
    return AlertRecord(
        id=0,
        rule_id=1,
        project_id=1,
        model="m",
        series_hash="h",
        version="v1",
        detector="feature_drift",
        metric="psi",
        feature="amount",
        slice="",
        status=AlertStatus.OK,
        severity=Severity.WARNING,
        episode=0,
        recent=[],
        figures={},
        last_window_end=None,
        since=NOW,
    )


def obs(flags: str, first: int = 0) -> list[Observation]:
    """'x' breaches, '.' does not; one daily window each from day `first`."""
    return [
        Observation((first + i) * DAY, (first + i + 1) * DAY, c == "x", {"day": first + i})
        for i, c in enumerate(flags)
    ]


def run(
    record: AlertRecord, flags: str, first: int, policy: Policy, now: datetime = NOW
) -> tuple[AlertRecord, list[str]]:
    state, events = advance(record, obs(flags, first), policy, now)
    return state, [f"{e.kind}@{e.figures['day']}" for e in events]


def one_by_one(flags: str, policy: Policy) -> tuple[AlertRecord, list[str], list[str]]:
    """Feed windows one run at a time; the states after each and every event."""
    record, states, events = fresh(), [], []
    for day, flag in enumerate(flags):
        record, got = run(record, flag, day, policy)
        states.append(record.status.value)
        events.extend(got)
    return record, states, events


def test_three_of_four_without_hysteresis() -> None:
    policy = Policy(breaches=3, windows=4, repeat_seconds=None, notify_resolved=True)
    record, states, events = one_by_one("x.xx.xx....", policy)
    assert states == [
        "pending",  # x
        "pending",  # x.
        "pending",  # x.x
        "firing",  # x.xx: 3 of 4
        "resolved",  # .xx.: 2 of 4
        "firing",  # xx.x
        "firing",  # x.xx
        "resolved",  # .xx.
        "resolved",  # xx..: old breaches do not re-open a resolved alert
        "resolved",
        "resolved",
    ]
    assert events == ["firing@3", "resolved@4", "firing@5", "resolved@7"]
    assert record.episode == 2


def test_persistence_exactly() -> None:
    policy = Policy(breaches=3, windows=4, repeat_seconds=None, notify_resolved=True)
    _, states, events = one_by_one("xx.x" + "x" + ".." + "." + "xxx", policy)
    # windows: 0 x, 1 x, 2 ., 3 x -> 3 of 4 fires at day 3; day 4 x: 1x.xx? last4 = x.xx = 3 -> firing
    # day 5 .: .xx. = 2 -> resolved; day 6 .: xx.. no: x.. . = 1 -> resolved stays; day 7 . -> 0
    # days 8-10 xxx: pending, pending, firing at day 10 (.xxx = 3)
    assert states == [
        "pending",
        "pending",
        "pending",
        "firing",
        "firing",
        "resolved",
        "resolved",
        "resolved",
        "pending",
        "pending",
        "firing",
    ]
    assert events == ["firing@3", "resolved@5", "firing@10"]


def test_one_run_over_many_windows_notifies_per_transition_not_per_window() -> None:
    policy = Policy(breaches=2, windows=3, repeat_seconds=None, notify_resolved=True)
    record, events = run(fresh(), "..xxxxxxx...", 0, policy)
    assert events == ["firing@3", "resolved@10"]
    assert record.episode == 1 and record.status is AlertStatus.RESOLVED


def test_rerun_of_the_same_windows_is_silent() -> None:
    policy = Policy(breaches=2, windows=3, repeat_seconds=3600, notify_resolved=True)
    record, events = run(fresh(), "xxx", 0, policy)
    assert events == ["firing@1"]
    again, events = run(record, "xxx", 0, policy, NOW + timedelta(days=2))
    assert events == [] and again == record
    # a re-run of part of it, long after: still nothing (no new window, no repeat)
    again, events = run(record, "xx", 1, policy, NOW + timedelta(days=9))
    assert events == [] and again.status is AlertStatus.FIRING


def test_corrected_windows_change_the_state_once() -> None:
    """Late labels re-detect windows already seen: a flipped verdict moves the state, once."""
    policy = Policy(breaches=2, windows=3, repeat_seconds=None, notify_resolved=True)
    record, events = run(fresh(), "x..", 0, policy)
    assert record.status is AlertStatus.PENDING and events == []
    record, events = run(record, "xx.", 0, policy)  # day 1 now breaches
    assert record.status is AlertStatus.FIRING and events == ["firing@2"]
    record, events = run(record, "xx.", 0, policy)
    assert events == []


def test_repeat_interval_while_firing_and_ack_stops_it() -> None:
    policy = Policy(breaches=1, windows=1, repeat_seconds=6 * 3600, notify_resolved=True)
    record, events = run(fresh(), "x", 0, policy, NOW)
    assert events == ["firing@0"] and record.notifications == 1
    record, events = run(record, "x", 1, policy, NOW + timedelta(hours=1))
    assert events == []  # within the interval
    record, events = run(record, "x", 2, policy, NOW + timedelta(hours=6))
    assert events == ["repeat@2"] and record.notifications == 2
    record, events = run(record, "x", 3, policy, NOW + timedelta(hours=13))
    assert events == ["repeat@3"] and record.notifications == 3
    acked = AlertRecord(**{**record.__dict__, "acked_at": NOW, "acked_by": "key 1"})
    record, events = run(acked, "x", 4, policy, NOW + timedelta(hours=30))
    assert events == []
    record, events = run(record, ".", 5, policy, NOW + timedelta(hours=31))
    assert events == ["resolved@5"] and record.acked_at is not None
    record, events = run(record, "x", 6, policy, NOW + timedelta(hours=32))
    assert events == ["firing@6"] and record.acked_at is None and record.episode == 2


def test_resolve_notification_can_be_switched_off() -> None:
    policy = Policy(breaches=1, windows=1, repeat_seconds=None, notify_resolved=False)
    record, events = run(fresh(), "x.", 0, policy)
    assert events == ["firing@0"] and record.status is AlertStatus.RESOLVED


def test_event_keys_differ_per_notification() -> None:
    policy = Policy(breaches=1, windows=1, repeat_seconds=60, notify_resolved=True)
    record, first = advance(fresh(), obs("x"), policy, NOW)
    record, second = advance(record, obs("x", 1), policy, NOW + timedelta(minutes=2))
    record, third = advance(record, obs(".x", 2), policy, NOW + timedelta(minutes=3))
    keys = [(e.episode, e.kind, e.seq) for e in [*first, *second, *third]]
    assert keys == [(1, "firing", 1), (1, "repeat", 2), (1, "resolved", 3), (2, "firing", 1)]
