"""API keys: stored as SHA-256 digests, scoped to a project, with a role.

Keys are long random tokens, so an unsalted fast hash is enough: a digest can be
looked up by index, and a leaked table reveals no usable key. The plaintext exists
only in the return value of `create`. Revocation is never cached, so it holds from the
next lookup on; `KeyCache` remembers only who a key is.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Select, bindparam, or_, select, update
from sqlalchemy.orm import Session

from driftline.errors import Conflict, InvalidInput
from driftline.storage.meta._sql import check_text, fresh, insert
from driftline.storage.meta.models import ApiKey, KeyRole, Project, utcnow
from driftline.storage.meta.projects import project_row
from driftline.storage.meta.records import KeyInfo

KEY_PREFIX = "dl_"
MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 512
DISPLAY_PREFIX_LENGTH = 10
KEY_NAME_MAX_LENGTH = 200


def generate_key() -> str:
    """A new key: `dl_` and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def display_prefix(plaintext: str) -> str:
    """The part of a key that listings show: 10 characters, never more than a quarter of it.

    Generated keys are 46 characters long; a short hand-picked key would give away most
    of its secret in a 10-character prefix.
    """
    return plaintext[: min(DISPLAY_PREFIX_LENGTH, len(plaintext) // 4)]


def check_plaintext(plaintext: str) -> str:
    """Refuse a key that is too short or that an HTTP header could not carry intact."""
    if not isinstance(plaintext, str):
        raise InvalidInput("an API key must be a string")
    if not MIN_KEY_LENGTH <= len(plaintext) <= MAX_KEY_LENGTH:
        raise InvalidInput(f"an API key must be {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters long")
    if plaintext != plaintext.strip() or not plaintext.isprintable():
        raise InvalidInput("an API key must not start or end with whitespace or hold control characters")
    return plaintext


def check_role(role: KeyRole | str) -> KeyRole:
    try:
        return KeyRole(role)
    except ValueError:
        raise InvalidInput(
            f"invalid key role {role!r}: one of {', '.join(r.value for r in KeyRole)}"
        ) from None


def _key_info(row: ApiKey, project: str) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        project=project,
        project_id=row.project_id,
        role=KeyRole(row.role),
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _select_keys() -> Select[ApiKey, str]:
    return fresh(select(ApiKey, Project.name).join(Project, ApiKey.project_id == Project.id))


class KeyRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, project: str, role: KeyRole | str, name: str = "") -> tuple[str, KeyInfo]:
        """A new random key; the plaintext is returned once and never stored."""
        plaintext = generate_key()
        return plaintext, self._insert(project, plaintext, role, name)

    def ensure_key(self, project: str, plaintext: str, role: KeyRole | str, name: str = "") -> KeyInfo:
        """Register a key chosen by the operator (the bootstrap key), idempotently.

        A key revoked since stays revoked: the returned info says so. The same secret
        registered for another project or role is a Conflict.
        """
        check_plaintext(plaintext)
        wanted = check_role(role)
        existing = self._by_hash(hash_key(plaintext))
        if existing is None:
            return self._insert(project, plaintext, wanted, name)
        if existing.project != project or existing.role is not wanted:
            raise Conflict(
                f"this key is already registered for project {existing.project!r} with role "
                f"{existing.role.value!r}, not {project!r} with {wanted.value!r}"
            )
        return existing

    def verify(self, plaintext: str) -> KeyInfo | None:
        """The active key matching the plaintext, or None (unknown, malformed or revoked)."""
        if not isinstance(plaintext, str) or not plaintext or len(plaintext) > MAX_KEY_LENGTH:
            return None
        digest = hash_key(plaintext)
        info = self._by_hash(digest)
        if info is None or info.revoked_at is not None:
            return None
        return info

    def get(self, key_id: int) -> KeyInfo | None:
        found = self._session.execute(_select_keys().where(ApiKey.id == key_id)).one_or_none()
        return None if found is None else _key_info(*found)

    def revoke(self, key: int | str, *, project: str | None = None) -> bool:
        """Revoke by id (int) or display prefix (str); False when no key matches.

        Revoking a revoked key is a success, so the call can be retried. A prefix that
        matches several active keys is a Conflict: revoke those by id.
        """
        stmt = _select_keys().where(ApiKey.id == key if isinstance(key, int) else ApiKey.prefix == key)
        if project is not None:
            stmt = stmt.where(Project.name == project)
        rows = [row for row, _ in self._session.execute(stmt.with_for_update(of=ApiKey))]
        if not rows:
            return False
        active = [r for r in rows if r.revoked_at is None]
        if len(active) > 1:
            ids = ", ".join(str(r.id) for r in active)
            raise Conflict(f"prefix {key!r} matches {len(active)} active keys (ids {ids}); revoke by id")
        for row in active:
            row.revoked_at = utcnow()
        self._session.flush()
        return True

    def touch(self, key_id: int, *, min_interval: timedelta = timedelta(seconds=60)) -> None:
        """Record use; skipped while the last record is younger than `min_interval`."""
        now = utcnow()
        self._session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - min_interval))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )

    def list(self, project: str | None = None, *, include_revoked: bool = True) -> builtins.list[KeyInfo]:
        stmt = _select_keys().order_by(Project.name, ApiKey.created_at, ApiKey.id)
        if project is not None:
            stmt = stmt.where(Project.name == project)
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        return [_key_info(row, name) for row, name in self._session.execute(stmt)]

    def _by_hash(self, digest: str) -> KeyInfo | None:
        found = self._session.execute(_select_keys().where(ApiKey.key_hash == digest)).one_or_none()
        if found is None:
            return None
        row, project = found
        # The index lookup already matched; the constant-time comparison keeps the final
        # decision free of timing differences whatever the database does.
        if not hmac.compare_digest(row.key_hash, digest):
            return None
        return _key_info(row, project)

    def _insert(self, project: str, plaintext: str, role: KeyRole | str, name: str) -> KeyInfo:
        wanted = check_role(role)
        label = check_text(name, "key name", KEY_NAME_MAX_LENGTH) or ""
        owner = project_row(self._session, project, create=True)
        assert owner is not None
        digest = hash_key(plaintext)
        self._session.execute(
            insert(self._session, ApiKey)
            .values(
                project_id=owner.id,
                name=label,
                role=wanted.value,
                prefix=display_prefix(plaintext),
                key_hash=digest,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["key_hash"])
        )
        info = self._by_hash(digest)
        assert info is not None
        if info.project != project or info.role is not wanted:
            # A concurrent writer registered the same secret differently.
            raise Conflict(f"this key is already registered for project {info.project!r}")
        return info


ACTIVE_KEY = select(ApiKey.id).where(
    ApiKey.id == bindparam("id"), ApiKey.key_hash == bindparam("digest"), ApiKey.revoked_at.is_(None)
)
"""The check a remembered key passes on every request: its row is there, the same key, unrevoked."""


class KeyCache:
    """Who a key is, remembered per process; whether it is still active, asked every time.

    The first lookup of a key loads its KeyInfo (a join and an ORM load); later lookups
    only run ACTIVE_KEY, one primary-key query, a fraction of the cost. A key revoked by
    this process or by any other on the same database is refused from the next request
    on. Only keys that verified are remembered, at most `max_entries` of them.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._known: dict[str, KeyInfo] = {}
        self._lock = threading.Lock()

    def known(self, plaintext: str) -> KeyInfo | None:
        """Who a key seen before is, without asking the database: still to be confirmed active."""
        if not isinstance(plaintext, str) or not plaintext or len(plaintext) > MAX_KEY_LENGTH:
            return None
        return self._get(hash_key(plaintext))

    def confirm(self, plaintext: str, info: KeyInfo, active: Callable[[int, str], bool]) -> bool:
        """Whether a known key is still active; a revoked one is forgotten."""
        return self._confirm(hash_key(plaintext), info, active)

    def verify(
        self,
        plaintext: str,
        lookup: Callable[[str], KeyInfo | None],
        active: Callable[[int, str], bool],
    ) -> KeyInfo | None:
        """`lookup` is the full check (KeyRepository.verify), `active` runs ACTIVE_KEY."""
        if not isinstance(plaintext, str) or not plaintext or len(plaintext) > MAX_KEY_LENGTH:
            return None
        digest = hash_key(plaintext)
        known = self._get(digest)
        if known is not None:
            return known if self._confirm(digest, known, active) else None
        info = lookup(plaintext)
        if info is not None:
            with self._lock:
                if len(self._known) >= self.max_entries:
                    self._known.clear()
                self._known[digest] = info
        return info

    def _get(self, digest: str) -> KeyInfo | None:
        with self._lock:
            return self._known.get(digest)

    def _confirm(self, digest: str, info: KeyInfo, active: Callable[[int, str], bool]) -> bool:
        if active(info.id, digest):
            return True
        with self._lock:
            self._known.pop(digest, None)
        return False
