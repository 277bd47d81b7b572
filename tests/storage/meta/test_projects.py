from __future__ import annotations

import pytest

from driftline.errors import InvalidInput
from driftline.storage.meta import DEFAULT_PROJECT, MetaStore


def test_get_or_create_is_idempotent(store: MetaStore) -> None:
    with store.repos() as r:
        assert r.projects.get(DEFAULT_PROJECT) is None
        created = r.projects.get_or_create(DEFAULT_PROJECT)
    with store.repos() as r:
        assert r.projects.get_or_create(DEFAULT_PROJECT) == created
        assert r.projects.get(DEFAULT_PROJECT) == created


def test_list_is_sorted_by_name(store: MetaStore) -> None:
    with store.repos() as r:
        for name in ("zeta", "alpha", "mid-1"):
            r.projects.get_or_create(name)
    with store.repos(readonly=True) as r:
        assert [p.name for p in r.projects.list()] == ["alpha", "mid-1", "zeta"]


@pytest.mark.parametrize("name", ["", "Upper", "1st", "has space", "a" * 33, "trailing-", "x;drop"])
def test_invalid_names_are_refused(store: MetaStore, name: str) -> None:
    with pytest.raises(InvalidInput, match="project"), store.repos() as r:
        r.projects.get_or_create(name)
    with store.repos() as r:
        assert r.projects.list() == []
