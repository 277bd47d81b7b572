"""Facts about a registered model that several read views share: which version serves, which
reference a version is compared with, and what each version's reference holds."""

from __future__ import annotations

from dataclasses import dataclass

from driftline.errors import InvalidInput, NotFound
from driftline.schema import Role
from driftline.storage.events import EventStore, Kind
from driftline.storage.meta.records import ModelInfo, VersionInfo


def champion(info: ModelInfo) -> VersionInfo | None:
    """The newest champion; a model without one is judged by its newest version."""
    champions = [v for v in info.versions if v.role is Role.CHAMPION]
    if champions:
        return champions[-1]
    return info.versions[-1] if info.versions else None


def pick_version(info: ModelInfo, version: str | None) -> VersionInfo:
    """The version asked for, else the champion; 404 when there is none."""
    if version:
        found = info.version(version)
        if found is None:
            raise NotFound(f"version {version!r} of model {info.name!r} is not registered")
        return found
    serving = champion(info)
    if serving is None:
        raise NotFound(f"model {info.name!r} has no version yet")
    return serving


@dataclass(frozen=True)
class ReferenceRows:
    rows: int
    labelled: int


def reference_rows(events: EventStore, project: str, model: str) -> dict[str, ReferenceRows]:
    """Rows and labelled rows of each version's reference, as stored (one query)."""
    table = events.names(project, model)(Kind.REFERENCE)
    got = events.engine.query_columns(
        f"SELECT version, count() AS n, countIf(isNotNull(label)) AS labelled FROM {table} GROUP BY version"
    )
    return {
        str(v): ReferenceRows(int(n), int(k))
        for v, n, k in zip(got["version"], got["n"], got["labelled"], strict=True)
        if int(n) > 0
    }


def reference_for(info: ModelInfo, version: str, have: set[str]) -> str | None:
    """The version's own reference, else the champion's, else the newest uploaded: the choice detection makes."""
    if version in have:
        return version
    for v in reversed([v.version for v in info.versions if v.role is Role.CHAMPION]):
        if v in have:
            return v
    for v in reversed([v.version for v in info.versions]):
        if v in have:
            return v
    return None


def time_range(start: int | None, end: int | None, now: float, default_seconds: int) -> tuple[int, int]:
    """[start, end) with defaults ending now; 422 unless start comes before end."""
    hi = int(now) if end is None else end
    lo = hi - default_seconds if start is None else start
    if lo >= hi:
        raise InvalidInput("start must come before end")
    return lo, hi
