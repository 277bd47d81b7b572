"""Stored channel and pipeline secrets sealed again under the current deployment secret.

After DRIFTLINE_SECRET_KEY changes (its old value moved to DRIFTLINE_SECRET_KEY_PREVIOUS),
every token still opens, but only while the old value stays configured. A rotation seals
each token again under the current secret, after which the old value can be dropped.

Each row is written only if its tokens are still the ones read (compare and set): a
channel changed through the API during the rotation keeps its new value, which is
sealed under the current secret anyway. Running it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from driftline.alerts.crypto import SecretBox, SecretUnreadable
from driftline.storage.meta.alerting import Channel, RetrainingPolicy
from driftline.storage.meta.models import Model, Project


@dataclass
class RotationReport:
    resealed: int = 0  # rows whose tokens were sealed again
    current: int = 0  # rows already sealed under the current secret
    changed_meanwhile: int = 0  # rows written by someone else between read and write
    unreadable: list[str] = field(default_factory=list)  # rows no configured secret opens


def _reseal_row(box: SecretBox, url_token: str, secret_token: str | None) -> tuple[str, str | None] | None:
    """New tokens for a row, or None when both are current already."""
    if box.is_current(url_token) and (secret_token is None or box.is_current(secret_token)):
        return None
    return box.reseal(url_token), None if secret_token is None else box.reseal(secret_token)


def _rotate(
    session: Session, box: SecretBox, table: type[Channel] | type[RetrainingPolicy], labels: dict[int, str]
) -> RotationReport:
    report = RotationReport()
    rows = session.execute(select(table.id, table.url_token, table.secret_token).order_by(table.id)).all()
    for row_id, url_token, secret_token in rows:
        try:
            sealed = _reseal_row(box, url_token, secret_token)
        except SecretUnreadable:
            report.unreadable.append(labels[row_id])
            continue
        if sealed is None:
            report.current += 1
            continue
        same_secret = (
            table.secret_token.is_(None) if secret_token is None else table.secret_token == secret_token
        )
        done = session.execute(
            update(table)
            .where(table.id == row_id, table.url_token == url_token, same_secret)
            .values(url_token=sealed[0], secret_token=sealed[1])
        )
        if done.rowcount:  # type: ignore[attr-defined]
            report.resealed += 1
        else:
            report.changed_meanwhile += 1
    return report


def rotate(session: Session, box: SecretBox) -> RotationReport:
    """Seal every channel's and retraining policy's URL and secret under the current secret."""
    channels = {
        cid: f"channel {project}/{name}"
        for cid, project, name in session.execute(
            select(Channel.id, Project.name, Channel.name).join(Project, Project.id == Channel.project_id)
        )
    }
    policies = {
        pid: f"retraining policy of {project}/{model}"
        for pid, project, model in session.execute(
            select(RetrainingPolicy.id, Project.name, Model.name)
            .join(Model, Model.id == RetrainingPolicy.model_id)
            .join(Project, Project.id == Model.project_id)
        )
    }
    total = RotationReport()
    for table, labels in ((Channel, channels), (RetrainingPolicy, policies)):
        part = _rotate(session, box, table, labels)
        total.resealed += part.resealed
        total.current += part.current
        total.changed_meanwhile += part.changed_meanwhile
        total.unreadable.extend(part.unreadable)
    return total
