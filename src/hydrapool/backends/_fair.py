"""Which due jobs a claim takes: priority first, then round-robin over channels.

Shared by the backends that claim in Python inside their atomic step (memory,
SQLite). Among the head jobs of all channels the highest priority wins; on a
tie the channel served least recently goes first, so channels take turns and
a newly seen channel gets one turn without starving the busy ones. A channel
never takes more than its remaining ``capacity`` (max_concurrency - running).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass(slots=True)
class Candidates:
    """One channel's due jobs, best first: (priority, job_id)."""

    channel: str
    last_served: int
    capacity: int | None  # how many more may run now; None: unlimited
    jobs: list[tuple[int, str]] = field(default_factory=list)


def pick(
    channels: list[Candidates], slots: int, counter: int
) -> tuple[list[tuple[str, str]], dict[str, int], int]:
    """Choose up to ``slots`` jobs.

    Returns the chosen ``(channel, job_id)`` in claim order, each served
    channel's new ``last_served`` mark, and the new serve counter.
    """
    heap: list[tuple[int, int, str, int]] = []
    by_name = {c.channel: c for c in channels}
    for c in channels:
        if c.jobs and (c.capacity is None or c.capacity > 0):
            heap.append((-c.jobs[0][0], c.last_served, c.channel, 0))
    heapq.heapify(heap)
    chosen: list[tuple[str, str]] = []
    served: dict[str, int] = {}
    taken: dict[str, int] = {}
    while heap and len(chosen) < slots:
        _, _, name, index = heapq.heappop(heap)
        c = by_name[name]
        chosen.append((name, c.jobs[index][1]))
        counter += 1
        served[name] = counter
        taken[name] = taken.get(name, 0) + 1
        nxt = index + 1
        if nxt < len(c.jobs) and (c.capacity is None or taken[name] < c.capacity):
            heapq.heappush(heap, (-c.jobs[nxt][0], counter, name, nxt))
    return chosen, served, counter
