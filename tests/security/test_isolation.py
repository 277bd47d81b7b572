"""Per-project isolation on every operation of the OpenAPI schema, on both stacks.

A key of project A, whatever its role, asks every route about project B's objects (by name
and by id) and about objects that exist nowhere: the answers must be the same status and
the same body (up to the name asked for), so A learns nothing, and B's data must be
exactly as before. Every answer A gets to a request that names nothing must be free of B.
Operations are read from the schema, so a route added later is probed too (or the test
says which parameter or body it lacks).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
import orjson

from tests.alerts.conftest import DAY, T0
from tests.security.conftest import World
from tests.security.world import (
    PUBLIC,
    Probe,
    Tenant,
    ghost_values,
    ok,
    operations,
    probes,
    send,
)
from tests.support.models import FRAUD, fraud_records

ROLES = ("ingest", "read", "admin")
# created last: once A has a model or channel of B's name, later probes would find A's own
CREATES_LAST = (("POST", "/v1/models"), ("POST", "/v1/channels"))


def markers(t: Tenant) -> list[str]:
    """Strings that only the tenant's own data holds."""
    from driftline.storage.meta.keys import display_prefix

    return [
        t.project,
        t.model,
        t.request_id.rsplit("-", 1)[0] + "-",
        t.channel,
        t.rule_name,
        f"{t.project}-admin",
        f"{t.model[0]}-hook-token",
        f"{t.model[0]}-pipeline-token",
        *(display_prefix(k) for k in t.keys.values()),
    ]


def normalise(response: httpx.Response, probe: Probe, values: dict[str, str]) -> Any:
    """The body with every value the request named replaced by its placeholder."""
    text = response.text
    for ref in sorted(probe.refs, key=lambda r: -len(values.get(r, ""))):
        value = values.get(ref)
        if not value or value == "v1":
            continue
        if value.isdigit():
            text = re.sub(rf"(?<![\w.]){value}(?![\w.])", f"<{ref}>", text)
        else:
            text = text.replace(value, f"<{ref}>")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def shape(body: Any) -> Any:
    """What a success answer reveals beyond its values: its structure."""
    if isinstance(body, dict):
        return {k: shape(v) for k, v in sorted(body.items()) if k not in ("id", "created_at", "updated_at")}
    if isinstance(body, list):
        return [shape(v) for v in body[:1]] + (["..."] if len(body) > 1 else [])
    return type(body).__name__


def snapshot(api: httpx.Client, t: Tenant) -> dict[str, Any]:
    """Everything of a project its own admin key can read, less what time alone changes."""
    h = {"Authorization": f"Bearer {t.keys['admin']}"}
    paths = [
        "/v1/models",
        f"/v1/models/{t.model}",
        f"/v1/models/{t.model}/monitors",
        f"/v1/models/{t.model}/metrics",
        f"/v1/models/{t.model}/predictions/{t.request_id}",
        f"/v1/models/{t.model}/distributions?feature=amount&start={T0}&end={T0 + 2 * DAY}",
        f"/v1/models/{t.model}/distributions?feature=email&start={T0}&end={T0 + 2 * DAY}",
        "/v1/channels",
        "/v1/rules",
        "/v1/alerts?state=all",
        "/v1/outbox",
        "/v1/retraining-policies",
        "/v1/triggers",
        "/v1/keys",
    ]
    out = {}
    for p in paths:
        r = api.get(p, headers=h)
        assert r.status_code == 200, (p, r.text)
        out[p] = r.json()
    return out


def test_no_route_reaches_another_project(world: World) -> None:
    api, a, b = world.api, world.a, world.b
    before = snapshot(api, b)
    b_values, ghost, a_values = b.values(), ghost_values(), a.values()
    foreign = markers(b)
    ops = operations(api.app.openapi())  # type: ignore[attr-defined]
    assert len(ops) >= 38

    checked: set[tuple[str, str]] = set()
    problems: list[str] = []

    def leaks(r: httpx.Response) -> list[str]:
        return [m for m in foreign if m in r.text]

    def compare(probe: Probe, role: str) -> None:
        key = a.keys[role]
        rb = send(api, key, probe, b_values)
        rg = send(api, key, probe, ghost)
        where = f"{probe.op.method} {probe.fill(b_values)[0]} {probe.params} as {role}"
        if rb.status_code != rg.status_code:
            problems.append(f"{where}: {rb.status_code} for B's object, {rg.status_code} for none")
            return
        if rb.status_code >= 500:
            problems.append(f"{where}: {rb.status_code} {rb.text[:200]}")
        if probe.op.path_params and role == "admin" and rb.status_code != 404:
            problems.append(f"{where}: {rb.status_code} for B's object, not 404: {rb.text[:200]}")
        nb, ng = normalise(rb, probe, b_values), normalise(rg, probe, ghost)
        if rb.status_code >= 400 and nb != ng:
            problems.append(f"{where}: bodies differ: {nb!r} / {ng!r}")
        if rb.status_code < 400 and shape(nb) != shape(ng):
            problems.append(f"{where}: shapes differ: {shape(nb)!r} / {shape(ng)!r}")
        checked.add(probe.op.key)

    creates: list[Probe] = []
    for op in ops:
        for probe in probes(op):
            if not probe.refs:
                # names nothing: whatever A's keys get back holds nothing of B
                keys = [None] if op.key in PUBLIC else [a.keys[r] for r in ROLES]
                for key in keys:
                    r = send(api, key, probe, a_values)
                    if leaks(r):
                        problems.append(f"{op.method} {op.path}: answers A with B's {leaks(r)}")
                    if r.status_code >= 500:
                        problems.append(f"{op.method} {op.path}: {r.status_code} {r.text[:200]}")
                checked.add(op.key)
            elif not op.path_params and op.method != "GET":
                creates.append(probe)
            else:
                for role in ROLES:
                    compare(probe, role)
    creates.sort(key=lambda p: p.op.key in CREATES_LAST)
    for probe in creates:
        for role in ROLES:
            compare(probe, role)

    assert not problems, "\n".join(problems)
    assert checked == {op.key for op in ops}
    # B's own view of its data did not move
    assert snapshot(api, b) == before
    # and A never read B through a list, even with B's name in the query
    for path in ("/v1/models", "/v1/rules", "/v1/alerts?state=all", "/v1/triggers", "/v1/outbox", "/v1/keys"):
        r = api.get(path, headers={"Authorization": f"Bearer {a.keys['admin']}"})
        assert r.status_code == 200 and b.project not in r.text and "b-req-" not in r.text, (path, r.text)


def test_one_model_name_in_two_projects_never_mixes(world: World) -> None:
    """Both projects register `shared`: each key sees its own rows, results and distributions only."""
    api, a, b = world.api, world.a, world.b
    schema = copy.deepcopy(FRAUD)
    schema["name"] = "shared"
    by: dict[str, dict[str, str]] = {
        t.project: {"Authorization": f"Bearer {t.keys['admin']}"} for t in (a, b)
    }
    sizes = {a.project: 120, b.project: 70}
    for t in (a, b):
        h = by[t.project]
        ok(api.post("/v1/models", json=schema, headers=h), 201)
        ok(api.post("/v1/models/shared/versions", json={"version": "v1"}, headers=h), 201)
        records = fraud_records(sizes[t.project], seed=5, prefix=f"{t.project}-", start=T0 + 3600)
        for r in records:
            r["features"]["country"] = "FR" if t is a else "DE"
        ok(api.post("/v1/predictions", json={"model": "shared", "records": records}, headers=h), 202)
        reference = copy.deepcopy(records)
        for r in reference:
            r.pop("version")
        ok(api.put("/v1/models/shared/versions/v1/reference", json={"records": reference}, headers=h))
    ok(api.post("/v1/flush", params={"timeout": 30}))
    for t in (a, b):
        h = by[t.project]
        other = b if t is a else a
        ok(
            api.post(
                "/v1/models/shared/detect", json={"start": T0, "end": T0 + DAY, "window": "1d"}, headers=h
            )
        )
        got = ok(api.get("/v1/models/shared", headers=h))
        assert got["counts"]["predictions"] == sizes[t.project]
        assert api.get(f"/v1/models/shared/predictions/{t.project}-3", headers=h).status_code == 200
        assert api.get(f"/v1/models/shared/predictions/{other.project}-3", headers=h).status_code == 404
        dist = ok(
            api.get(
                "/v1/models/shared/distributions",
                params={"feature": "country", "start": T0, "end": T0 + DAY},
                headers=h,
            )
        )
        text = orjson.dumps(dist).decode()
        assert ('"FR"' in text) is (t is a) and ('"DE"' in text) is (t is b), text[:500]
        metrics = ok(api.get("/v1/models/shared/metrics", params={"metric": "throughput"}, headers=h))[
            "items"
        ]
        rows = {m["sample_size"] for m in metrics if m["feature"] == "" and m["slice"] == ""}
        assert rows == {sizes[t.project]}, metrics[:3]
