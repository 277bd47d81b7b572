from __future__ import annotations

import threading

import pytest

from driftline.errors import Conflict, InvalidInput, NotFound
from driftline.schema import Approval, FeatureSpec, MetadataField, ModelSchema, Role, Task
from driftline.storage.meta import MetaStore, ReferenceFormat

CITY = FeatureSpec(name="city", kind="categorical")
SCORE_BAND = FeatureSpec(name="score_band_raw", kind="numeric")  # "score_" prefix: reserved
INCOME = FeatureSpec(name="income", kind="numeric", range=(0, 1e7))


def simple(name: str = "churn", **changes: object) -> ModelSchema:
    fields: dict[str, object] = {
        "name": name,
        "task": "binary",
        "features": [FeatureSpec(name="age", kind="numeric")],
    }
    fields.update(changes)
    return ModelSchema.model_validate(fields)


# models


def test_register_round_trip(store: MetaStore, churn_schema: ModelSchema) -> None:
    with store.repos() as r:
        info, created = r.models.register("default", churn_schema)
    assert created
    assert info.schema == churn_schema
    with store.repos(readonly=True) as r:
        loaded = r.models.get("default", "churn")
    assert loaded is not None
    assert loaded == info
    assert loaded.schema == churn_schema
    assert loaded.task is Task.BINARY
    assert loaded.owner == "ml-platform@example.com"
    assert loaded.schema.feature("email").pii == "hash"
    assert loaded.schema.feature("age").range == (0.0, 120.0)
    assert loaded.schema.metadata[1] == MetadataField(name="device_id", pii="hash")
    assert loaded.schema.label.positive == "yes"
    assert loaded.schema.classes == ["no", "yes"]
    assert loaded.versions == []


def test_register_again_with_an_equal_schema(store: MetaStore, churn_schema: ModelSchema) -> None:
    with store.repos() as r:
        first, _ = r.models.register("default", churn_schema)
    reordered = churn_schema.model_copy(
        update={"features": list(reversed(churn_schema.features)), "metadata": churn_schema.metadata[::-1]}
    )
    with store.repos() as r:
        again, created = r.models.register("default", churn_schema)
        assert not created
        assert again == first
        assert r.models.register("default", reordered)[1] is False


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"task": "regression"}, "task"),
        ({"features": [FeatureSpec(name="age", kind="categorical")]}, "feature 'age' kind"),
        ({"features": [FeatureSpec(name="age", kind="numeric", nullable=False)]}, "feature 'age' nullable"),
        ({"features": [FeatureSpec(name="age", kind="numeric"), CITY]}, "feature 'city' is not registered"),
        ({"features": [CITY]}, "feature 'age' is registered but missing"),
        ({"metadata": [MetadataField(name="country")]}, "metadata 'country'"),
        ({"label": {"positive": "yes"}}, "label positive"),
        ({"owner": "someone"}, "owner"),
    ],
)
def test_register_with_another_schema_is_a_conflict(
    store: MetaStore, changes: dict[str, object], expected: str
) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
    with pytest.raises(Conflict) as info, store.repos() as r:
        r.models.register("default", simple(**changes))
    assert expected in info.value.message
    assert info.value.details["differences"]
    with store.repos() as r:
        kept = r.models.get("default", "churn")
    assert kept is not None
    assert kept.schema == simple()


def test_projects_scope_models(store: MetaStore) -> None:
    with store.repos() as r:
        a, _ = r.models.register("alpha", simple())
        b, created = r.models.register("beta", simple(task="regression"))  # same name, other project
        assert created
        r.models.register("alpha", simple("only-alpha"))
        r.versions.add("alpha", "churn", "1", "champion")
    with store.repos(readonly=True) as r:
        assert a.id != b.id
        got_a, got_b = r.models.get("alpha", "churn"), r.models.get("beta", "churn")
        assert got_a is not None and got_a.task is Task.BINARY and got_a.project == "alpha"
        assert got_b is not None and got_b.task is Task.REGRESSION and got_b.project == "beta"
        assert r.models.get("beta", "only-alpha") is None
        assert r.models.get("nobody", "churn") is None
        assert [m.name for m in r.models.list("alpha")] == ["churn", "only-alpha"]
        assert [m.name for m in r.models.list("beta")] == ["churn"]
        assert r.models.list("nobody") == []
        assert r.versions.get("beta", "churn", "1") is None
        assert r.versions.list("beta", "churn") == []
        assert [v.version for v in got_a.versions] == ["1"]


def test_delete_model(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        r.versions.add("default", "churn", "1", "champion")
        r.references.record_upload("default", "churn", "1", 100, "csv")
        r.models.register("default", simple("other"))
    with store.repos() as r:
        r.models.delete("default", "churn")
        assert r.models.get("default", "churn") is None
    with store.repos() as r:
        assert [m.name for m in r.models.list("default")] == ["other"]
        with pytest.raises(NotFound):
            r.models.delete("default", "churn")
        info, created = r.models.register("default", simple(task="regression"))
        assert created
        assert info.versions == []
        assert r.references.get("default", "churn", "1") is None


def test_grow_schema(store: MetaStore) -> None:
    with store.repos() as r:
        registered, _ = r.models.register("default", simple())
    with store.repos() as r:
        grown = r.models.grow_schema("default", "churn", [CITY, FeatureSpec(name="age", kind="numeric")])
    assert [f.name for f in grown.schema.features] == ["age", "city"]
    assert grown.updated_at > registered.updated_at
    with store.repos() as r:
        same = r.models.grow_schema("default", "churn", [CITY])
        assert same == grown
        with pytest.raises(Conflict, match="city"):
            r.models.grow_schema("default", "churn", [FeatureSpec(name="city", kind="numeric")])
        with pytest.raises(NotFound):
            r.models.grow_schema("default", "nope", [CITY])


@pytest.mark.parametrize(
    "extra",
    [
        [SCORE_BAND],
        [FeatureSpec(name="country", kind="categorical")],  # taken by a metadata field
        [FeatureSpec(name="label", kind="numeric")],
        [FeatureSpec(name="x", kind="numeric"), FeatureSpec(name="x", kind="categorical")],
    ],
)
def test_grow_schema_revalidates(store: MetaStore, extra: list[FeatureSpec]) -> None:
    with store.repos() as r:
        r.models.register("default", simple(metadata=[MetadataField(name="country")]))
    with pytest.raises(InvalidInput), store.repos() as r:
        r.models.grow_schema("default", "churn", extra)


# versions


def test_add_version_and_repeat(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        v1, created = r.versions.add(
            "default",
            "churn",
            "1.0.0",
            "champion",
            data_version="2024-06",
            training_config_uri="s3://bucket/train.yaml",
            eval_report_uri="https://reports/1",
        )
    assert created
    assert v1.approval is Approval.PENDING
    assert v1.role is Role.CHAMPION
    with store.repos() as r:
        again, created = r.versions.add(
            "default",
            "churn",
            "1.0.0",
            Role.CHAMPION,
            approval="pending",
            data_version="2024-06",
            training_config_uri="s3://bucket/train.yaml",
            eval_report_uri="https://reports/1",
            features=[],
        )
        assert (again, created) == (v1, False)
        assert r.versions.add("default", "churn", "1.0.0", "champion") == (v1, False)
        assert r.versions.get("default", "churn", "1.0.0") == v1


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"role": "shadow"}, "role"),
        ({"approval": "approved"}, "approval"),
        ({"data_version": "2024-07"}, "data_version"),
        ({"eval_report_uri": "https://reports/2"}, "eval_report_uri"),
        ({"features": [CITY]}, "feature 'city'"),
    ],
)
def test_add_version_with_other_values_is_a_conflict(
    store: MetaStore, changes: dict[str, object], expected: str
) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        r.versions.add("default", "churn", "1", "champion", data_version="2024-06")
    args: dict[str, object] = {"role": "champion", **changes}
    role = args.pop("role")
    with pytest.raises(Conflict) as info, store.repos() as r:
        r.versions.add("default", "churn", "1", role, **args)  # type: ignore[arg-type]
    assert expected in info.value.message


def test_add_version_refuses_bad_input(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        with pytest.raises(InvalidInput, match="version"):
            r.versions.add("default", "churn", "bad version!", "champion")
        with pytest.raises(InvalidInput, match="role"):
            r.versions.add("default", "churn", "1", "primary")
        with pytest.raises(InvalidInput, match="approval"):
            r.versions.add("default", "churn", "1", "champion", approval="maybe")
        with pytest.raises(InvalidInput, match="data_version"):
            r.versions.add("default", "churn", "1", "champion", data_version="d" * 201)
        with pytest.raises(NotFound):
            r.versions.add("default", "nope", "1", "champion")
        with pytest.raises(NotFound):
            r.versions.add("elsewhere", "churn", "1", "champion")
        assert r.versions.list("default", "churn") == []


def test_version_features_grow_the_schema(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        r.versions.add("default", "churn", "1", "champion")
        v2, _ = r.versions.add("default", "churn", "2", "challenger", features=[CITY, CITY])
        r.versions.add("default", "churn", "3", "shadow", features=[CITY, INCOME])
    assert v2.features == [CITY]
    with store.repos() as r:
        model = r.models.get("default", "churn")
        assert model is not None
        assert [f.name for f in model.schema.features] == ["age", "city", "income"]
        assert [v.version for v in model.versions] == ["1", "2", "3"]
        assert model.version("3") is not None
        # The client's original schema still registers after its versions grew it.
        assert r.models.register("default", simple())[1] is False
        assert r.models.register("default", model.schema)[1] is False


def test_refused_version_features_store_nothing(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
    with pytest.raises(Conflict), store.repos() as r:
        r.versions.add(
            "default", "churn", "2", "challenger", features=[FeatureSpec(name="age", kind="boolean")]
        )
    with pytest.raises(InvalidInput), store.repos() as r:
        r.versions.add("default", "churn", "2", "challenger", features=[CITY, SCORE_BAND])
    with store.repos() as r:
        assert r.versions.get("default", "churn", "2") is None
        model = r.models.get("default", "churn")
        assert model is not None
        assert model.schema == simple()


def test_concurrent_versions_keep_every_feature(store: MetaStore) -> None:
    """Writers growing one schema at once are serialised on the model row."""
    with store.repos() as r:
        r.models.register("default", simple())
    count = 6
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            barrier.wait()
            with store.repos() as r:
                r.versions.add(
                    "default",
                    "churn",
                    f"v{i}",
                    "shadow",
                    features=[FeatureSpec(name=f"f{i}", kind="numeric")],
                )
                r.versions.add("default", "churn", "shared", "canary")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with store.repos() as r:
        model = r.models.get("default", "churn")
    assert model is not None
    assert {f.name for f in model.schema.features} == {"age"} | {f"f{i}" for i in range(count)}
    assert len(model.versions) == count + 1


def test_update_version(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        v1, _ = r.versions.add("default", "churn", "1", "challenger")
    with store.repos() as r:
        same = r.versions.update("default", "churn", "1")
        assert same == v1
        updated = r.versions.update("default", "churn", "1", role="champion", approval=Approval.APPROVED)
    assert (updated.role, updated.approval) == (Role.CHAMPION, Approval.APPROVED)
    assert updated.updated_at > v1.updated_at
    assert updated.created_at == v1.created_at
    with store.repos() as r:
        assert r.versions.get("default", "churn", "1") == updated
        # a client re-posting its version without an approval is not refused
        assert r.versions.add("default", "churn", "1", "champion")[1] is False
        with pytest.raises(NotFound):
            r.versions.update("default", "churn", "9", approval="approved")
        with pytest.raises(InvalidInput):
            r.versions.update("default", "churn", "1", approval="maybe")


def test_list_versions(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        for v in ("b", "a", "c"):
            r.versions.add("default", "churn", v, "shadow")
    with store.repos(readonly=True) as r:
        assert [v.version for v in r.versions.list("default", "churn")] == ["b", "a", "c"]
        with pytest.raises(NotFound):
            r.versions.list("default", "nope")


# references


def test_reference_upload_upserts(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        r.versions.add("default", "churn", "1", "champion")
        r.versions.add("default", "churn", "2", "challenger")
        _, key = r.keys.create("default", "ingest")
        assert r.references.get("default", "churn", "1") is None
        first = r.references.record_upload("default", "churn", "1", 1000, "parquet", key_id=key.id)
    assert (first.rows, first.format, first.uploaded_by_key_id) == (1000, ReferenceFormat.PARQUET, key.id)
    with store.repos() as r:
        second = r.references.record_upload("default", "churn", "1", 250, ReferenceFormat.CSV)
        assert r.references.get("default", "churn", "1") == second
        other = r.references.record_upload("default", "churn", "2", 0, "arrow", key_id=key.id)
    assert second.id == first.id
    assert (second.rows, second.format, second.uploaded_by_key_id) == (250, ReferenceFormat.CSV, None)
    assert second.uploaded_at >= first.uploaded_at
    assert other.id != first.id
    assert (other.project, other.model, other.version) == ("default", "churn", "2")


def test_reference_upload_refuses_bad_input(store: MetaStore) -> None:
    with store.repos() as r:
        r.models.register("default", simple())
        r.versions.add("default", "churn", "1", "champion")
        with pytest.raises(InvalidInput, match="format"):
            r.references.record_upload("default", "churn", "1", 10, "xlsx")
        with pytest.raises(InvalidInput, match="rows"):
            r.references.record_upload("default", "churn", "1", -1, "csv")
        with pytest.raises(NotFound):
            r.references.record_upload("default", "churn", "9", 10, "csv")
        with pytest.raises(NotFound):
            r.references.record_upload("other", "churn", "1", 10, "csv")
        assert r.references.get("default", "churn", "9") is None
        assert r.references.get("default", "nope", "1") is None


def test_delete_model_takes_its_alerts_triggers_and_own_rules(store: MetaStore) -> None:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from driftline.storage.meta.alerting import AlertRule, AlertState, RetrainingTrigger

    with store.repos() as r:
        r.models.register("default", simple())
        r.models.register("default", simple("other"))
        own = r.rules.create("default", "churn drift", "churn", {"detector": "feature_drift"})
        every = r.rules.create("default", "all drift", "*", {"detector": "feature_drift"})
        assert own is not None and every is not None
    with Session(store.engine) as s, s.begin():
        project_id = s.scalars(select(AlertRule.project_id).where(AlertRule.id == own.id)).one()
        for model, rule in (("churn", own.id), ("churn", every.id), ("other", every.id)):
            s.add(
                AlertState(
                    rule_id=rule,
                    project_id=project_id,
                    model=model,
                    series_hash=f"{model}{rule}",
                    version="1",
                    detector="feature_drift",
                    metric="psi",
                    feature="age",
                    slice="",
                    status="firing",
                    severity="warning",
                )
            )
            s.add(
                RetrainingTrigger(
                    project_id=project_id, model=model, episode=rule, state="proposed", evidence_json="{}"
                )
            )
    with store.repos() as r:
        r.models.delete("default", "churn")
    with Session(store.engine) as s:
        assert s.scalars(select(AlertState.model)).all() == ["other"]
        assert s.scalars(select(RetrainingTrigger.model)).all() == ["other"]
        assert s.scalars(select(AlertRule.name)).all() == ["all drift"]
        assert s.scalar(select(func.count()).select_from(AlertState)) == 1
