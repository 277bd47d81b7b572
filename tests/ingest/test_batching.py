"""Requests that arrive together are done as one group, and each still gets its own answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from driftline.errors import InvalidInput
from driftline.ingest import json_arrow, service
from driftline.ingest.batching import Coalescer
from driftline.storage.events import Kind
from tests.conftest import Api
from tests.support.models import FRAUD, fraud_records


def _run_together(coalescer: Coalescer[int, int], items: list[int], rows: int, work: Any) -> dict[int, Any]:
    """Submit item 0, hold its group until every other item is queued, then let all go."""
    out: dict[int, Any] = {}
    gate = threading.Event()

    def held(group: Sequence[int]) -> Sequence[int | BaseException]:
        if 0 in group:
            gate.wait(10)
        return work(group)  # type: ignore[no-any-return]

    def submit(item: int) -> None:
        try:
            out[item] = coalescer.submit("k", item, rows, held)
        except Exception as exc:
            out[item] = exc

    first = threading.Thread(target=submit, args=(items[0],))
    first.start()
    while "k" not in coalescer._leading:
        time.sleep(0.001)
    others = [threading.Thread(target=submit, args=(i,)) for i in items[1:]]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(coalescer._queues.get("k", [])) < len(items) - 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for t in [first, *others]:
        t.join(10)
    return out


def test_requests_queued_behind_a_group_form_the_next_one() -> None:
    groups: list[list[int]] = []

    def work(group: Sequence[int]) -> list[int | BaseException]:
        groups.append(list(group))
        return [InvalidInput(f"item {i} is bad") if i == 3 else i * 10 for i in group]

    out = _run_together(Coalescer(max_size=1000), list(range(6)), 10, work)
    assert groups[0] == [0] and sorted(groups[1]) == [1, 2, 3, 4, 5]
    assert {i: v for i, v in out.items() if i != 3} == {0: 0, 1: 10, 2: 20, 4: 40, 5: 50}
    assert isinstance(out[3], InvalidInput) and "item 3" in out[3].message  # only its own request fails


def test_a_group_stays_within_its_rows_and_every_request_is_answered() -> None:
    groups: list[list[int]] = []

    def work(group: Sequence[int]) -> list[int | BaseException]:
        groups.append(list(group))
        return list(group)

    coalescer: Coalescer[int, int] = Coalescer(max_size=25)
    out = _run_together(coalescer, list(range(7)), 10, work)
    assert out == {i: i for i in range(7)}
    assert all(len(g) <= 2 for g in groups) and sorted(i for g in groups for i in g) == list(range(7))
    assert not coalescer._leading and not coalescer._queues  # nothing left behind


def test_a_failing_group_fails_each_of_its_requests() -> None:
    def work(group: Sequence[int]) -> list[int | BaseException]:
        raise RuntimeError("store down")

    out = _run_together(Coalescer(max_size=1000), list(range(4)), 1, work)
    assert all(isinstance(v, RuntimeError) for v in out.values()) and len(out) == 4


def test_a_group_answers_like_its_requests_one_by_one(api: Api) -> None:
    assert api.post("/v1/models", json=FRAUD).status_code == 201
    assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
    state = api.app.state.driftline  # type: ignore[attr-defined]
    first = fraud_records(3, prefix="a")
    second = fraud_records(2, prefix="b")
    second[0]["features"]["amount"] = 20000  # out of range
    second[1]["features"]["colour"] = "red"  # unknown feature
    third = [first[0], *fraud_records(1, prefix="c")]  # one row sent before, in the same group

    results = service._ingest_group(state, "default", Kind.PREDICTIONS, "fraud", [first, second, third])
    assert [(r.accepted, r.duplicates, r.violations) for r in results] == [(3, 0, 0), (2, 0, 2), (1, 1, 0)]  # type: ignore[union-attr]
    assert results[1].violations_by_field == {"amount": {"range": 1}, "colour": {"unknown": 1}}  # type: ignore[union-attr]
    assert results[0].violations_by_field == {} == results[2].violations_by_field  # type: ignore[union-attr]
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 6


def test_a_malformed_request_fails_alone_and_with_its_own_rows(api: Api) -> None:
    assert api.post("/v1/models", json=FRAUD).status_code == 201
    assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
    state = api.app.state.driftline  # type: ignore[attr-defined]
    good = fraud_records(4, prefix="g")
    bad = fraud_records(2, prefix="x")
    bad[1].pop("request_id")
    later = fraud_records(1, prefix="l")

    results = service._ingest_group(state, "default", Kind.PREDICTIONS, "fraud", [good, bad, later])
    assert isinstance(results[1], InvalidInput)
    assert results[1].details["errors"][0] == {"row": 1, "field": "request_id", "error": "is required"}  # type: ignore[index]
    assert [(r.accepted, r.duplicates) for r in (results[0], results[2])] == [(4, 0), (1, 0)]  # type: ignore[union-attr]
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 5  # nothing of the bad one


def _register(api: Api) -> Any:
    assert api.post("/v1/models", json=FRAUD).status_code == 201
    assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
    return api.app.state.driftline  # type: ignore[attr-defined]


def _bodies(state: Any, *batches: list[dict[str, Any]]) -> tuple[list[bytes], Any]:
    bodies = [orjson.dumps({"model": "fraud", "records": b}) for b in batches]
    schema = state.models.get("default", "fraud").schema
    rec = json_arrow.record_type(bodies[0], schema, Kind.PREDICTIONS)
    assert rec is not None and all(json_arrow.record_type(b, schema, Kind.PREDICTIONS) == rec for b in bodies)
    return bodies, rec


def test_bodies_read_together_answer_like_each_alone(api: Api) -> None:
    state = _register(api)
    first = fraud_records(3, prefix="a")
    second = fraud_records(2, prefix="b")
    second[0]["features"]["amount"] = 20000  # out of range
    third = [first[0], *fraud_records(1, prefix="c")]  # one row sent before, in the same group
    bodies, rec = _bodies(state, first, second, third)

    results = service._ingest_lines(state, "default", Kind.PREDICTIONS, "fraud", rec, bodies)
    assert [(r.accepted, r.duplicates, r.violations) for r in results] == [(3, 0, 0), (2, 0, 1), (1, 1, 0)]  # type: ignore[union-attr]
    assert results[1].violations_by_field == {"amount": {"range": 1}}  # type: ignore[union-attr]
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 6


def test_a_malformed_body_sends_its_group_body_by_body(api: Api) -> None:
    state = _register(api)
    bad = fraud_records(2, prefix="x")
    bad[1]["request_id"] = None
    bodies, rec = _bodies(state, fraud_records(4, prefix="g"), bad, fraud_records(1, prefix="l"))

    assert service._ingest_lines(state, "default", Kind.PREDICTIONS, "fraud", rec, bodies) == [None] * 3
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 0  # nothing stored by the group
    outcomes: list[Any] = []
    for body in bodies:
        try:
            outcomes.append(service.ingest_json(state, "default", Kind.PREDICTIONS, body, None).accepted)
        except InvalidInput as exc:
            outcomes.append(exc.details["errors"][0])  # type: ignore[index]
    assert outcomes == [4, {"row": 1, "field": "request_id", "error": "is required"}, 1]
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == 5  # nothing of the bad one


def test_concurrent_requests_over_http_are_all_stored_once(api: Api) -> None:
    clients = 8
    assert api.post("/v1/models", json=FRAUD).status_code == 201
    assert api.post("/v1/models/fraud/versions", json={"version": "v1"}).status_code == 201
    answers: list[Any] = []

    def client(i: int) -> None:
        for j in range(5):
            body = {"model": "fraud", "records": fraud_records(20, prefix=f"t{i}-{j}-")}
            answers.append(api.post("/v1/predictions", json=body).json())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == clients * 5 and all(a["accepted"] == 20 for a in answers), answers[:3]
    api.flush()
    assert api.get("/v1/models/fraud").json()["counts"]["predictions"] == clients * 5 * 20
