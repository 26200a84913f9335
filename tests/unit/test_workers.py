"""hp.WorkerGroup: dispatch modes, state, replies, error decisions, stopping, supervision."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hydrapool as hp


def make_worker_class() -> type:
    """A fresh worker class whose instances number themselves and log what they handled."""
    numbers = itertools.count()
    log: list[tuple[int, Any]] = []

    class Echo:
        handled = log

        def init(self) -> dict[str, Any]:
            return {"id": next(numbers), "count": 0}

        async def handle(self, msg: Any, state: dict[str, Any]) -> Any:
            state["count"] += 1
            log.append((state["id"], msg))
            await asyncio.sleep(0)
            return (state["id"], msg)

    return Echo


async def test_round_robin_spreads_evenly_and_call_replies() -> None:
    Echo = make_worker_class()
    async with hp.WorkerGroup(Echo, size=4) as group:
        assert group.size == 4
        replies = [await group.call(i, timeout=5) for i in range(8)]
    assert [msg for _, msg in replies] == list(range(8))
    assert Counter(worker for worker, _ in replies) == {0: 2, 1: 2, 2: 2, 3: 2}


@pytest.mark.parametrize("mode", ["random", "monotonic"])
async def test_random_and_monotonic_deliver_everything(mode: str) -> None:
    Echo = make_worker_class()
    async with hp.WorkerGroup(Echo, size=3, mode=mode) as group:  # type: ignore[arg-type]
        for i in range(30):
            await group.cast(i)
    assert sorted(msg for _, msg in Echo.handled) == list(range(30))
    assert {worker for worker, _ in Echo.handled} <= {0, 1, 2}


async def test_key_hash_sends_one_key_to_one_worker() -> None:
    Echo = make_worker_class()
    async with hp.WorkerGroup(Echo, size=4, mode="key_hash", key=lambda m: m[0]) as group:
        for i in range(40):
            await group.cast((f"user{i % 5}", i))
    owners: dict[str, set[int]] = defaultdict(set)
    for worker, (user, _) in Echo.handled:
        owners[user].add(worker)
    assert all(len(workers) == 1 for workers in owners.values())


@settings(max_examples=40, deadline=None)
@given(messages=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3)), max_size=60))
def test_key_hash_preserves_per_key_order(messages: list[tuple[int, int]]) -> None:
    async def scenario() -> dict[int, list[int]]:
        seen: dict[int, list[int]] = defaultdict(list)

        class Slow:
            async def handle(self, msg: tuple[int, int, int], state: None) -> None:
                key, seq, delay = msg
                for _ in range(delay):
                    await asyncio.sleep(0)
                seen[key].append(seq)

        async with hp.WorkerGroup(Slow, size=3, mode="key_hash", key=lambda m: m[0]) as group:
            for seq, (key, delay) in enumerate(messages):
                await group.cast((key, seq, delay))
        return seen

    seen = asyncio.run(scenario())
    for key, seqs in seen.items():
        assert seqs == sorted(seqs), f"key {key} out of order"
    assert sum(len(v) for v in seen.values()) == len(messages)


async def test_broadcast_cast_reaches_everyone_and_call_gathers_every_reply() -> None:
    Echo = make_worker_class()
    async with hp.WorkerGroup(Echo, size=3, mode="broadcast") as group:
        await group.cast("hello")
        replies = await group.call("ping", timeout=5)
    assert sorted(worker for worker, msg in Echo.handled if msg == "hello") == [0, 1, 2]
    assert sorted(replies) == [(0, "ping"), (1, "ping"), (2, "ping")]


async def test_cast_to_and_call_to_pick_a_worker() -> None:
    Echo = make_worker_class()
    async with hp.WorkerGroup(Echo, size=3) as group:
        await group.cast_to(2, "direct")
        assert await group.call_to(1, "x") == (1, "x")
        with pytest.raises(IndexError, match=r"0\.\.2"):
            await group.cast_to(3, "nope")
    assert (2, "direct") in Echo.handled


async def test_each_worker_keeps_its_own_state_and_reply_can_replace_it() -> None:
    class Counter_:
        def init(self) -> int:
            return 0

        def handle(self, msg: int, state: int) -> hp.Reply:  # sync: runs in a thread
            return hp.Reply(state + msg, state=state + msg)

    async with hp.WorkerGroup(Counter_, size=2) as group:
        results = [await group.call(1) for _ in range(6)]
    assert results == [1, 1, 2, 2, 3, 3]


async def test_default_one_attempt_still_runs_the_handler_once() -> None:
    calls = 0

    class Fails:
        def handle(self, msg: Any, state: None) -> None:
            nonlocal calls
            calls += 1
            raise ValueError(f"bad {msg}")

    async with hp.WorkerGroup(Fails, size=1) as group:
        with pytest.raises(ValueError, match="bad 1"):
            await group.call(1, timeout=5)  # the error, not a silent timeout
    assert calls == 1
    assert group.statistics().failed == 1


async def test_retry_policy_applies_when_on_error_is_absent() -> None:
    calls = 0

    class Flaky:
        async def handle(self, msg: Any, state: None) -> str:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ConnectionError
            return "ok"

    retry = hp.Retry(attempts=3, backoff=hp.Backoff.fixed(0.001))
    async with hp.WorkerGroup(Flaky, size=1, retry=retry) as group:
        assert await group.call("x", timeout=5) == "ok"
    assert group.statistics().retried == 2


async def test_on_error_decisions_retry_with_state_backoff_and_halt() -> None:
    seen: list[tuple[int, Any]] = []

    class Decider:
        def init(self) -> dict[str, int]:
            return {"key": 0}

        async def handle(self, msg: Any, state: dict[str, int]) -> int:
            if msg == "halt-me":
                raise KeyError("halted")
            if state["key"] < 2:
                raise RuntimeError("not yet")
            return state["key"]

        async def on_error(
            self, msg: Any, attempt: int, error: Exception, state: dict[str, int]
        ) -> hp.Decision:
            seen.append((attempt, type(error).__name__))
            if isinstance(error, KeyError):
                return hp.Decision.halt()
            if attempt == 1:
                return hp.Decision.retry(state={"key": 1})
            return hp.Decision.backoff(0.001)

    async with hp.WorkerGroup(Decider, size=1, retry=hp.Retry(attempts=5)) as group:
        with pytest.raises(RuntimeError, match="not yet"):
            # state key 1 after the first retry is still < 2: tries 1..5, then the error
            await group.call("go", timeout=5)
        with pytest.raises(KeyError):
            await group.call("halt-me", timeout=5)
    assert seen[:5] == [
        (1, "RuntimeError"),
        (2, "RuntimeError"),
        (3, "RuntimeError"),
        (4, "RuntimeError"),
        (5, "RuntimeError"),
    ]
    assert seen[5] == (1, "KeyError")


async def test_call_timeout_raises_timeout_error() -> None:
    class Stuck:
        async def handle(self, msg: Any, state: None) -> None:
            await asyncio.Event().wait()

    group = hp.WorkerGroup(Stuck, size=1)
    await group.start()
    with pytest.raises(TimeoutError):
        await group.call("x", timeout=0.01)


async def test_stop_worker_hands_its_mailbox_to_the_others() -> None:
    Echo = make_worker_class()

    class Stopper(Echo):  # type: ignore[valid-type, misc]
        async def handle(self, msg: Any, state: dict[str, Any]) -> Any:
            if msg == "stop" and state["id"] == 0:
                return hp.StopWorker(reply="bye")
            return await super().handle(msg, state)

    async with hp.WorkerGroup(Stopper, size=2) as group:
        assert await group.call_to(0, "stop") == "bye"
        assert group.statistics().alive == 1
        for i in range(6):
            await group.cast(i)
    assert sorted(msg for _, msg in Echo.handled) == list(range(6))
    assert {worker for worker, _ in Echo.handled} == {1}


async def test_stop_group_closes_the_group() -> None:
    class Quitter:
        async def handle(self, msg: Any, state: None) -> Any:
            if msg == "quit":
                raise hp.StopGroup(reply="closing")
            return msg

    group = hp.WorkerGroup(Quitter, size=2)
    await group.start()
    assert await group.call("quit") == "closing"
    with pytest.raises(hp.Closed):
        await group.cast("more")
    await group.close()
    assert group.statistics().alive == 0


async def test_a_crashing_worker_is_restarted_with_fresh_state() -> None:
    inits = 0

    class Fragile:
        def init(self) -> list[str]:
            nonlocal inits
            inits += 1
            return []

        async def handle(self, msg: str, state: list[str]) -> int:
            state.append(msg)
            if msg == "boom":
                raise ValueError("handled error")
            return len(state)

        def on_error(self, msg: Any, attempt: int, error: Exception, state: Any) -> None:
            raise RuntimeError("the error hook itself crashes")

    async with hp.WorkerGroup(Fragile, size=1) as group:
        assert await group.call("a") == 1
        with pytest.raises(ValueError, match="handled error"):
            await group.call("boom")
        assert await group.call("b") == 1, "fresh state after the restart"
    assert inits == 2
    assert group.statistics().restarts == 1


async def test_ready_hook_fires_once_every_worker_is_up() -> None:
    Echo = make_worker_class()
    ready: list[int] = []

    async def on_ready(group: hp.WorkerGroup) -> None:
        ready.append(group.statistics().alive)

    async with hp.WorkerGroup(Echo, size=5, on_ready=on_ready):
        pass
    assert ready == [5]


async def test_full_mailbox_makes_cast_wait() -> None:
    release = asyncio.Event()

    class Blocked:
        async def handle(self, msg: Any, state: None) -> None:
            await release.wait()

    async with hp.WorkerGroup(Blocked, size=1, mailbox_size=1) as group:
        await group.cast(1)  # being handled
        await group.cast(2)  # fills the mailbox
        third = asyncio.ensure_future(group.cast(3))
        await asyncio.sleep(0.01)
        assert not third.done()
        release.set()
        await third


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        ((object, 0), {}, ValueError, "size must be >= 1"),
        ((object, 2), {"mode": "fastest"}, ValueError, "'fastest'"),
        ((object, 2), {"mode": "key_hash"}, ValueError, "key="),
        ((object, 2), {"key": str}, ValueError, "key="),
        ((42, 2), {}, TypeError, "callable"),
        ((object, 2), {"retry": 3}, TypeError, "Retry"),
    ],
)
def test_bad_group_arguments(args, kwargs, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words):
        hp.WorkerGroup(*args, **kwargs)


async def test_sending_before_start_or_after_close() -> None:
    group = hp.WorkerGroup(make_worker_class(), size=1)
    with pytest.raises(RuntimeError, match="start"):
        await group.cast(1)
    await group.start()
    await group.close()
    with pytest.raises(hp.Closed):
        await group.call(1)


async def test_close_waits_for_messages_in_back_off() -> None:
    done: list[str] = []
    calls = 0

    class Flaky:
        async def handle(self, msg: str, state: None) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError
            done.append(msg)

    retry = hp.Retry(attempts=2, backoff=hp.Backoff.fixed(0.02))
    async with hp.WorkerGroup(Flaky, size=1, retry=retry) as group:
        await group.cast("once")
    assert done == ["once"], "close() let the backed-off message run before stopping"


async def test_retry_policy_retry_on_is_honoured() -> None:
    calls = 0

    class Picky:
        def handle(self, msg: Any, state: None) -> None:
            nonlocal calls
            calls += 1
            raise ValueError("not retryable")

    retry = hp.Retry(attempts=3, retry_on=ConnectionError)
    async with hp.WorkerGroup(Picky, size=1, retry=retry) as group:
        with pytest.raises(ValueError, match="not retryable"):
            await group.call("x")
    assert calls == 1


async def test_restart_terminates_the_crashed_object_with_its_own_state() -> None:
    made = 0
    terminated: list[tuple[int, str]] = []
    restarted = asyncio.Event()

    class Worker:
        def __init__(self) -> None:
            nonlocal made
            made += 1
            self.n = made

        def init(self) -> str:
            if self.n == 2:
                restarted.set()
                raise RuntimeError("init fails on restart")
            return f"state of {self.n}"

        def handle(self, msg: Any, state: str) -> None:
            raise ValueError(msg)

        def on_error(self, *args: Any) -> None:
            raise RuntimeError("hook crashes")

        def terminate(self, state: str) -> None:
            terminated.append((self.n, state))

    group = hp.WorkerGroup(Worker, size=1)
    await group.start()
    with pytest.raises(ValueError, match="boom"):
        await group.call("boom")
    await restarted.wait()
    await group.close()
    assert terminated == [(1, "state of 1")]
    assert group.statistics().alive == 0
