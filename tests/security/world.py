"""Two tenants on one API, each with one of everything a route can name, and the route table.

The security tests probe every operation of the OpenAPI schema. They need, per project, a
model with data and results, a channel, a rule, alerts, outbox items, a policy, a proposed
trigger and keys of each role, so that each path parameter names something real. Requests
are written once as templates (`{model}`, `{channel}`, ...) and filled in with one
tenant's values, or with values that exist nowhere, which is how a test compares "another
project's object" with "no object at all".
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from driftline.detectors.base import MetricRow
from driftline.detectors.runner import RunResult
from driftline.ingest.state import AppState
from driftline.storage.meta.models import KeyRole
from tests.alerts.conftest import DAY, T0, coverage_row, drift_row, perf_row, throughput_row
from tests.conftest import Api
from tests.support.models import FRAUD, fraud_records

WEBHOOK_SECRET = "whsec-tenant-signing-0123456789"
GHOST_ID = 987_654
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
# the few writes an ingest key may do; every other write takes an admin key
INGEST_WRITES = {
    ("POST", "/v1/predictions"),
    ("POST", "/v1/labels"),
    ("POST", "/v1/feedback"),
    ("PUT", "/v1/models/{model}/versions/{version}/reference"),
}
# reads that take an admin key: the keys of the project
ADMIN_READS = {("GET", "/v1/keys")}


@dataclass
class Tenant:
    """One project's names and ids: what the route templates are filled with."""

    project: str
    model: str
    request_id: str
    channel: str
    rule_name: str
    keys: dict[str, str] = field(default_factory=dict)  # role -> plaintext
    key_ids: dict[str, int] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)  # channel, rule, alert, item, policy, trigger

    def values(self) -> dict[str, str]:
        """Placeholder -> value; `*_ref` placeholders name a row by id."""
        return {
            "model": self.model,
            "version": "v1",
            "request_id": self.request_id,
            "channel": self.channel,
            "channel_ref": str(self.ids["channel"]),
            "policy": self.model,
            "policy_ref": str(self.ids["policy"]),
            "rule_id": str(self.ids["rule"]),
            "alert_id": str(self.ids["alert"]),
            "item_id": str(self.ids["item"]),
            "trigger_id": str(self.ids["trigger"]),
            "key_id": str(self.key_ids["read"]),
        }


def ghost_values() -> dict[str, str]:
    """Values that name nothing in any project (same shapes as a tenant's)."""
    return {
        "model": "nomodel",
        "version": "v1",
        "request_id": "no-such-request",
        "channel": "no-channel",
        "channel_ref": str(GHOST_ID),
        "policy": "nomodel",
        "policy_ref": str(GHOST_ID),
        "rule_id": str(GHOST_ID),
        "alert_id": str(GHOST_ID),
        "item_id": str(GHOST_ID),
        "trigger_id": str(GHOST_ID),
        "key_id": str(GHOST_ID),
    }


# -- requests as templates -----------------------------------------------------------------

# path parameter -> the placeholders it is probed with (a name, and an id where the route takes both)
PATH_PARAMS: dict[str, tuple[str, ...]] = {
    "model": ("model",),
    "version": ("version",),
    "request_id": ("request_id",),
    "channel": ("channel", "channel_ref"),
    "policy": ("policy", "policy_ref"),
    "rule_id": ("rule_id",),
    "alert_id": ("alert_id",),
    "item_id": ("item_id",),
    "trigger_id": ("trigger_id",),
    "key_id": ("key_id",),
}
# query parameters that name a project's object, and required ones with a fixed value
QUERY_OBJECTS = {"model": "{model}"}
QUERY_REQUIRED = {"feature": "amount"}
# optional query parameters set to keep probes short (a channel test would wait for delivery)
QUERY_FIXED = {"wait": "0", "timeout": "10"}


def _records(prefix: str, n: int = 3) -> list[dict[str, Any]]:
    return fraud_records(n, seed=7, prefix=prefix, start=T0 + 7200)


def _body_templates() -> dict[tuple[str, str], Any]:
    """A valid body per operation that takes one (placeholders are filled in per request)."""
    predictions = _records("probe-")
    reference = _records("probe-ref-")
    for r in reference:
        r.pop("version")
        r["label"] = 1
    return {
        ("POST", "/v1/models"): {**copy.deepcopy(FRAUD), "name": "{model}"},
        ("POST", "/v1/models/{model}/versions"): {"version": "v7", "role": "shadow"},
        ("PATCH", "/v1/models/{model}"): {"description": "probe"},
        ("PATCH", "/v1/models/{model}/versions/{version}"): {"data_version": "probe"},
        ("PUT", "/v1/models/{model}/versions/{version}/reference"): {"records": reference},
        ("POST", "/v1/predictions"): {"model": "{model}", "records": predictions},
        ("POST", "/v1/labels"): {"model": "{model}", "records": [{"request_id": "probe-0", "label": 1}]},
        ("POST", "/v1/feedback"): {
            "model": "{model}",
            "records": [{"request_id": "probe-0", "outcome": "confirmed", "reviewer": "probe"}],
        },
        ("POST", "/v1/keys"): {"role": "read", "name": "probe"},
        ("PUT", "/v1/models/{model}/monitors"): {"window": "1d"},
        ("POST", "/v1/models/{model}/detect"): {"start": T0, "end": T0 + DAY, "window": "1d"},
        ("POST", "/v1/channels"): {
            "name": "{channel}",
            "type": "webhook",
            "url": "http://127.0.0.1:9/probe-hook",
            "secret": WEBHOOK_SECRET,
        },
        ("PATCH", "/v1/channels/{channel}"): {"description": "probe"},
        ("POST", "/v1/rules"): {
            "name": "probe {model}",
            "selector": {"model": "{model}", "detector": "feature_drift", "metric": "psi"},
            "condition": {"op": ">", "threshold": 0.5},
        },
        ("PATCH", "/v1/rules/{rule_id}"): {"description": "probe"},
        ("POST", "/v1/retraining-policies"): {
            "model": "{model}",
            "webhook_url": "http://127.0.0.1:9/probe-pipeline",
            "webhook_secret": WEBHOOK_SECRET,
        },
        ("PATCH", "/v1/retraining-policies/{policy}"): {"require_approval": True},
        ("POST", "/v1/triggers/{trigger_id}/approve"): {"note": "probe"},
        ("POST", "/v1/triggers/{trigger_id}/reject"): {"note": "probe"},
    }


BODIES = _body_templates()


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the OpenAPI template, e.g. /v1/models/{model}
    path_params: tuple[str, ...]
    query: tuple[tuple[str, bool], ...]  # (name, required)
    has_body: bool
    body_required: bool

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path


def operations(schema: dict[str, Any]) -> list[Operation]:
    """Every operation of the OpenAPI schema, in a stable order."""
    out = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            body = op.get("requestBody")
            out.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    path_params=tuple(p["name"] for p in params if p["in"] == "path"),
                    query=tuple((p["name"], bool(p.get("required"))) for p in params if p["in"] == "query"),
                    has_body=body is not None,
                    body_required=bool(body and body.get("required")),
                )
            )
    return sorted(out, key=lambda o: (o.path, o.method))


@dataclass(frozen=True)
class Probe:
    """One concrete request of an operation, as a template; `refs` says which placeholders it names."""

    op: Operation
    path: str
    params: dict[str, str]
    body: Any
    refs: tuple[str, ...]

    def fill(self, values: dict[str, str]) -> tuple[str, dict[str, str], bytes | None]:
        def sub(text: str) -> str:
            return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)

        body = None if self.body is None else sub(json.dumps(self.body)).encode()
        return sub(self.path), {k: sub(v) for k, v in self.params.items()}, body


class MissingCase(AssertionError):
    """An operation the route table cannot fill in: a new route needs a line here."""


def probes(op: Operation, *, with_optional_objects: bool = True) -> list[Probe]:
    """The requests that exercise an operation: one per way its path names an object, and one per
    optional query parameter that names one."""
    unknown = [p for p in op.path_params if p not in PATH_PARAMS]
    if unknown:
        raise MissingCase(f"{op.method} {op.path}: no value for path parameter(s) {unknown} in PATH_PARAMS")
    required = [q for q, req in op.query if req and q not in QUERY_REQUIRED and q not in QUERY_OBJECTS]
    if required:
        raise MissingCase(f"{op.method} {op.path}: no value for required query parameter(s) {required}")
    if op.body_required and op.key not in BODIES:
        raise MissingCase(f"{op.method} {op.path}: takes a body; add a valid one to BODIES")
    body = BODIES.get(op.key)
    base_params = {q: QUERY_REQUIRED.get(q, QUERY_OBJECTS.get(q, "")) for q, req in op.query if req}
    base_params.update({q: QUERY_FIXED[q] for q, _ in op.query if q in QUERY_FIXED})
    body_refs = tuple(sorted(set(re.findall(r"\{(\w+)\}", json.dumps(body))))) if body is not None else ()
    # one probe per alternative placeholder of each path parameter (name, id)
    variants: list[tuple[str, tuple[str, ...]]] = [(op.path, ())]
    for name in op.path_params:
        choices = PATH_PARAMS[name]
        variants = [
            (p.replace("{" + name + "}", "{" + choice + "}"), (*refs, choice))
            for p, refs in variants
            for choice in choices
        ]
    out = [Probe(op, p, dict(base_params), body, tuple(sorted({*refs, *body_refs}))) for p, refs in variants]
    if with_optional_objects:
        for q, req in op.query:
            if not req and q in QUERY_OBJECTS:
                path, refs = variants[0]
                out.append(
                    Probe(
                        op, path, {**base_params, q: QUERY_OBJECTS[q]}, body, tuple(sorted({*refs, "model"}))
                    )
                )
    return out


def send(api: Api, key: str | None, probe: Probe, values: dict[str, str]) -> httpx.Response:
    path, params, body = probe.fill(values)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    headers["Authorization"] = f"Bearer {key}" if key else ""
    response: httpx.Response = api.request(
        probe.op.method, path, params=params, content=body, headers=headers
    )
    return response


# -- building a tenant ----------------------------------------------------------------------


def state_of(api: Api) -> AppState:
    state: AppState = api.app.state.driftline  # type: ignore[attr-defined]
    return state


def ok(response: httpx.Response, *codes: int) -> Any:
    assert response.status_code in (codes or (200, 201, 202, 204)), (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:500]}"
    )
    return response.json() if response.content else None


def day_rows(day: int, *, drift: bool, accuracy: float) -> list[MetricRow]:
    return [
        drift_row(day, drift),
        drift_row(day, drift, feature="age"),
        perf_row(day, accuracy),
        coverage_row(day, 300, 1000),
        throughput_row(day, 1000),
    ]


def feed(state: AppState, project: str, model: str, rows: list[MetricRow], day: int) -> None:
    """Write one day's results and evaluate rules and policies as a detector run would."""
    state.runner.metrics.write(project, model, rows)
    start = T0 + day * DAY
    result = RunResult(
        start=start,
        end=start + DAY,
        step=DAY,
        windows=1,
        versions=["v1"],
        buckets_summarised=0,
        rows_written=len(rows),
    )
    state.alerts.after_run(project, model, result)


def build_tenant(api: Api, project: str, letter: str, *, hook_port: int) -> Tenant:
    """A project with one of everything, reached through its own admin key."""
    state = state_of(api)
    tenant = Tenant(
        project=project,
        model=f"{letter}model",
        request_id=f"{letter}-req-0",
        channel=f"{letter}-alerts",
        rule_name=f"{letter} rule",
    )
    with state.meta.repos() as repos:
        for role in KeyRole:
            plaintext, info = repos.keys.create(project, role, f"{project}-{role.value}")
            tenant.keys[role.value] = plaintext
            tenant.key_ids[role.value] = info.id
    admin = {"Authorization": f"Bearer {tenant.keys['admin']}"}

    def call(method: str, path: str, body: Any = None, **params: Any) -> Any:
        content = None if body is None else orjson.dumps(body)
        return ok(
            api.request(
                method,
                path,
                content=content,
                params=params,
                headers={**admin, "Content-Type": "application/json"},
            )
        )

    schema = copy.deepcopy(FRAUD)
    schema["name"] = tenant.model
    schema["features"][0]["important"] = True
    call("POST", "/v1/models", schema)
    call("POST", f"/v1/models/{tenant.model}/versions", {"version": "v1", "role": "champion"})
    call("PUT", f"/v1/models/{tenant.model}/monitors", {"window": "1d"})
    reference = fraud_records(400, seed=3, prefix=f"{letter}-ref-")
    for i, r in enumerate(reference):
        r.pop("version")
        r["label"] = int(i % 3 == 0)
    call("PUT", f"/v1/models/{tenant.model}/versions/v1/reference", {"records": reference})
    for day in range(2):
        prefix = f"{letter}-req-" if day == 0 else f"{letter}-d1-"
        records = fraud_records(300, seed=day, prefix=prefix, start=T0 + day * DAY + 3600)
        call("POST", "/v1/predictions", {"model": tenant.model, "records": records})
        labels = [{"request_id": r["request_id"], "label": int(r["score"] > 0.5)} for r in records[::2]]
        call("POST", "/v1/labels", {"model": tenant.model, "records": labels})
    call("POST", "/v1/flush", timeout=30)
    call("POST", f"/v1/models/{tenant.model}/detect", {"start": T0, "end": T0 + 2 * DAY, "window": "1d"})

    channel = call(
        "POST",
        "/v1/channels",
        {
            "name": tenant.channel,
            "type": "webhook",
            "url": f"http://127.0.0.1:{hook_port}/{letter}-hook-token",
            "secret": WEBHOOK_SECRET,
        },
    )
    tenant.ids["channel"] = channel["id"]
    rule = call(
        "POST",
        "/v1/rules",
        {
            "name": tenant.rule_name,
            "selector": {"model": tenant.model, "detector": "feature_drift", "metric": "psi"},
            "condition": {"op": ">", "threshold": 0.25},
        },
    )
    tenant.ids["rule"] = rule["id"]
    policy = call(
        "POST",
        "/v1/retraining-policies",
        {
            "model": tenant.model,
            "drift": {"windows": 3},
            "performance": {"windows": 1},
            "gates": {"min_samples": 1000, "min_label_coverage": 0.2, "cooldown": "7d"},
            "webhook_url": f"http://127.0.0.1:{hook_port}/{letter}-pipeline-token",
            "webhook_secret": WEBHOOK_SECRET,
        },
    )
    tenant.ids["policy"] = policy["id"]
    for day in range(6):
        feed(
            state,
            project,
            tenant.model,
            day_rows(day, drift=day >= 1, accuracy=0.7 if day >= 3 else 0.92),
            day,
        )
    alerts = call("GET", "/v1/alerts", state="firing")
    assert alerts, "the fed results raise no alert"
    tenant.ids["alert"] = alerts[0]["id"]
    triggers = call("GET", "/v1/triggers", state="proposed")
    assert triggers, "the fed results propose no trigger"
    tenant.ids["trigger"] = triggers[0]["id"]
    items = call("GET", "/v1/outbox")
    assert items, "the alerts wrote no notification"
    tenant.ids["item"] = items[0]["id"]
    return tenant


def wait_until(check: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
