"""Authentication and roles on every operation of the OpenAPI schema, and revocation, on both stacks.

Every operation but the probes needs a key; an ingest key may only write events and
reference data, a read key may only read (not the project's keys), an admin key may do
everything. A refused request changes nothing. A revoked key is refused on the very next
request, whether it was revoked through the API or with `driftline keys revoke` on the
same database.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from driftline.config import Settings
from driftline.ingest.app import create_app
from driftline.ingest.deps import authenticate
from driftline.ingest.routers import events
from tests.conftest import ADMIN_KEY, Api
from tests.security.conftest import World
from tests.security.test_isolation import snapshot
from tests.security.world import ADMIN_READS, INGEST_WRITES, PUBLIC, Operation, ok, operations, probes, send
from tests.support.models import FRAUD, fraud_records


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call is authenticate or _needs_key(d) for d in dependant.dependencies)


def _keyed(route: APIRoute) -> bool:
    """A key checked by a dependency, or by the ingest handler itself (probed below like every route)."""
    return _needs_key(route.dependant) or route.path in events.DIRECT_PATHS


def api_routes(routes: Sequence[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, including those of included routers (nested however FastAPI keeps them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def test_only_the_probes_answer_without_a_key(world: World) -> None:
    api = world.api
    app = api.app
    routes = {
        (method, re.sub(r":\w+}", "}", route.path)): _keyed(route)
        for route in api_routes(app.routes)  # type: ignore[attr-defined]
        for method in route.methods or ()
    }
    open_routes = {k for k, needs in routes.items() if not needs}
    assert open_routes == PUBLIC, open_routes
    values = world.a.values()
    ops = operations(app.openapi())  # type: ignore[attr-defined]
    assert {op.key for op in ops} == {k for k in routes if k[0] != "HEAD"}
    for op in ops:
        if op.key in PUBLIC:
            continue
        probe = probes(op, with_optional_objects=False)[0]
        for key in (None, "not-a-key", "dl_" + "x" * 43, world.a.keys["admin"] + "x"):
            r = send(api, key, probe, values)
            assert r.status_code == 401, (op.key, key, r.status_code, r.text)
            assert set(r.json()) == {"detail"}
        r = api.request(op.method, probe.fill(values)[0], headers={"Authorization": f"Basic {ADMIN_KEY}"})
        assert r.status_code == 401, (op.key, r.text)


def allowed(op: Operation, role: str) -> bool:
    if role == "admin":
        return True
    if op.method == "GET":
        return role == "read" and op.key not in ADMIN_READS
    return role == "ingest" and op.key in INGEST_WRITES


def order(op: Operation) -> tuple[int, bool, str]:
    """Reads first, deletes last, and the model's own deletion at the very end."""
    rank = {"GET": 0, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 2}[op.method]
    return rank, op.path == "/v1/models/{model}", op.path


def test_roles_on_every_route(world: World) -> None:
    api, a = world.api, world.a
    values = a.values()
    ops = sorted(
        (op for op in operations(api.app.openapi()) if op.key not in PUBLIC),  # type: ignore[attr-defined]
        key=order,
    )
    before = snapshot(api, a)
    problems: list[str] = []
    for role in ("ingest", "read"):
        for op in ops:
            for probe in probes(op):
                r = send(api, a.keys[role], probe, values)
                where = f"{op.method} {probe.fill(values)[0]} {probe.params} as {role}"
                if allowed(op, role):
                    if r.status_code in (401, 403) or r.status_code >= 500:
                        problems.append(f"{where}: {r.status_code} {r.text[:200]}")
                elif r.status_code != 403:
                    problems.append(f"{where}: {r.status_code}, not 403: {r.text[:200]}")

    # only what an ingest key may write moved: the model's counts and its reference distributions
    def stable(snap: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in snap.items() if k != f"/v1/models/{a.model}" and "distributions" not in k}

    assert stable(snapshot(api, a)) == stable(before)
    for op in ops:
        for probe in probes(op):
            r = send(api, a.keys["admin"], probe, values)
            if r.status_code in (401, 403) or r.status_code >= 500:
                problems.append(
                    f"{op.method} {probe.fill(values)[0]} as admin: {r.status_code} {r.text[:200]}"
                )
    assert not problems, "\n".join(problems)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_revoked_through_the_api_refused_at_once(settings: Settings) -> None:
    with Api(create_app(settings)) as api:
        made = ok(api.post("/v1/keys", json={"role": "admin", "name": "short-lived"}), 201)
        key = made["key"]
        assert ok(api.get("/v1/keys", headers=_auth(key)))
        # a revoked admin key cannot revoke, read or write anything, from the next request on
        assert api.delete(f"/v1/keys/{made['id']}").status_code == 204
        for method, path in (("GET", "/v1/keys"), ("GET", "/v1/models"), ("POST", "/v1/keys")):
            r = api.request(method, path, headers=_auth(key), json={"role": "admin"})
            assert r.status_code == 401, (method, path, r.text)
        listed = {k["id"]: k for k in ok(api.get("/v1/keys"))}
        assert listed[made["id"]]["revoked_at"] is not None
        assert api.delete(f"/v1/keys/{made['id']}").status_code == 204  # revoking again is harmless


def test_a_key_revoked_after_it_ingested_gets_401_on_the_ingest_routes(settings: Settings) -> None:
    """The ingest routes remember a key they saw; revoked, it is a 401 (whatever its role) and stores nothing."""
    with Api(create_app(settings)) as api:
        assert api.post("/v1/models", json=FRAUD).status_code == 201
        assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
        ingest = ok(api.post("/v1/keys", json={"role": "ingest"}), 201)
        read = ok(api.post("/v1/keys", json={"role": "read"}), 201)
        body = {"model": "fraud", "records": fraud_records(3, prefix="before")}
        assert api.post("/v1/predictions", json=body, headers=_auth(ingest["key"])).status_code == 202
        assert api.post("/v1/predictions", json=body, headers=_auth(read["key"])).status_code == 403
        for made in (ingest, read):
            assert api.delete(f"/v1/keys/{made['id']}").status_code == 204
        for made in (ingest, read):
            for path in ("/v1/predictions", "/v1/labels"):
                records = fraud_records(2, prefix=f"after-{made['id']}")
                r = api.post(path, json={"model": "fraud", "records": records}, headers=_auth(made["key"]))
                assert r.status_code == 401, (made["role"], path, r.text)
        api.flush()
        assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 3


def _cli(settings: Settings, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env.update({"DRIFTLINE_HOME": str(home), "DRIFTLINE_DATABASE_URL": settings.resolved_database_url})
    return subprocess.run(
        [sys.executable, "-m", "driftline", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_revoked_with_the_cli_refused_at_once(settings: Settings, tmp_path: Path) -> None:
    with Api(create_app(settings)) as api:
        by_id = ok(api.post("/v1/keys", json={"role": "ingest", "name": "cli-by-id"}), 201)
        by_prefix = ok(api.post("/v1/keys", json={"role": "read", "name": "cli-by-prefix"}), 201)
        body: dict[str, Any] = {"model": "nothing", "records": []}
        assert api.post("/v1/predictions", json=body, headers=_auth(by_id["key"])).status_code != 401
        assert api.get("/v1/models", headers=_auth(by_prefix["key"])).status_code == 200

        listed = _cli(settings, tmp_path, "list")
        assert listed.returncode == 0, listed.stderr
        assert by_id["prefix"] in listed.stdout and by_id["key"] not in listed.stdout
        assert by_prefix["key"] not in listed.stdout and ADMIN_KEY not in listed.stdout

        done = _cli(settings, tmp_path, "revoke", str(by_id["id"]))
        assert done.returncode == 0, done.stderr
        assert api.post("/v1/predictions", json=body, headers=_auth(by_id["key"])).status_code == 401
        done = _cli(settings, tmp_path, "revoke", by_prefix["prefix"])
        assert done.returncode == 0, done.stderr
        assert api.get("/v1/models", headers=_auth(by_prefix["key"])).status_code == 401
        assert _cli(settings, tmp_path, "revoke", "999999").returncode == 1
        assert api.get("/v1/models").status_code == 200  # the other keys are untouched
