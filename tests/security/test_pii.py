"""`pii: drop` and `pii: hash` all the way through, on both stacks.

A dropped feature (and a dropped metadata field) is in no table, no column name and no
answer; a hashed one is stored, summarised, detected on and shown only as the keyed hash
HMAC-SHA256(DRIFTLINE_SECRET_KEY, value)[:24]: the same value always gives the same hash
(so drift and unseen values still work), and without the secret a dictionary of candidate
values (hashed plainly) matches nothing. Checked in predictions, reference, summaries,
metric details, the metadata database, the spool and data dir, the prediction lookup, the
distributions endpoint and the Evidently report.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import orjson

from driftline.config import Settings
from driftline.ingest.app import create_app
from driftline.ingest.columns import PiiHasher
from driftline.storage.events import Kind
from tests.alerts.conftest import DAY, T0
from tests.conftest import Api
from tests.security.conftest import SECRET_KEY
from tests.security.test_keys import every_value
from tests.security.world import ok, state_of
from tests.support.models import FRAUD, fraud_records

RUN = secrets.token_hex(4)


def email(i: int) -> str:
    return f"person{i}.{RUN}@pii.example"


def ssn(i: int) -> str:
    return f"SSN{RUN}-{i:04d}"


def customer(i: int) -> str:
    return f"cust{RUN}-{i % 9}"


def ip(i: int) -> str:
    return f"10.{RUN[:2]}.{i % 250}.7"


def keyed(value: str) -> str:
    return hmac.new(SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:24]


def records(n: int, *, prefix: str, start: int, emails: range) -> list[dict[str, Any]]:
    out = fraud_records(n, seed=4, prefix=prefix, start=start)
    for i, r in enumerate(out):
        k = emails.start + i % len(emails)
        r["features"]["email"] = email(k)
        r["features"]["ssn"] = ssn(i)
        r["metadata"]["customer"] = customer(i)
        r["metadata"]["ip"] = ip(i)
    return out


def store_text(api: Api) -> dict[str, list[str]]:
    """Every string cell and column name of every table of the event store, per table."""
    engine = state_of(api).events.engine
    db = engine.database
    cols = engine.query_columns(
        "SELECT table, name, type FROM system.columns WHERE database = %(db)s", {"db": db}
    )
    out: dict[str, list[str]] = {}
    for table, name, kind in zip(cols["table"], cols["name"], cols["type"], strict=True):
        cells = out.setdefault(str(table), [])
        cells.append(str(name))
        if "String" in str(kind) and not str(kind).startswith("AggregateFunction"):
            got = engine.query_columns(f"SELECT `{name}` AS v FROM `{db}`.`{table}`")
            cells.extend(str(v) for v in got["v"])
    return out


def test_pii_drop_and_hash_hold_everywhere(settings: Settings) -> None:
    schema = copy.deepcopy(FRAUD)
    schema["metadata"] += [
        {"name": "customer", "kind": "categorical", "pii": "hash"},
        {"name": "ip", "kind": "categorical", "pii": "drop"},
    ]
    reference = records(600, prefix="ref-", start=T0 - DAY, emails=range(0, 40))
    for i, r in enumerate(reference):
        r.pop("version")
        r["label"] = i % 2
    live = records(900, prefix="live-", start=T0 + 3600, emails=range(20, 70))  # 30 emails never seen
    raw = (
        [email(i) for i in range(70)]
        + [ssn(i) for i in range(900)]
        + [customer(i) for i in range(9)]
        + [ip(i) for i in range(250)]
    )
    dropped_names = ("f_ssn", "m_ip")
    hashed = {keyed(email(i)) for i in range(70)} | {keyed(customer(i)) for i in range(9)}
    plain = [hashlib.sha256(v.encode()).hexdigest()[:24] for v in raw]  # a dictionary without the secret

    with Api(create_app(settings)) as api:
        ok(api.post("/v1/models", json=schema), 201)
        ok(api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}), 201)
        ok(api.put("/v1/models/fraud/versions/v1/reference", json={"records": reference}))
        for part in (live[:450], live[450:]):
            ok(api.post("/v1/predictions", content=orjson.dumps({"model": "fraud", "records": part})), 202)
        labels = [{"request_id": r["request_id"], "label": int(r["score"] > 0.5)} for r in live[::3]]
        ok(api.post("/v1/labels", json={"model": "fraud", "records": labels}), 202)
        api.flush()
        run = ok(api.post("/v1/models/fraud/detect", json={"start": T0, "end": T0 + DAY, "window": "1d"}))
        assert not run["errors"], run["errors"]

        answers: list[str] = []

        def get(path: str, **params: Any) -> Any:
            r = api.get(path, params=params)
            answers.append(r.text)
            return r

        stored = ok(get("/v1/models/fraud/predictions/live-5"))["record"]
        dist = ok(get("/v1/models/fraud/distributions", feature="email", start=T0, end=T0 + DAY, bins=200))
        gone = get("/v1/models/fraud/distributions", feature="ssn", start=T0, end=T0 + DAY)
        metrics = ok(get("/v1/models/fraud/metrics"))["items"]
        report = get("/v1/models/fraud/report", start=T0, end=T0 + DAY, rows=2000)
        assert report.status_code == 200, report.text[:300]
        for path in ("/v1/models/fraud", "/v1/models", "/v1/overview", "/v1/alerts?state=all", "/v1/outbox"):
            ok(get(path))
        tables = store_text(api)
        cells = every_value(api)
        names = state_of(api).events.names("default", "fraud")

    # stored hashed, with the deployment's key: the same value, the same hash, everywhere
    assert stored["features"]["email"] == keyed(email(25)) and "ssn" not in stored["features"]
    assert stored["metadata"]["customer"] == keyed(customer(5)) and "ip" not in stored["metadata"]
    assert PiiHasher(SECRET_KEY.encode()).one(email(25)) == keyed(email(25))
    assert PiiHasher(b"another deployment").one(email(25)) != keyed(email(25))
    by_table = {t: set(v) for t, v in tables.items()}
    predictions, reference_table = names.bare(Kind.PREDICTIONS), names.bare(Kind.REFERENCE)
    catsum = names.table("catsum").split(".")[1].strip("`")
    assert {keyed(email(i)) for i in range(20, 70)} <= by_table[predictions]
    assert {keyed(email(i)) for i in range(40)} <= by_table[reference_table]
    assert {keyed(email(i)) for i in range(70)} <= by_table[catsum]
    assert {keyed(customer(i)) for i in range(9)} <= by_table[predictions] & by_table[catsum]

    # the distributions endpoint and the metric details speak in hashes
    assert set(dist["values"]) - {"(other)"} <= hashed and len(dist["values"]) > 10
    assert gone.status_code in (404, 422)
    unseen = [
        m for m in metrics if m["feature"] == "email" and m["metric"] == "unseen_category_rate" and m["value"]
    ]
    assert unseen and unseen[0]["value"] > 0.3  # drift on hashes still works
    examples = orjson.dumps([m["details"] for m in metrics if m["feature"] == "email"]).decode()
    assert any(h in examples for h in hashed), "no hashed value in the email results' details"
    # Evidently's page holds the email column, hashed
    assert "email" in report.text and any(h in report.text for h in hashed)

    # nothing raw (nor a plain hash, nor a dropped column) anywhere
    everything = {
        **{f"event table {t}": "\n".join(v) for t, v in tables.items()},
        "metadata database": "\n".join(str(v) for _, _, v in cells),
        **{f"answer {i}": a for i, a in enumerate(answers)},
        "report": report.text,
    }
    for home_file in Path(settings.home).rglob("*"):
        if home_file.is_file():
            everything[str(home_file)] = home_file.read_bytes().decode("latin-1")
    for where, content in everything.items():
        for value in raw:
            assert value not in content, f"raw {value!r} in {where}"
        for value in plain:
            assert value not in content, f"an unkeyed hash in {where}"
        for name in dropped_names:
            assert name not in content, f"dropped column {name} in {where}"
