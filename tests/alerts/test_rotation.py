"""Changing DRIFTLINE_SECRET_KEY: channels keep delivering, and `driftline secrets rotate` lets the old one go."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update
from typer.testing import CliRunner

from driftline.alerts.crypto import SecretBox
from driftline.alerts.rotation import rotate
from driftline.cli import app as cli
from driftline.config import Settings, get_settings
from driftline.ingest.app import create_app
from driftline.storage.meta import MetaStore
from driftline.storage.meta.alerting import Channel, RetrainingPolicy
from tests.alerts.conftest import SECRET, channel, ok, register
from tests.alerts.receiver import Receiver
from tests.alerts.test_triggers import policy
from tests.conftest import Api

OLD, NEW = "the-secret-before-the-rotation", "the-secret-after-the-rotation"


def keyed(stack: Settings, current: str, *previous: str) -> Settings:
    return stack.model_copy(
        update={
            "secret_key": SecretStr(current),
            "secret_key_previous": [SecretStr(p) for p in previous],
            "alerts_delivery_enabled": True,
        }
    )


def send_test(settings: Settings) -> dict[str, Any]:
    with Api(create_app(settings)) as api:
        item: dict[str, Any] = ok(api.post("/v1/channels/hook/test", params={"wait": 30}))
    return item


@pytest.fixture
def cli_env(stack: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Runs `driftline secrets rotate` against the stack's metadata store with the given secrets."""
    for name in [k for k in os.environ if k.startswith("DRIFTLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DRIFTLINE_HOME", str(stack.home))
    monkeypatch.setenv("DRIFTLINE_DATABASE_URL", stack.resolved_database_url)

    def run(current: str, *previous: str) -> Any:
        monkeypatch.setenv("DRIFTLINE_SECRET_KEY", current)
        monkeypatch.setenv("DRIFTLINE_SECRET_KEY_PREVIOUS", ", ".join(previous))
        get_settings.cache_clear()
        return CliRunner().invoke(cli, ["secrets", "rotate"])

    try:
        yield run
    finally:
        get_settings.cache_clear()


def stored_tokens(stack: Settings) -> list[tuple[str, str | None]]:
    store = MetaStore.from_settings(stack)
    try:
        with store.session(readonly=True) as session:
            rows = [
                *session.execute(select(Channel.url_token, Channel.secret_token)),
                *session.execute(select(RetrainingPolicy.url_token, RetrainingPolicy.secret_token)),
            ]
    finally:
        store.dispose()
    return [(str(u), None if s is None else str(s)) for u, s in rows]


def test_a_rotation_keeps_channels_and_pipelines_delivering(settings: Settings, cli_env: Any) -> None:
    with Receiver(secret=SECRET) as hook, Receiver(path="/pipeline/retrain", secret=SECRET) as pipeline:
        with Api(create_app(keyed(settings, OLD))) as api:
            register(api)
            channel(api, "hook", hook.url)
            policy(api, pipeline.url)

        # the new secret alone opens nothing the old one sealed, and says what to do
        dead = send_test(keyed(settings, NEW))
        assert dead["state"] == "dead" and "DRIFTLINE_SECRET_KEY_PREVIOUS" in dead["last_error"]
        assert hook.requests == []

        # with the old one as previous, everything still opens
        assert send_test(keyed(settings, NEW, OLD))["state"] == "delivered"

        before = stored_tokens(settings)
        result = cli_env(NEW, OLD)
        assert result.exit_code == 0, result.output
        assert "sealed again: 2, already current: 0" in result.output
        after = stored_tokens(settings)
        assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(after, before, strict=True))
        again = cli_env(NEW, OLD)
        assert again.exit_code == 0 and "sealed again: 0, already current: 2" in again.output
        assert stored_tokens(settings) == after

        # the old secret can go: the channel delivers, signed with the secret it was given
        assert send_test(keyed(settings, NEW))["state"] == "delivered"
        assert [r.signature_ok for r in hook.successes()] == [True, True]
        box = SecretBox(NEW.encode())
        (_, (url, secret)) = after
        assert (box.open(url), box.open(secret or "")) == (pipeline.url, SECRET)


def test_a_rotation_names_what_no_configured_secret_opens(settings: Settings, cli_env: Any) -> None:
    with Api(create_app(keyed(settings, OLD))) as api:
        register(api)
        channel(api, "hook", "http://127.0.0.1:9/hook")
        policy(api, "http://127.0.0.1:9/pipeline")
    before = stored_tokens(settings)
    result = cli_env(NEW)  # the old value was lost
    assert result.exit_code == 1
    assert "channel default/hook" in result.output and "retraining policy of default/fraud" in result.output
    assert stored_tokens(settings) == before


def test_a_channel_changed_during_a_rotation_keeps_its_new_value(settings: Settings) -> None:
    """Rows are written only if still as read: a concurrent change (sealed under the new secret) wins."""
    if settings.resolved_database_url.startswith("sqlite"):
        pytest.skip(
            "SQLite runs one writer at a time: a change cannot land between the rotation's read and write"
        )
    with Api(create_app(keyed(settings, OLD))) as api:
        register(api)
        channel(api, "hook", "http://127.0.0.1:9/hook")
    new = SecretBox(NEW.encode())
    changed = new.seal("http://127.0.0.1:9/changed")
    store = MetaStore.from_settings(settings)

    class Meanwhile(SecretBox):
        def reseal(self, token: str) -> str | None:
            with store.session() as other:  # another transaction commits a new URL meanwhile
                other.execute(update(Channel).values(url_token=changed))
            return super().reseal(token)

    try:
        with store.session() as session:
            report = rotate(session, Meanwhile(NEW.encode(), [OLD.encode()]))
        assert (report.resealed, report.changed_meanwhile) == (0, 1)
        with store.session(readonly=True) as session:
            assert session.execute(select(Channel.url_token)).scalar_one() == changed
    finally:
        store.dispose()


def test_a_rotation_in_a_home_without_a_secret_touches_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped DRIFTLINE_HOME must not get a new secret, nor a new database, to rotate to."""
    for name in [k for k in os.environ if k.startswith("DRIFTLINE_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "not-the-home"
    monkeypatch.setenv("DRIFTLINE_HOME", str(home))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["secrets", "rotate"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "DRIFTLINE_SECRET_KEY is not set" in result.output
    assert not home.exists() or not any(home.iterdir())
