"""Requests that arrive together are checked and spooled together.

Checking a batch costs a fixed overhead per column (dozens of Arrow and NumPy calls)
whatever its size, and every spooled batch is one write and one fsync: a stream of
small batches spends most of its time on those. While one request's thread works,
the ones that arrive meanwhile queue up under the same key (project, model, kind);
when it is done, the first of them leads and takes everything queued, up to a size
limit, as one group. No request waits for a timer: a group is whatever piled up
while the one before it was being done, so an idle server handles each request on
its own, as before.

Each request still gets its own answer: the leader computes one result per member,
or one exception per member, and wakes them all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")  # what a request brings
R = TypeVar("R")  # what it gets back


@dataclass(eq=False)
class Pending(Generic[T, R]):
    item: T
    size: int
    result: R | None = None
    error: BaseException | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


Work = Callable[[Sequence[T]], Sequence["R | BaseException"]]


class Coalescer(Generic[T, R]):
    """One leader at a time per key; the others wait and are answered with the leader's group."""

    def __init__(self, max_size: int) -> None:
        """`max_size` bounds a group's total size, in the unit its callers give (rows, bytes)."""
        self.max_size = max_size
        self._lock = threading.Lock()
        self._queues: dict[Hashable, list[Pending[T, R]]] = {}
        self._leading: set[Hashable] = set()

    def submit(self, key: Hashable, item: T, size: int, work: Work[T, R]) -> R:
        """`work` gets the items of a group and returns, per item, its result or its exception."""
        me: Pending[T, R] = Pending(item, size)
        with self._lock:
            self._queues.setdefault(key, []).append(me)
            if key in self._leading:
                follower = True
            else:
                self._leading.add(key)
                follower = False
        if follower:
            me.wake.wait()
        if not me.done:
            # leading: the group starts with this request (the queue is first in, first out)
            self._lead(key, work)
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _lead(self, key: Hashable, work: Work[T, R]) -> None:
        with self._lock:
            queue = self._queues[key]
            group, size = [queue[0]], queue[0].size
            for p in queue[1:]:
                if size + p.size > self.max_size:
                    break
                group.append(p)
                size += p.size
            del queue[: len(group)]
        try:
            outcomes: Sequence[R | BaseException] = work([p.item for p in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"a group of {len(group)} got {len(outcomes)} results")
        except BaseException as exc:
            outcomes = [exc] * len(group)
        for p, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                p.error = outcome
            else:
                p.result = outcome
            p.done = True
        with self._lock:
            queue = self._queues[key]
            if queue:
                queue[0].wake.set()  # the next group's leader
            else:
                self._leading.discard(key)
                del self._queues[key]
        for p in group:
            p.wake.set()
