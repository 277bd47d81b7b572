"""Keys this process accepted lately, to tell a client its retry was a duplicate.

Only a courtesy for the response: the event store's idempotent insert is what keeps
each record once. Bounded by two generations of hashes, so memory stays flat.
"""

from __future__ import annotations

import threading

import numpy as np


class RecentKeys:
    def __init__(self, per_generation: int = 250_000) -> None:
        self.per_generation = per_generation
        self._current: set[int] = set()
        self._previous: set[int] = set()
        self._lock = threading.Lock()

    def seen(self, keys: list[str]) -> np.ndarray:
        """Which keys were accepted before, or earlier in the same list."""
        hashes = list(map(hash, keys))
        out = np.zeros(len(keys), dtype=bool)
        distinct = set(hashes)
        local: set[int] = set()
        with self._lock:
            cur, prev = self._current, self._previous
            if len(distinct) == len(hashes) and distinct.isdisjoint(cur) and distinct.isdisjoint(prev):
                return out  # the usual case, decided by set operations alone
            for i, h in enumerate(hashes):
                if h in local or h in cur or h in prev:
                    out[i] = True
                else:
                    local.add(h)
        return out

    def add(self, keys: list[str]) -> None:
        with self._lock:
            self._current.update(map(hash, keys))
            if len(self._current) > self.per_generation:
                self._previous = self._current
                self._current = set()
