"""API keys at rest and at the door, on both stacks.

At rest: no plaintext key in any column of any table of the metadata database, nor in any
file under the data dir; what is stored is the SHA-256 digest. At the door: a request's key
is found by its digest alone (an operator who swaps a row's digest swaps the key that
works), and the final decision is a constant-time comparison of digests, never of
plaintexts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from driftline.config import Settings
from driftline.ingest.app import create_app
from driftline.storage.meta import keys as keys_module
from tests.conftest import ADMIN_KEY, Api
from tests.security.world import ok, state_of


def digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def cli_key(settings: Settings, home: Path, project: str, role: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env.update({"DRIFTLINE_HOME": str(home), "DRIFTLINE_DATABASE_URL": settings.resolved_database_url})
    done = subprocess.run(
        [sys.executable, "-m", "driftline", "keys", "create", "--project", project, "--role", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def every_value(api: Api) -> list[tuple[str, str, Any]]:
    """(table, column, value) of every cell of every table of the metadata database."""
    engine = state_of(api).meta.engine
    out: list[tuple[str, str, Any]] = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            result = conn.execute(text(f'SELECT * FROM "{table}"'))
            columns = list(result.keys())
            for row in result:
                out.extend((table, c, v) for c, v in zip(columns, row, strict=True))
    return out


def test_no_plaintext_key_at_rest(settings: Settings, tmp_path: Path) -> None:
    with Api(create_app(settings)) as api:
        made = [
            ok(api.post("/v1/keys", json={"role": r, "name": f"n-{r}"}), 201)
            for r in ("ingest", "read", "admin")
        ]
        plaintexts = [ADMIN_KEY, *(m["key"] for m in made)]
        plaintexts.append(cli_key(settings, tmp_path / "cli", "other", "read"))
        for k in plaintexts[1:]:
            assert api.get("/v1/overview", headers=_bearer(k)).status_code in (200, 403)
        ok(api.delete(f"/v1/keys/{made[0]['id']}"), 204)
        # some traffic, so that spool and events exist too
        assert api.get("/v1/models", headers=_bearer(plaintexts[-1])).status_code == 200

        cells = every_value(api)
        assert len(cells) > 50
        for table, column, value in cells:
            shown = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            for k in plaintexts:
                assert k not in shown, f"a plaintext key in {table}.{column}"
        stored = {v for t, c, v in cells if t == "api_keys" and c == "key_hash"}
        assert {digest(k) for k in plaintexts} <= stored
        assert len(stored) == len(plaintexts)

    # and no file under the data dir (spool, SQLite database and journal, secrets) holds one
    roots = [settings.home]
    if settings.resolved_database_url.startswith("sqlite:///"):
        roots.append(Path(settings.resolved_database_url.removeprefix("sqlite:///")).parent)
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for k in plaintexts:
            assert k.encode() not in data, f"a plaintext key in {path}"


def test_a_key_is_found_by_its_digest_and_compared_in_constant_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what keys.py calls, looked up per call
    with Api(create_app(settings)) as api:
        made = ok(api.post("/v1/keys", json={"role": "read", "name": "swapped"}), 201)
        plaintext = made["key"]
        compared.clear()
        assert api.get("/v1/models", headers=_bearer(plaintext)).status_code == 200
        assert (digest(plaintext), digest(plaintext)) in compared
        assert all(plaintext not in (a, b) for a, b in compared)

        # near misses are unknown keys
        for wrong in (plaintext[:-1], plaintext + "x", plaintext.upper(), plaintext[::-1]):
            assert api.get("/v1/models", headers=_bearer(wrong)).status_code == 401

        # the row's digest is the whole truth: give it another key's digest, and that key works
        other = keys_module.generate_key()
        with state_of(api).meta.engine.begin() as conn:
            conn.execute(
                text("UPDATE api_keys SET key_hash = :h WHERE id = :id"),
                {"h": digest(other), "id": made["id"]},
            )
        assert api.get("/v1/models", headers=_bearer(plaintext)).status_code == 401
        assert api.get("/v1/models", headers=_bearer(other)).status_code == 200
        assert api.post("/v1/keys", json={"role": "read"}, headers=_bearer(other)).status_code == 403
