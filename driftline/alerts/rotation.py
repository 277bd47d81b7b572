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
from typing import Any, cast

from sqlalchemy import CursorResult, Select, select, update
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


def _rotate(
    session: Session,
    box: SecretBox,
    table: type[Channel] | type[RetrainingPolicy],
    rows: Select[int, str, str | None, str],
    report: RotationReport,
) -> None:
    """`rows` selects (id, url token, secret token, label) of `table`."""
    for row_id, url_token, secret_token, label in session.execute(rows).all():
        try:
            new_url = box.reseal(url_token)
            new_secret = None if secret_token is None else box.reseal(secret_token)
        except SecretUnreadable:
            report.unreadable.append(label)
            continue
        if new_url is None and new_secret is None:
            report.current += 1
            continue
        same_secret = (
            table.secret_token.is_(None) if secret_token is None else table.secret_token == secret_token
        )
        done = cast(
            CursorResult[Any],
            session.execute(
                update(table)
                .where(table.id == row_id, table.url_token == url_token, same_secret)
                .values(url_token=new_url or url_token, secret_token=new_secret or secret_token)
            ),
        )
        if done.rowcount:
            report.resealed += 1
        else:
            report.changed_meanwhile += 1


def rotate(session: Session, box: SecretBox) -> RotationReport:
    """Seal every channel's and retraining policy's URL and secret under the current secret."""
    report = RotationReport()
    channels = (
        select(
            Channel.id,
            Channel.url_token,
            Channel.secret_token,
            "channel " + Project.name + "/" + Channel.name,
        )
        .join(Project, Project.id == Channel.project_id)
        .order_by(Channel.id)
    )
    policies = (
        select(
            RetrainingPolicy.id,
            RetrainingPolicy.url_token,
            RetrainingPolicy.secret_token,
            "retraining policy of " + Project.name + "/" + Model.name,
        )
        .join(Model, Model.id == RetrainingPolicy.model_id)
        .join(Project, Project.id == Model.project_id)
        .order_by(RetrainingPolicy.id)
    )
    _rotate(session, box, Channel, channels, report)
    _rotate(session, box, RetrainingPolicy, policies, report)
    return report
