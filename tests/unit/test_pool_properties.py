"""Property tests: for random work the limit holds, each task ends once, order is kept."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hydrapool as hp

task_spec = st.tuples(
    st.integers(min_value=0, max_value=4),  # steps: how many times the task yields
    st.integers(min_value=-2, max_value=2),  # priority
    st.booleans(),  # fails?
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(task_spec, min_size=1, max_size=40),
    concurrency=st.integers(min_value=1, max_value=6),
    retries=st.integers(min_value=1, max_value=3),
)
def test_limit_exactly_once_and_priority_order(
    specs: list[tuple[int, int, bool]], concurrency: int, retries: int
) -> None:
    asyncio.run(_check(specs, concurrency, retries))


async def _check(specs: list[tuple[int, int, bool]], concurrency: int, retries: int) -> None:
    running = 0
    peak = 0
    starts: list[int] = []
    tries = [0] * len(specs)

    async def task(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if tries[i] == 0:
            starts.append(i)
        tries[i] += 1
        try:
            for _ in range(specs[i][0]):
                await asyncio.sleep(0)
            if specs[i][2]:
                raise ValueError(i)
            return i
        finally:
            running -= 1

    pool = hp.Pool(concurrency, retry=hp.Retry(attempts=retries))
    pool.pause()  # everything waits in the backlog, so the start order is fully determined
    handles = [pool.add(task, i, priority=p) for i, (_, p, _) in enumerate(specs)]
    ends: list[int] = []
    for h in handles:
        h._add_callback(lambda handle: ends.append(handle.args[0]))
    pool.resume()
    await pool.done()

    assert peak <= concurrency
    assert sorted(ends) == list(range(len(specs))), "every task ends exactly once"
    expected = sorted(range(len(specs)), key=lambda i: (-specs[i][1], i))
    assert starts == expected, "first starts follow priority, then FIFO"
    for i, (_, _, fails) in enumerate(specs):
        assert tries[i] == (retries if fails else 1)
        assert handles[i].done()
        assert (handles[i].exception() is not None) == fails
    stats = pool.statistics()
    assert stats.completed + stats.failed == len(specs)
    assert stats.failed == sum(1 for s in specs if s[2])
