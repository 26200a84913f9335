"""Limiter: a concurrency and rate limit shared by every process that names it.

``hp.Limiter(url, name, limit=10, rate=hp.RateLimit(500, per=60))`` caps, per
key, how much weight is held at once (``limit``) and how much is granted in
any window of ``per`` seconds (``rate``), across processes and hosts, through
the same backends as the queue (see docs/limits.md).

How a grant comes about (the backend's steps are in ``backends/base.py``):

- ``acquire`` takes a ticket and joins the key's line. Each backend step first
  settles the key (drops grants and places whose lease ended, promotes
  waiters from the front while the first one fits), so grants go first come,
  first served, and a newcomer never overtakes a waiter.
- A release promotes the next waiters inside its own step and wakes exactly
  them (pushed across processes on PostgreSQL and Redis). The first waiter
  also re-checks every ``limiter_poll`` seconds, for holders that died, and
  sleeps exactly the rate's "retry after" when only the rate holds it back.
- Every grant carries a lease, renewed in the background while held, and a
  fencing token: a release after the lease ended is refused, so it never
  frees someone else's place. A waiter keeps its place by checking at least
  every ``lease / 3`` seconds; a dead one is dropped when that lapses.
- Giving up (timeout, cancellation) leaves the line in one step that also
  gives back a grant that arrived meanwhile, so a cancelled waiter never
  keeps a permit.
- Hand-off within a process (``handoff``, no rate): a released permit goes
  straight to the longest-waiting task of this process waiting on the same
  key and weight (any Limiter object of the same URL and settings), at most
  ``handoff`` times in a row, then back to the shared line. Its token and
  lease go with it; the receiver's own place in the line is given up in the
  background. This saves the round trip through the store on most hand-offs
  under contention, at the price of a stated, bounded unfairness towards
  waiters in other processes (docs/limits.md, "Fairness").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from hydrapool.backends import backend_from_url
from hydrapool.backends.base import Backend, LimitSpec, LimitTurn
from hydrapool.exceptions import Closed, LeaseExpired
from hydrapool.queue.queue import check_name
from hydrapool.ratelimit import RateLimit

__all__ = ["Limiter", "LimiterStatistics", "Permit"]

logger = logging.getLogger("hydrapool.limiter")

P = ParamSpec("P")
R = TypeVar("R")
MAX_KEY = 500  # characters
CLOSE_WAIT = 5.0  # seconds close() waits for the acquires in flight to give up


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """One key now: ``holders`` (and the weight they hold, ``held``), ``waiters``, and
    ``recent``: the weight granted in the current rate window (None without a rate)."""

    holders: int
    held: int
    waiters: int
    recent: int | None


@dataclass(eq=False, slots=True)
class Permit:
    """A grant: hold it, then ``await permit.release()`` (``async with`` does both)."""

    limiter: Limiter
    key: str | None
    token: int
    weight: int
    lost: bool = field(default=False)
    released: bool = field(default=False)
    _spec: LimitSpec | None = field(default=None, repr=False)
    _passes: int = field(default=0, repr=False)  # hand-offs in a row within this process
    _fresh_at: float = field(default=0.0, repr=False)  # monotonic: its lease last ran from

    async def release(self) -> bool:
        """Give the place back; False when the lease had already ended (nothing freed)."""
        return await self.limiter.release(self)


@dataclass(eq=False, slots=True)
class _Waiting:
    """A task of this process waiting for a place: where a hand-off finds it."""

    limiter: Limiter
    ticket: str
    weight: int
    epoch: int
    woken: asyncio.Event
    handed: Permit | None = None
    left: asyncio.Future[None] | None = None  # done when, handed a place, it left the line


# The tasks of this process waiting for a place, first come first, by (event loop, URL,
# limiter and key settings), whichever Limiter object they wait through. A permit passes
# only to the first of them, and only within its own Limiter object (whose backend runs
# the permit's later steps in order), so no waiter of this process is ever overtaken.
_LINES: dict[tuple[int, str, LimitSpec], dict[_Waiting, None]] = {}


class _Acquiring:
    """What ``limiter.acquire()`` returns: await it for a Permit, or ``async with`` it."""

    def __init__(self, limiter: Limiter, key: str | int | None, timeout: float | None, weight: int):
        self._limiter, self._key, self._timeout, self._weight = limiter, key, timeout, weight
        # By entering task: one object may be shared like an asyncio.Semaphore.
        self._permits: dict[asyncio.Task[Any] | None, Permit] = {}

    def __await__(self) -> Generator[Any, None, Permit]:
        return self._limiter._acquire(self._key, self._timeout, self._weight).__await__()

    async def __aenter__(self) -> Permit:
        permit = await self._limiter._acquire(self._key, self._timeout, self._weight)
        self._permits[asyncio.current_task()] = permit
        return permit

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        permit = self._permits.pop(asyncio.current_task())
        if await self._limiter.release(permit) or (permit.released and not permit.lost):
            return
        message = (
            f"limiter {self._limiter.name!r} key {permit.key!r}: the permit's lease "
            f"({self._limiter.lease:g} s) ended before its release, so others may have "
            "been let in meanwhile (was the event loop blocked?)"
        )
        if exc_type is None:
            raise LeaseExpired(message)
        logger.warning("%s", message)


class Limiter:
    """At most ``limit`` held and ``rate`` granted per key, across every process.

    ``url`` is a queue URL (``memory://``, ``sqlite:///…``, ``postgresql://…``,
    ``redis://…``); every process using the same URL, ``name`` and settings
    shares the limits. ``lease``: seconds a grant lasts if its holder dies.
    ``handoff``: how many times in a row a released place may go straight to the
    first task of this process waiting on the same key (and weight) through this
    object, instead of back through the store (0: never; always 0 with a ``rate``).
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        limit: int | None = None,
        rate: RateLimit | None = None,
        lease: float = 30.0,
        handoff: int = 16,
    ) -> None:
        self.name = check_name("limiter", name)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f"limit must be an int or None, got {limit!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 (or None: no concurrency limit), got {limit!r}")
        if rate is not None and not isinstance(rate, RateLimit):
            raise TypeError(f"rate must be a hp.RateLimit or None, got {rate!r}")
        if limit is None and rate is None:
            raise ValueError("a Limiter needs limit=, rate= or both (got neither)")
        if isinstance(lease, bool) or not isinstance(lease, (int, float)):
            raise TypeError(f"lease must be a number of seconds, got {lease!r}")
        if not (math.isfinite(lease) and lease >= 0.1):
            raise ValueError(f"lease must be a finite number of seconds >= 0.1, got {lease!r}")
        if isinstance(handoff, bool) or not isinstance(handoff, int):
            raise TypeError(f"handoff must be an int, got {handoff!r}")
        if handoff < 0:
            raise ValueError(f"handoff must be >= 0 (0: never pass a place on), got {handoff!r}")
        self.url = url
        self.concurrency = limit  # (``limit`` names the decorator)
        self.rate = rate
        self.lease = float(lease)
        self.handoff = 0 if rate is not None else handoff  # (each grant must meet the rate)
        self.backend: Backend = backend_from_url(url)
        self._opened = False
        self._opening = asyncio.Lock()
        self._held: dict[int, Permit] = {}  # by id(permit)
        self._renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._epoch = 0  # + 1 at each close(): acquires begun before it end
        self._waiting: set[asyncio.Event] = set()  # the wake-ups of acquires in flight
        self._acquiring = 0
        self._settled = asyncio.Event()  # set while no acquire is in flight
        self._settled.set()

    def __repr__(self) -> str:
        return f"Limiter({self.name!r}, limit={self.concurrency!r}, rate={self.rate!r})"

    # ── lifecycle ──────────────────────────────────────────────────────────
    async def _ready(self) -> Backend:
        if not self._opened:
            async with self._opening:
                if not self._opened:
                    await self.backend.open()
                    self._opened = True
        return self.backend

    async def close(self) -> None:
        """End the acquires in flight (they raise ``hp.Closed``), release what this object
        holds, stop renewing, close the connections. Using it again opens it again."""
        self._epoch += 1
        for woken in self._waiting:
            woken.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), CLOSE_WAIT)
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        for permit in list(self._held.values()):
            with contextlib.suppress(Exception):
                await self.release(permit)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._opened:
            self._opened = False
            await self.backend.close()

    async def __aenter__(self) -> Limiter:
        await self._ready()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ── checks ─────────────────────────────────────────────────────────────
    def _spec(self, key: object) -> LimitSpec:
        if key is None:
            text = ""
        elif isinstance(key, int) and not isinstance(key, bool):
            text = str(key)
        elif isinstance(key, str):
            if not key or len(key) > MAX_KEY or "\0" in key:
                raise ValueError(
                    f"limiter key {key!r} is invalid: use 1-{MAX_KEY} characters without NUL "
                    "(or None: one key for everyone)"
                )
            text = key
        else:
            raise TypeError(f"limiter key must be a str, an int or None, got {key!r}")
        rate = None if self.rate is None else (self.rate.limit, float(self.rate.per))
        return LimitSpec(self.name, text, self.concurrency, rate, self.lease)

    def _weight(self, weight: object) -> int:
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise TypeError(f"weight must be an int, got {weight!r}")
        if weight < 1:
            raise ValueError(f"weight must be >= 1, got {weight!r}")
        rate = None if self.rate is None else self.rate.limit
        for what, most in (("limit", self.concurrency), ("rate", rate)):
            if most is not None and weight > most:
                raise ValueError(
                    f"weight {weight} is more than the limiter's {what} ({most}): "
                    "it could never be granted"
                )
        return weight

    # ── acquiring ──────────────────────────────────────────────────────────
    def acquire(
        self, key: str | int | None = None, *, timeout: float | None = None, weight: int = 1
    ) -> _Acquiring:
        """Wait for a place (first come, first served); ``async with`` releases it.

        ``await limiter.acquire()`` returns the Permit instead (release it yourself).
        ``timeout``: seconds to wait at most, then ``TimeoutError``.
        """
        self._spec(key)
        self._weight(weight)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
            if not (math.isfinite(timeout) and timeout >= 0):
                raise ValueError(f"timeout must be a finite number >= 0, got {timeout!r}")
        return _Acquiring(self, key, timeout, weight)

    async def try_acquire(self, key: str | int | None = None, *, weight: int = 1) -> Permit | None:
        """A Permit if one is free now and nobody waits before us, else None (never waits)."""
        spec, weight = self._spec(key), self._weight(weight)
        backend = await self._ready()
        ticket = uuid.uuid4().hex
        try:
            turn = await backend.limiter_acquire(spec, ticket, weight, False)
            self._wake(backend, spec, turn)
            return None if turn.token is None else self._granted(spec, key, turn, weight)
        except BaseException as exc:
            await self._leave(backend, spec, ticket, exc)  # a grant on its way comes back
            raise

    async def _acquire(self, key: str | int | None, timeout: float | None, weight: int) -> Permit:
        spec = self._spec(key)
        backend = await self._ready()
        self._acquiring += 1
        self._settled.clear()
        ticket = uuid.uuid4().hex
        waiting = _Waiting(self, ticket, weight, self._epoch, backend.limiter_watch(ticket))
        self._waiting.add(waiting.woken)
        line = _LINES.setdefault(_line_key(self.url, spec), {})
        line[waiting] = None
        try:
            permit = await self._wait_turn(backend, spec, key, ticket, waiting, timeout)
        except BaseException as exc:
            _unline(self.url, spec, waiting)  # (no hand-off comes while we leave)
            await self._leave(backend, spec, ticket, exc)  # the line, or a grant that came
            raise
        finally:
            _unline(self.url, spec, waiting)
            if waiting.handed is not None:  # handed while a step brought a grant too
                self._spawn(self.release(waiting.handed))
                _done(waiting.left)
            self._waiting.discard(waiting.woken)
            backend.limiter_unwatch(ticket)
            self._acquiring -= 1
            if not self._acquiring:
                self._settled.set()
        if waiting.left is not None and not waiting.left.done():
            # Took the place handed to it: its own place in the line goes, in the background
            # (the release that handed it waits for that).
            leaving = self._spawn(self._give_up(backend, spec, ticket))
            leaving.add_done_callback(lambda _: _done(waiting.left))
        return permit

    async def _wait_turn(
        self,
        backend: Backend,
        spec: LimitSpec,
        key: str | int | None,
        ticket: str,
        waiting: _Waiting,
        timeout: float | None,
    ) -> Permit:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if waiting.handed is not None:
                handed, waiting.handed = waiting.handed, None
                return handed
            if self._epoch != waiting.epoch:
                raise Closed(f"limiter {self.name!r} was closed while waiting for a place")
            waiting.woken.clear()
            turn = await backend.limiter_acquire(spec, ticket, waiting.weight, True)
            self._wake(backend, spec, turn)
            if turn.token is not None and self._epoch == waiting.epoch:
                return self._granted(spec, key, turn, waiting.weight)
            pause = self._pause(backend, turn)
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0 and waiting.handed is None:
                    raise TimeoutError(
                        f"limiter {self.name!r} key {key!r}: no place within {timeout:g} s "
                        f"({turn.ahead} waiting before us)"
                    )
                pause = min(pause, left)
            if waiting.handed is None:
                # (asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancel
                # that comes as the wake-up does, and a cancelled waiter keeps a place)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await waiting.woken.wait()

    async def _leave(
        self, backend: Backend, spec: LimitSpec, ticket: str, exc: BaseException
    ) -> None:
        """Give up ``ticket`` (its place, or a grant no Permit was made for) in a step that
        runs to its end even if this task is cancelled meanwhile."""
        task = asyncio.ensure_future(self._give_up(backend, spec, ticket))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not isinstance(exc, asyncio.CancelledError):
                raise  # a cancel that came meanwhile wins over our own error
        except Exception:
            logger.exception("limiter %r: giving up a place failed", self.name)

    def _pause(self, backend: Backend, turn: LimitTurn) -> float:
        pause = self.lease / 3  # a waiter keeps its place by checking in
        if turn.ahead == 0:  # first: re-check for holders that died, time the rate
            pause = min(pause, backend.limiter_poll)
            if turn.retry_after is not None:
                pause = min(pause, turn.retry_after)
        return pause

    async def _give_up(self, backend: Backend, spec: LimitSpec, ticket: str) -> None:
        woken = await backend.limiter_cancel(spec, ticket)
        if woken:
            backend.limiter_woken(spec, woken)

    @staticmethod
    def _wake(backend: Backend, spec: LimitSpec, turn: LimitTurn) -> None:
        if turn.woken:
            backend.limiter_woken(spec, turn.woken)

    def _granted(
        self, spec: LimitSpec, key: str | int | None, turn: LimitTurn, weight: int
    ) -> Permit:
        assert turn.token is not None
        permit = Permit(self, None if key is None else str(key), turn.token, weight, _spec=spec)
        permit._fresh_at = time.monotonic()
        self._hold(permit)
        return permit

    def _hold(self, permit: Permit) -> None:
        self._held[id(permit)] = permit
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    def _spawn(self, step: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``step`` in the background; ``close()`` waits for it."""
        task = asyncio.ensure_future(step)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _pass_on(self, permit: Permit) -> asyncio.Future[None] | None:
        """Hand ``permit`` (token, lease and all) to the first task of this process waiting
        on its key, when that task waits through this Limiter with the same weight, the
        permit has not passed ``handoff`` times in a row, and its lease surely holds for
        a while yet (renewed less than half a lease ago: renewals come every third, so it
        is renewed in time wherever it goes). When handed: a future done once
        the receiver's own place has left the line (or it took a grant of its own)."""
        spec = permit._spec
        if spec is None or permit.lost or permit._passes >= self.handoff:
            return None
        if time.monotonic() - permit._fresh_at >= self.lease / 2:
            return None  # (a blocked loop may have let it lapse: the store will tell)
        line = _LINES.get(_line_key(self.url, spec))
        if not line:
            return None
        waiting = next(iter(line))
        if waiting.limiter is not self or waiting.weight != permit.weight:
            return None
        if waiting.epoch != self._epoch or waiting.handed is not None:
            return None
        _unline(self.url, spec, waiting)
        handed = Permit(self, permit.key, permit.token, permit.weight, _spec=spec)
        handed._passes, handed._fresh_at = permit._passes + 1, permit._fresh_at
        self._hold(handed)
        waiting.handed = handed
        waiting.woken.set()
        waiting.left = asyncio.get_running_loop().create_future()
        return waiting.left

    async def release(self, permit: Permit) -> bool:
        """Give a permit back; False (nothing freed) when its lease had ended or it was
        released already. The step runs to its end even if the caller is cancelled."""
        if not isinstance(permit, Permit) or permit.limiter is not self:
            raise TypeError(f"release takes a Permit of this limiter, got {permit!r}")
        if permit.released:
            return False
        permit.released = True
        self._held.pop(id(permit), None)
        giving_up = self._pass_on(permit)
        if giving_up is not None:
            # The receiver starts at once; this release ends when the receiver's own
            # place has left the store's line (so, once every release has returned,
            # no place of a served waiter is left in it).
            with contextlib.suppress(Exception):
                await asyncio.shield(giving_up)
            return True
        task = asyncio.ensure_future(self._release(permit))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return await asyncio.shield(task)

    async def _release(self, permit: Permit) -> bool:
        assert permit._spec is not None
        try:
            backend = await self._ready()
            done, woken = await backend.limiter_release(permit._spec, permit.token)
        except BaseException:
            permit.released = False  # still held: renewed, released by a retry or close()
            self._held[id(permit)] = permit
            raise
        if woken:
            backend.limiter_woken(permit._spec, woken)
        if not done:
            permit.lost = True
        return done

    async def _renew_loop(self) -> None:
        """Renew every held permit each ``lease / 3`` seconds while any is held."""
        while self._held:
            await asyncio.sleep(self.lease / 3)
            by_spec: dict[LimitSpec, list[Permit]] = {}
            for permit in list(self._held.values()):
                assert permit._spec is not None
                by_spec.setdefault(permit._spec, []).append(permit)
            for spec, permits in by_spec.items():
                sent = time.monotonic()
                try:
                    kept = await self.backend.limiter_renew(spec, [p.token for p in permits])
                    assert len(kept) == len(permits)
                except Exception:
                    logger.exception("renewing limiter %r permits failed; retrying", self.name)
                    continue
                for permit, alive in zip(permits, kept, strict=True):
                    if alive:
                        permit._fresh_at = sent
                    elif not permit.released:
                        permit.lost = True
                        self._held.pop(id(permit), None)
                        logger.warning(
                            "limiter %r key %r: a permit's lease ended before renewal",
                            self.name,
                            permit.key,
                        )

    # ── helpers ────────────────────────────────────────────────────────────
    def limit(
        self,
        key: str | int | Callable[..., str | int | None] | None = None,
        *,
        timeout: float | None = None,
        weight: int = 1,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorate an ``async def``: each call runs holding a place. ``key`` is a key, or a
        function of the call's arguments returning one."""
        if inspect.iscoroutinefunction(key):
            raise TypeError(
                f"@limiter.limit needs parentheses: @limiter.limit() or "
                f"@limiter.limit(key=...), not @limiter.limit (it took {key!r} as the key)"
            )
        if not callable(key):
            self._spec(key)
        self._weight(weight)

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"limiter.limit decorates an async def function, got {fn!r}")

            @functools.wraps(fn)
            async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
                chosen = key(*args, **kwargs) if callable(key) else key
                async with self.acquire(chosen, timeout=timeout, weight=weight):
                    return await fn(*args, **kwargs)

            return limited

        return decorate

    async def statistics(self, key: str | int | None = None) -> LimiterStatistics:
        """Holders, held weight, waiters and the current rate window's grants of ``key``."""
        spec = self._spec(key)
        stats = await (await self._ready()).limiter_stats(spec)
        return LimiterStatistics(stats.holders, stats.held, stats.waiters, stats.recent)


def _line_key(url: str, spec: LimitSpec) -> tuple[int, str, LimitSpec]:
    return (id(asyncio.get_running_loop()), url, spec)


def _done(left: asyncio.Future[None] | None) -> None:
    if left is not None and not left.done():
        left.set_result(None)


def _unline(url: str, spec: LimitSpec, waiting: _Waiting) -> None:
    where = _line_key(url, spec)
    line = _LINES.get(where)
    if line is not None:
        line.pop(waiting, None)
        if not line:
            del _LINES[where]
