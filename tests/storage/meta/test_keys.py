from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, event, select

from driftline.errors import Conflict, InvalidInput
from driftline.storage.meta import KeyRole, MetaStore, hash_key
from driftline.storage.meta.db import KEY_CHECK_POOL_SIZE
from driftline.storage.meta.keys import display_prefix

BOOTSTRAP = "bootstrap-secret-0123456789"


def test_create_and_verify(store: MetaStore) -> None:
    with store.repos() as r:
        plaintext, info = r.keys.create("default", "ingest", "serving")
    assert plaintext.startswith("dl_")
    assert len(plaintext) == 46
    assert info.prefix == plaintext[:10]
    assert (info.project, info.role, info.name) == ("default", KeyRole.INGEST, "serving")
    assert info.revoked_at is None
    with store.repos() as r:
        assert r.keys.verify(plaintext) == info
        assert r.projects.get("default") is not None  # made on demand


def test_every_created_key_is_different(store: MetaStore) -> None:
    with store.repos() as r:
        keys = {r.keys.create("default", "read")[0] for _ in range(20)}
    assert len(keys) == 20


@pytest.mark.parametrize("wrong", ["", "dl_", "x" * 10_000, "dl_not-a-real-key-at-all-0000000000000000000"])
def test_wrong_keys_are_refused(store: MetaStore, wrong: str) -> None:
    with store.repos() as r:
        plaintext, _ = r.keys.create("default", "admin")
        assert r.keys.verify(wrong) is None
        assert r.keys.verify(plaintext[:-1]) is None
        assert r.keys.verify(plaintext + "x") is None


def test_revoked_key_is_refused_at_once(store: MetaStore, empty_url: str) -> None:
    with store.repos() as r:
        plaintext, info = r.keys.create("default", "ingest")
    other = MetaStore.from_url(empty_url)  # another server process on the same database
    try:
        with other.repos() as r:
            assert r.keys.verify(plaintext) is not None
        with store.repos() as r:
            assert r.keys.revoke(info.id) is True
            assert r.keys.verify(plaintext) is None  # within the revoking transaction
        with other.repos() as r:
            assert r.keys.verify(plaintext) is None
            revoked = r.keys.get(info.id)
        assert revoked is not None
        assert revoked.revoked_at is not None
    finally:
        other.dispose()


def test_revoke_by_prefix_and_repeat(store: MetaStore) -> None:
    with store.repos() as r:
        plaintext, info = r.keys.create("default", "read")
        kept, _ = r.keys.create("default", "read")
    with store.repos() as r:
        assert r.keys.revoke(info.prefix) is True
        assert r.keys.revoke(info.prefix) is True  # already revoked: still a success
        assert r.keys.revoke(info.id) is True
        assert r.keys.revoke(999_999) is False
        assert r.keys.revoke("dl_nothere") is False
        assert r.keys.verify(plaintext) is None
        assert r.keys.verify(kept) is not None


def test_revoke_scoped_to_project(store: MetaStore) -> None:
    with store.repos() as r:
        plaintext, info = r.keys.create("alpha", "admin")
        assert r.keys.revoke(info.id, project="beta") is False
        assert r.keys.verify(plaintext) is not None
        assert r.keys.revoke(info.id, project="alpha") is True


def test_ambiguous_prefix_is_a_conflict(store: MetaStore) -> None:
    first, second = "shared-prefix-" + "a" * 30, "shared-prefix-" + "b" * 30
    with store.repos() as r:
        a = r.keys.ensure_key("default", first, "admin", "a")
        b = r.keys.ensure_key("default", second, "admin", "b")
        assert a.prefix == b.prefix
        with pytest.raises(Conflict, match="revoke by id"):
            r.keys.revoke(a.prefix)
        assert r.keys.verify(first) is not None
        assert r.keys.revoke(a.id) is True
        assert r.keys.revoke(a.prefix) is True  # one active key left under the prefix
        assert r.keys.verify(second) is None


def test_plaintext_is_stored_nowhere(store: MetaStore, backend: str, empty_url: str) -> None:
    with store.repos() as r:
        created, _ = r.keys.create("default", "admin", "ops")
        r.keys.ensure_key("default", BOOTSTRAP, "admin", "bootstrap")
    texts = []
    reflected = MetaData()
    reflected.reflect(store.engine)
    with store.engine.connect() as conn:
        for table in reflected.sorted_tables:
            for row in conn.execute(select(table)):
                texts.extend(str(value) for value in row)
    dump = "\n".join(texts)
    assert hash_key(created) in dump  # the scan does see the keys table
    assert created not in dump
    assert BOOTSTRAP not in dump
    if backend == "sqlite":
        home = Path(str(store.url.database)).parent
        raw = b"".join(p.read_bytes() for p in home.iterdir() if p.is_file())
        assert created.encode() not in raw
        assert BOOTSTRAP.encode() not in raw


def test_ensure_key_is_idempotent(store: MetaStore) -> None:
    with store.repos() as r:
        first = r.keys.ensure_key("default", BOOTSTRAP, "admin", "bootstrap")
    with store.repos() as r:
        again = r.keys.ensure_key("default", BOOTSTRAP, KeyRole.ADMIN, "renamed")
        assert again == first
        assert r.keys.verify(BOOTSTRAP) == first
        assert len(r.keys.list()) == 1


def test_ensure_key_keeps_a_revocation(store: MetaStore) -> None:
    with store.repos() as r:
        info = r.keys.ensure_key("default", BOOTSTRAP, "admin")
        r.keys.revoke(info.id)
    with store.repos() as r:
        again = r.keys.ensure_key("default", BOOTSTRAP, "admin")
        assert again.revoked_at is not None
        assert r.keys.verify(BOOTSTRAP) is None


def test_ensure_key_refuses_another_binding(store: MetaStore) -> None:
    with store.repos() as r:
        r.keys.ensure_key("default", BOOTSTRAP, "admin")
        with pytest.raises(Conflict):
            r.keys.ensure_key("default", BOOTSTRAP, "read")
        with pytest.raises(Conflict):
            r.keys.ensure_key("other", BOOTSTRAP, "admin")


@pytest.mark.parametrize(
    "bad", ["short-key", " leading-space-key", "trailing-space-key ", "tab\tinside-the-key"]
)
def test_ensure_key_refuses_unusable_keys(store: MetaStore, bad: str) -> None:
    with pytest.raises(InvalidInput), store.repos() as r:
        r.keys.ensure_key("default", bad, "admin")


def test_short_keys_show_a_short_prefix() -> None:
    assert display_prefix("0123456789abcdef") == "0123"
    assert display_prefix("dl_" + "x" * 43) == "dl_xxxxxxx"


def test_invalid_role_and_project(store: MetaStore) -> None:
    with store.repos() as r:
        with pytest.raises(InvalidInput, match="role"):
            r.keys.create("default", "superuser")
        with pytest.raises(InvalidInput, match="project"):
            r.keys.create("Not A Project", "read")
        with pytest.raises(InvalidInput, match="name"):
            r.keys.create("default", "read", "n" * 201)


def test_list_keys(store: MetaStore) -> None:
    with store.repos() as r:
        _, a = r.keys.create("alpha", "admin", "a")
        _, b = r.keys.create("beta", "read", "b")
        _, c = r.keys.create("alpha", "ingest", "c")
        r.keys.revoke(c.id)
    with store.repos(readonly=True) as r:
        assert [k.id for k in r.keys.list()] == [a.id, c.id, b.id]
        assert [k.id for k in r.keys.list("alpha")] == [a.id, c.id]
        assert [k.id for k in r.keys.list("alpha", include_revoked=False)] == [a.id]
        assert r.keys.list("nobody") == []


def test_touch_records_use_at_most_once_per_interval(store: MetaStore) -> None:
    with store.repos() as r:
        _, info = r.keys.create("default", "ingest")
        r.keys.touch(info.id)
    with store.repos() as r:
        first = r.keys.get(info.id)
        assert first is not None
        assert first.last_used_at is not None
        r.keys.touch(info.id)
        assert r.keys.get(info.id) == first
        r.keys.touch(info.id, min_interval=timedelta(0))
    with store.repos() as r:
        later = r.keys.get(info.id)
        assert later is not None
        assert later.last_used_at is not None
        assert later.last_used_at > first.last_used_at


def test_key_checks_from_many_threads_share_a_few_connections(store: MetaStore) -> None:
    """Forty threads checking keys at once (the API's worker threads) open no more than the
    key check's own few connections: past a pool's size, each check would open and close one."""
    with store.repos() as r:
        plaintext, info = r.keys.create("default", "ingest")
    opened: list[int] = []
    event.listen(store.key_checks, "connect", lambda *_: opened.append(1))
    start = threading.Barrier(40)
    answers: list[int] = []

    def check() -> None:
        start.wait()
        for _ in range(25):
            got = store.verify_key(plaintext)
            answers.append(got.id if got is not None else -1)

    threads = [threading.Thread(target=check) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [info.id] * 1000
    assert 1 <= len(opened) <= KEY_CHECK_POOL_SIZE
