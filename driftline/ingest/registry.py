"""A short-lived cache of registered models, so ingest does not ask the database per batch.

Another process may add a version at any time; a miss refreshes the entry, and
entries expire after a few seconds anyway.
"""

from __future__ import annotations

import threading
import time

from driftline.errors import NotFound, StoreError
from driftline.storage.meta import MetaStore
from driftline.storage.meta.records import ModelInfo


class ModelCache:
    def __init__(self, meta: MetaStore, ttl: float = 5.0) -> None:
        self.meta = meta
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[float, ModelInfo]] = {}
        self._lock = threading.Lock()

    def get(self, project: str, name: str, *, fresh: bool = False, allow_stale: bool = False) -> ModelInfo:
        """The model, from cache when recent; `allow_stale` rides out a metadata outage."""
        key = (project, name)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
        if not fresh and hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            with self.meta.repos(readonly=True) as repos:
                info = repos.models.get(project, name)
        except StoreError:
            if allow_stale and hit is not None:
                return hit[1]
            raise
        if info is None:
            with self._lock:
                self._entries.pop(key, None)
            raise NotFound(f"model {name!r} is not registered")
        with self._lock:
            self._entries[key] = (now, info)
        return info

    def put(self, info: ModelInfo) -> None:
        with self._lock:
            self._entries[(info.project, info.name)] = (time.monotonic(), info)

    def forget(self, project: str, name: str) -> None:
        with self._lock:
            self._entries.pop((project, name), None)
