"""The ingest API end to end, on each event engine and each metadata database."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from driftline.config import Settings
from driftline.ingest.app import create_app
from tests.conftest import Api
from tests.support.models import FRAUD, HOUSES, IRIS, fraud_records


def register(api: Api, schema: dict[str, Any], versions: tuple[str, ...] = ("v1",)) -> None:
    r = api.post("/v1/models", json=schema)
    assert r.status_code == 201, r.text
    for v in versions:
        r = api.post(f"/v1/models/{schema['name']}/versions", json={"version": v, "role": "champion"})
        assert r.status_code == 201, r.text


def counts(api: Api, model: str) -> dict[str, Any]:
    r = api.get(f"/v1/models/{model}")
    assert r.status_code == 200, r.text
    return dict(r.json()["counts"])


def post_json(api: Api, path: str, body: Any) -> Any:
    return api.post(path, content=orjson.dumps(body), headers={"Content-Type": "application/json"})


def test_registry_round_trip(api: Api) -> None:
    r = api.post("/v1/models", json=FRAUD)
    assert r.status_code == 201
    body = r.json()
    assert body["schema"]["features"][0]["range"] == [0.0, 10000.0]
    assert api.post("/v1/models", json=FRAUD).status_code == 200  # same schema again: idempotent
    other = {**FRAUD, "features": FRAUD["features"][:2]}
    r = api.post("/v1/models", json=other)
    assert r.status_code == 409 and "feature 'country'" in r.json()["detail"]
    r = api.post(
        "/v1/models/fraud/versions",
        json={
            "version": "v1",
            "role": "champion",
            "approval": "approved",
            "data_version": "2026-10",
            "training_config_uri": "s3://cfg",
            "eval_report_uri": "s3://eval",
        },
    )
    assert r.status_code == 201
    assert (
        api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "champion"}).status_code == 200
    )
    assert api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "shadow"}).status_code == 409
    r = api.post(
        "/v1/models/fraud/versions",
        json={"version": "v2", "role": "challenger", "features": [{"name": "device", "kind": "categorical"}]},
    )
    assert r.status_code == 201
    got = api.get("/v1/models/fraud").json()
    assert got["owner"] == "risk-team"
    assert [v["version"] for v in got["versions"]] == ["v1", "v2"]
    assert got["versions"][0]["eval_report_uri"] == "s3://eval"
    assert "device" in [f["name"] for f in got["schema"]["features"]]
    assert got["counts"] == {"predictions": 0, "labels": 0, "feedback": 0, "reference": {}}
    assert [m["name"] for m in api.get("/v1/models").json()["items"]] == ["fraud"]
    # the added feature is a column: a v2 row carrying it is stored with it
    rec = fraud_records(1, version="v2")[0]
    rec["features"]["device"] = "ios"
    assert post_json(api, "/v1/predictions", {"model": "fraud", "records": [rec]}).status_code == 202
    api.flush()
    stored = api.get("/v1/models/fraud/predictions/r0").json()["record"]
    assert stored["features"]["device"] == "ios"


def test_json_predictions_stored_exactly(api: Api) -> None:
    register(api, FRAUD)
    records = fraud_records(3000, seed=1)
    r = post_json(api, "/v1/predictions", {"model": "fraud", "records": records})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 3000 and r.json()["duplicates"] == 0 and r.json()["violations"] == 0
    api.flush()
    assert counts(api, "fraud")["predictions"] == 3000
    got = api.get("/v1/models/fraud/predictions/r42").json()
    rec = got["record"]
    src = records[42]
    assert rec["features"]["amount"] == pytest.approx(src["features"]["amount"])
    assert rec["features"]["country"] == src["features"]["country"]
    assert rec["features"]["email"] != src["features"]["email"] and len(rec["features"]["email"]) == 24
    assert "ssn" not in rec["features"]  # pii: drop never reaches storage
    assert rec["metadata"] == src["metadata"]
    assert rec["timings"] == {"preprocess": 1.0, "inference": 3.5}
    assert rec["score"] == pytest.approx(src["score"])
    assert rec["prediction"] == ("1" if src["score"] >= 0.5 else "0")
    assert got["version"]["version"] == "v1" and got["schema"]["name"] == "fraud"
    assert rec["features"]["vip"] is (42 % 7 == 0)  # booleans read back as booleans
    odd = {**records[0], "request_id": "a/b c?d"}
    assert post_json(api, "/v1/predictions", {"model": "fraud", "records": [odd]}).status_code == 202
    api.flush()
    assert api.get("/v1/models/fraud/predictions/a%2Fb%20c%3Fd").json()["record"]["request_id"] == "a/b c?d"


def test_bulk_parquet_arrow_csv(api: Api) -> None:
    register(api, FRAUD)
    n = 5000
    rng = np.random.default_rng(2)
    table = pa.table(
        {
            "request_id": [f"b{i}" for i in range(n)],
            "version": ["v1"] * n,
            "timestamp": pa.array(np.full(n, 1_780_000_000, dtype=np.int64)).cast(pa.timestamp("s")),
            "amount": rng.random(n) * 100,
            "country": rng.choice(["FR", "DE"], n),
            "vip": rng.random(n) < 0.5,
            "channel": ["batch"] * n,
            "score": rng.random(n),
            "timing_inference": np.full(n, 2.0),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    r = api.post(
        "/v1/predictions?model=fraud",
        content=buf.getvalue(),
        headers={"Content-Type": "application/vnd.apache.parquet"},
    )
    assert r.status_code == 202 and r.json()["accepted"] == n, r.text
    sink = pa.BufferOutputStream()
    arrow = table.set_column(0, "request_id", pa.array([f"a{i}" for i in range(n)]))
    with pa.ipc.new_stream(sink, arrow.schema) as w:
        w.write_table(arrow)
    r = api.post(
        "/v1/predictions?model=fraud",
        content=sink.getvalue().to_pybytes(),
        headers={"Content-Type": "application/vnd.apache.arrow.stream"},
    )
    assert r.status_code == 202 and r.json()["accepted"] == n, r.text
    csv = io.BytesIO()
    pacsv.write_csv(
        table.set_column(0, "request_id", pa.array([f"c{i}" for i in range(n)])).drop(["timestamp"]), csv
    )
    r = api.post("/v1/predictions?model=fraud", content=csv.getvalue(), headers={"Content-Type": "text/csv"})
    assert r.status_code == 202 and r.json()["accepted"] == n, r.text
    api.flush()
    assert counts(api, "fraud")["predictions"] == 3 * n
    rec = api.get("/v1/models/fraud/predictions/c7").json()["record"]
    assert rec["metadata"]["channel"] == "batch" and rec["timings"] == {"inference": 2.0}


def test_late_and_early_labels_and_feedback(api: Api) -> None:
    register(api, FRAUD)
    early = post_json(api, "/v1/labels", {"model": "fraud", "records": [{"request_id": "r5", "label": 1}]})
    assert early.status_code == 202
    post_json(api, "/v1/predictions", {"model": "fraud", "records": fraud_records(10)})
    late = [
        {"request_id": f"r{i}", "label": i % 2, "timestamp": "2026-06-01T00:00:00Z"} for i in range(6, 10)
    ]
    assert post_json(api, "/v1/labels", {"model": "fraud", "records": late}).json()["accepted"] == 4
    fb = [
        {"request_id": "r1", "outcome": "overridden", "reviewer": "ann", "label": 0, "comment": "false alarm"}
    ]
    assert post_json(api, "/v1/feedback", {"model": "fraud", "records": fb}).json()["accepted"] == 1
    api.flush()
    c = counts(api, "fraud")
    assert (c["predictions"], c["labels"], c["feedback"]) == (10, 5, 1)
    rec = api.get("/v1/models/fraud/predictions/r5").json()["record"]
    assert rec["label"]["value"] == "1"
    rec = api.get("/v1/models/fraud/predictions/r1").json()["record"]
    assert rec["feedback"][0]["outcome"] == "overridden" and rec["feedback"][0]["reviewer"] == "ann"


def test_resent_batch_is_stored_once(stack: Settings) -> None:
    records = fraud_records(500, seed=3)
    labels = [{"request_id": f"r{i}", "label": 1} for i in range(100)]
    with Api(create_app(stack)) as api:
        register(api, FRAUD)
        assert (
            post_json(api, "/v1/predictions", {"model": "fraud", "records": records}).json()["accepted"]
            == 500
        )
        again = post_json(api, "/v1/predictions", {"model": "fraud", "records": records}).json()
        assert again["accepted"] == 0 and again["duplicates"] == 500
        doubled = post_json(
            api, "/v1/predictions", {"model": "fraud", "records": records[:5] + records[:5]}
        ).json()
        assert doubled["duplicates"] == 10
        post_json(api, "/v1/labels", {"model": "fraud", "records": labels + labels})
        api.flush()
    # a new process knows nothing of what was sent: the store itself refuses the duplicates
    with Api(create_app(stack)) as api:
        r = post_json(api, "/v1/predictions", {"model": "fraud", "records": records})
        assert r.json()["accepted"] == 500  # accepted into the spool...
        post_json(api, "/v1/labels", {"model": "fraud", "records": labels})
        api.flush()
        c = counts(api, "fraud")
        assert c["predictions"] == 500 and c["labels"] == 100  # ...and stored once


def test_violations_are_stored_and_counted(api: Api) -> None:
    register(api, FRAUD)
    recs = fraud_records(4)
    recs[0]["features"]["amount"] = 20000  # out of range
    recs[1]["features"]["country"] = "XX"  # unseen category
    recs[2]["features"]["age"] = "old"  # wrong type: stored as null
    recs[3]["features"].pop("amount")  # missing, not nullable
    recs[3]["features"]["colour"] = "red"  # unknown feature
    r = post_json(api, "/v1/predictions", {"model": "fraud", "records": recs})
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 4 and body["violations"] == 5
    assert body["violations_by_field"] == {
        "amount": {"range": 1, "missing": 1},
        "country": {"category": 1},
        "age": {"type": 1},
        "colour": {"unknown": 1},
    }
    api.flush()
    rec = api.get("/v1/models/fraud/predictions/r2").json()["record"]
    assert rec["features"]["age"] is None and rec["violations"] == ["age:type"]
    assert api.get("/v1/models/fraud/predictions/r0").json()["record"]["features"]["amount"] == 20000


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 422, "JSON object"),
        (b'{"records": []}', 422, "'model'"),
        (b'{"model": "fraud"}', 422, "'records'"),
        (b'{"model": "nope", "records": []}', 404, "nope"),
        (b'{"model": "fraud", "records": [{"version": "v1"}]}', 422, "request_id"),
        (b'{"model": "fraud", "records": [{"request_id": "a", "version": "v7"}]}', 422, "unknown version"),
        (
            b'{"model": "fraud", "records": [{"request_id": "a", "version": "v1", "score": "high"}]}',
            422,
            "score",
        ),
        (
            b'{"model": "fraud", "records": [{"request_id": "a", "version": "v1", "timestamp": "soon"}]}',
            422,
            "timestamp",
        ),
        (
            b'{"model": "fraud", "records": [{"request_id": "a", "version": "v1", "timestamp": 99999999999}]}',
            422,
            "future",
        ),
        (
            b'{"model": "fraud", "records": [{"request_id": "a", "version": "v1", "status": "meh"}]}',
            422,
            "status",
        ),
        (
            b'{"model": "fraud", "records": [{"request_id": "a", "version": "v1", "features": [1]}]}',
            422,
            "features",
        ),
        (
            b'{"model": "fraud", "records": [{"request_id": "a", "version": "v1", "latency_ms": -1}]}',
            422,
            "latency_ms",
        ),
        (
            b'{"model": "fraud", "records": [{"request_id": "a", "version": "v1", "timings": {"x": "y"}}]}',
            422,
            "timings",
        ),
        (b'{"model": "fraud", "records": [1]}', 422, "object"),
    ],
)
def test_malformed_batches_are_refused_and_nothing_stored(
    api: Api, body: bytes, status: int, needle: str
) -> None:
    register(api, FRAUD)
    good = fraud_records(1, prefix="ok")[0]
    if body.startswith(b'{"model": "fraud", "records": [{'):
        # one good row next to the bad one: the whole batch is refused
        payload = orjson.loads(body)
        payload["records"].insert(0, good)
        body = orjson.dumps(payload)
    r = api.post("/v1/predictions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.text
    if status == 422 and b"records" in body and b"[{" in body:
        err = r.json()["errors"][0]
        assert err["row"] == 1  # names the row...
        assert err["field"]  # ...and the field
    api.flush()
    assert counts(api, "fraud")["predictions"] == 0


def test_versions_and_models_change_through_patch(api: Api) -> None:
    register(api, FRAUD)
    r = api.patch("/v1/models/fraud/versions/v1", json={"approval": "approved", "data_version": "2026-11"})
    assert r.status_code == 200, r.text
    assert r.json()["approval"] == "approved" and r.json()["data_version"] == "2026-11"
    assert r.json()["role"] == "champion"  # left out, left as it was
    r = api.patch("/v1/models/fraud/versions/v1", json={"role": "shadow", "training_config_uri": "s3://cfg"})
    got = api.get("/v1/models/fraud").json()
    assert got["versions"][0]["role"] == "shadow" and got["versions"][0]["approval"] == "approved"
    assert got["versions"][0]["training_config_uri"] == "s3://cfg"
    # a client re-posting its version with no values still succeeds after the change
    assert api.post("/v1/models/fraud/versions", json={"version": "v1", "role": "shadow"}).status_code == 200
    r = api.patch("/v1/models/fraud", json={"owner": "fraud-team", "description": "card fraud at checkout"})
    assert r.status_code == 200 and r.json()["owner"] == "fraud-team"
    assert api.get("/v1/models/fraud").json()["schema"]["description"] == "card fraud at checkout"

    bad = api.patch("/v1/models/fraud/versions/v1", json={"role": "boss"})
    assert bad.status_code == 422 and "role" in bad.text
    extra = api.patch("/v1/models/fraud/versions/v1", json={"version": "v9"})
    assert extra.status_code == 422 and "version" in extra.text
    assert api.patch("/v1/models/fraud/versions/v7", json={"approval": "approved"}).status_code == 404
    assert api.patch("/v1/models/nope", json={"owner": "x"}).status_code == 404
    assert api.patch("/v1/models/fraud", json={"owner": "x" * 201}).status_code == 422
    reader = api.post("/v1/keys", json={"role": "read"}).json()["key"]
    as_reader = {"Authorization": f"Bearer {reader}"}
    assert (
        api.patch(
            "/v1/models/fraud/versions/v1", json={"approval": "rejected"}, headers=as_reader
        ).status_code
        == 403
    )
    assert api.get("/v1/models/fraud").json()["versions"][0]["approval"] == "approved"


def test_auth_roles_limits_and_media(stack: Settings) -> None:
    small = stack.model_copy(update={"max_body_bytes": 4096, "max_batch_rows": 5})
    with Api(create_app(small)) as api:
        register(api, FRAUD)
        ingest_key = api.post("/v1/keys", json={"role": "ingest", "name": "svc"}).json()
        read_key = api.post("/v1/keys", json={"role": "read"}).json()
        batch = {"model": "fraud", "records": fraud_records(2)}
        assert api.post("/v1/predictions", json=batch, headers={"Authorization": ""}).status_code == 401
        assert (
            api.post("/v1/predictions", json=batch, headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        as_reader = {"Authorization": f"Bearer {read_key['key']}"}
        as_ingest = {"Authorization": f"Bearer {ingest_key['key']}"}
        assert api.post("/v1/predictions", json=batch, headers=as_reader).status_code == 403
        assert api.get("/v1/models/fraud", headers=as_ingest).status_code == 403
        assert api.post("/v1/models", json=IRIS, headers=as_ingest).status_code == 403
        assert api.post("/v1/predictions", json=batch, headers=as_ingest).status_code == 202
        assert api.get("/v1/models/fraud", headers=as_reader).status_code == 200
        # revocation takes effect at once
        assert api.delete(f"/v1/keys/{ingest_key['id']}").status_code == 204
        assert api.post("/v1/predictions", json=batch, headers=as_ingest).status_code == 401
        # another project's key sees nothing of this one
        from driftline.storage.meta import MetaStore

        with MetaStore.from_url(small.resolved_database_url).repos() as repos:
            other, _ = repos.keys.create("other", "admin", "other")
        as_other = {"Authorization": f"Bearer {other}"}
        assert api.get("/v1/models/fraud", headers=as_other).status_code == 404
        assert api.get("/v1/models", headers=as_other).json()["items"] == []
        assert api.post("/v1/predictions", json=batch, headers=as_other).status_code == 404
        # limits
        assert (
            api.post("/v1/predictions", json={"model": "fraud", "records": fraud_records(6)}).status_code
            == 413
        )
        assert (
            api.post(
                "/v1/predictions", content=b"x" * 5000, headers={"Content-Type": "application/json"}
            ).status_code
            == 413
        )
        r = api.post(
            "/v1/predictions?model=fraud", content=b"abc", headers={"Content-Type": "application/xml"}
        )
        assert r.status_code == 415
        r = api.post(
            "/v1/predictions?model=fraud",
            content=b"garbage",
            headers={"Content-Type": "application/vnd.apache.parquet"},
        )
        assert (r.status_code == 400 and "Parquet" in r.json()["detail"]) or "parquet" in r.json()["detail"]
        api.flush()
        assert counts(api, "fraud")["predictions"] == 2


def test_reference_upload_json_csv_parquet(api: Api) -> None:
    register(api, FRAUD, versions=("v1", "v2"))
    recs = [{**r, "label": i % 2} for i, r in enumerate(fraud_records(300))]
    for r in recs:
        r.pop("version")
    res = api.put("/v1/models/fraud/versions/v1/reference", json={"records": recs})
    assert res.status_code == 200 and res.json()["rows"] == 300, res.text
    # a second upload replaces the first
    res = api.put("/v1/models/fraud/versions/v1/reference", json={"records": recs[:120]})
    assert res.json()["rows"] == 120
    table = pa.table({"amount": np.arange(50, dtype=float), "country": ["FR"] * 50, "label": ["1"] * 50})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    res = api.put(
        "/v1/models/fraud/versions/v2/reference",
        content=buf.getvalue(),
        headers={"Content-Type": "application/vnd.apache.parquet"},
    )
    assert res.status_code == 200 and res.json()["rows"] == 50
    csv = b"amount,country,label\n1.5,FR,1\n2.5,DE,0\n"
    res = api.put("/v1/models/fraud/versions/v2/reference", content=csv, headers={"Content-Type": "text/csv"})
    assert res.json()["rows"] == 2
    assert api.put("/v1/models/fraud/versions/v9/reference", json={"records": recs[:1]}).status_code == 404
    got = api.get("/v1/models/fraud").json()
    assert got["counts"]["reference"] == {"v1": 120, "v2": 2}
    assert [v["reference_rows"] for v in got["versions"]] == [120, 2]


def test_multiclass_and_regression(api: Api) -> None:
    register(api, IRIS)
    register(api, HOUSES)
    recs = [
        {
            "request_id": "i1",
            "version": "v1",
            "features": {"petal": 1.0, "sepal": 2.0},
            "scores": {"setosa": 0.7, "versicolor": 0.2, "virginica": 0.1},
        },
        {"request_id": "i2", "version": "v1", "features": {"petal": 1.0}, "prediction": "virginica"},
    ]
    assert post_json(api, "/v1/predictions", {"model": "iris", "records": recs}).status_code == 202
    bad = post_json(api, "/v1/labels", {"model": "iris", "records": [{"request_id": "i1", "label": "rose"}]})
    assert bad.status_code == 422 and "classes" in bad.text
    assert (
        post_json(
            api, "/v1/labels", {"model": "iris", "records": [{"request_id": "i1", "label": "setosa"}]}
        ).status_code
        == 202
    )
    houses = [
        {
            "request_id": "h1",
            "version": "v1",
            "features": {"rooms": 3, "city": "Lyon"},
            "prediction": 250000.5,
        }
    ]
    assert post_json(api, "/v1/predictions", {"model": "houses", "records": houses}).status_code == 202
    bad = post_json(
        api, "/v1/predictions", {"model": "houses", "records": [{**houses[0], "prediction": "big"}]}
    )
    assert bad.status_code == 422
    api.flush()
    rec = api.get("/v1/models/iris/predictions/i1").json()["record"]
    assert rec["prediction"] == "setosa"  # derived from the scores
    assert rec["scores"] == {"setosa": 0.7, "versicolor": 0.2, "virginica": 0.1}
    assert rec["label"]["value"] == "setosa"
    assert api.get("/v1/models/houses/predictions/h1").json()["record"]["prediction"] == 250000.5


def test_probes_and_metrics(api: Api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    register(api, FRAUD)
    post_json(api, "/v1/predictions", {"model": "fraud", "records": fraud_records(3)})
    text = api.get("/metrics").text
    assert 'driftline_ingest_rows_total{kind="predictions"} 3.0' in text
    assert "driftline_spool_pending_bytes" in text
    assert 'route="/v1/predictions",status="202"' in text
    assert api.get("/openapi.json").json()["components"]["schemas"]["PredictionRecord"]["properties"][
        "request_id"
    ]
