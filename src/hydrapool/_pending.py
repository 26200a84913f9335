"""The backlog of a Pool: highest priority first, FIFO among equals.

A bucket queue rather than one heap of (priority, seq, task) tuples: nearly
all tasks share a handful of priorities, so push and pop are O(1) deque
operations, and a waiting task costs one pointer in a deque instead of a
tuple and a sequence number (about 90 bytes saved per waiting task).
Cancelled tasks are left in place and skipped when popped.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import Any

from hydrapool._handle import PENDING, TaskHandle


class Backlog:
    """Tasks waiting for a slot, by priority (higher first), then in order of arrival."""

    __slots__ = ("_buckets", "_levels")

    def __init__(self) -> None:
        self._buckets: dict[float, deque[TaskHandle[Any]]] = {}
        self._levels: list[float] = []  # heap of negated priorities that have a bucket

    def _new_bucket(self, priority: float) -> deque[TaskHandle[Any]]:
        bucket = self._buckets[priority] = deque()
        heapq.heappush(self._levels, -priority)
        return bucket

    def push(self, handle: TaskHandle[Any]) -> None:
        """Add behind every waiting task of the same priority."""
        bucket = self._buckets.get(handle.priority)
        if bucket is None:
            bucket = self._new_bucket(handle.priority)
        bucket.append(handle)

    def push_front(self, handle: TaskHandle[Any]) -> None:
        """Add ahead of every waiting task of the same priority (a rerun)."""
        bucket = self._buckets.get(handle.priority)
        if bucket is None:
            bucket = self._new_bucket(handle.priority)
        bucket.appendleft(handle)

    def pop(self) -> TaskHandle[Any] | None:
        """Remove and return the next pending task, or None if there is none."""
        levels = self._levels
        buckets = self._buckets
        while levels:
            priority = -levels[0]
            bucket = buckets[priority]
            while bucket:
                handle = bucket.popleft()
                if handle._state is PENDING:
                    if not bucket:
                        heapq.heappop(levels)
                        del buckets[priority]
                    return handle
            heapq.heappop(levels)
            del buckets[priority]
        return None

    def __iter__(self) -> Iterator[TaskHandle[Any]]:
        for bucket in list(self._buckets.values()):
            yield from list(bucket)

    def compact(self) -> None:
        """Drop entries that are no longer pending (cancelled while waiting)."""
        for priority, bucket in list(self._buckets.items()):
            live = deque(h for h in bucket if h._state is PENDING)
            if live:
                self._buckets[priority] = live
            else:
                del self._buckets[priority]
        self._levels = [-p for p in self._buckets]
        heapq.heapify(self._levels)

    def clear(self) -> None:
        """Forget every entry."""
        self._buckets.clear()
        self._levels.clear()
