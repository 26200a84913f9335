"""The Limiter on PostgreSQL: the backend's ``limiter_*`` methods (a mixin of
``PostgresBackend``) and how waiters learn their turn.

The steps themselves are functions of the schema (migrations/0002_limiter.sql),
one call each. Around them:

- A step that promotes waiters notifies each one's process, on the channel
  that process listens on, *with its grant* (token and lease end); the new
  first waiter learns what holds it back (the limit, or the rate and for how
  long). That is what their next step would tell them, so they take it without
  one: a hand-off costs the release's round trip only. A process hears its
  notifications in the order the steps committed, so in the order of the
  grants.
- Tickets are watched process-wide (per event loop and database schema): every
  Limiter of this process on that schema listens on the same channel, and any
  of them wakes any waiter. While listening, waiters are woken by those
  notifications only, never by a step's reply: replies on several connections
  come back in any order, the notifications do not, so waiters learn their
  grants first come, first served.
- The steps of one key from one backend go to the server one at a time (see
  ``Turns``), and newcomers that arrive together go in one step (see
  ``LimiterSteps._arrive``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hydrapool.backends.base import LimitSpec, LimitStats, LimitTurn
from hydrapool.backends.postgres._db import Row

__all__ = ["LimiterSteps", "channel_for"]

CROWD = 64  # newcomers sent in one step at most
_TICKET_CHARS = 200
_TICKET = re.compile(rf"[^\s\x00]{{1,{_TICKET_CHARS}}}")

# ── wake-ups ──────────────────────────────────────────────────────────────


@dataclass(eq=False, slots=True)
class Watch:
    """A ticket a waiter of this process watches: its event; the turn a wake-up
    brought (a grant, or first in line) and when it was heard (``time.monotonic()``);
    ``heard``, resolved when a grant comes while the ticket's own step is on its way;
    ``placed``, once a step has seen the ticket."""

    woken: asyncio.Event = field(default_factory=asyncio.Event)
    turn: tuple[LimitTurn, float] | None = None
    heard: asyncio.Future[None] | None = None
    placed: bool = False


_WATCHED: dict[tuple[int, str], dict[str, Watch]] = {}
_PROCESS: tuple[int, str] = (0, "")


def channel_for(schema: str) -> str:
    """This process's wake-up channel on ``schema`` (a new one after a fork): at most
    50 + 11 characters, under PostgreSQL's 63 for a name."""
    global _PROCESS
    if _PROCESS[0] != os.getpid():
        _PROCESS = (os.getpid(), secrets.token_hex(3))
    return f"{schema}.lim.{_PROCESS[1]}"


def _watches(target: str, *, keep: bool = False) -> dict[str, Watch]:
    """The tickets this process watches on ``target`` in the running event loop
    (``keep``: store a new dict; an empty one goes at unwatch)."""
    where = (id(asyncio.get_running_loop()), target)
    found = _WATCHED.get(where)
    if found is None:
        found = {}
        if keep:
            _WATCHED[where] = found
    return found


def _turn_heard(mark: str, ends: float) -> LimitTurn | None:
    """A token: granted until ``ends``. ``0``: first in line, held back by the limit;
    ``~<seconds>``: first, fits the rate window in that long."""
    try:
        if mark.startswith("~"):
            return LimitTurn(None, None, 0, float(mark[1:]))
        token = int(mark)
    except ValueError:
        return None
    return LimitTurn(token, ends, 0, None) if token else LimitTurn(None, None, 0, None)


def _hear(watched: dict[str, Watch], payload: str) -> None:
    """A wake-up, ``"<lease end> <ticket> <turn> ..."`` (see limiter_wake in the schema):
    keep the turns of the tickets watched here, then wake them, in order."""
    fields = payload.split()
    if len(fields) < 3 or len(fields) % 2 == 0:
        return  # not a wake-up
    try:
        ends = float(fields[0])
    except ValueError:
        return
    now = time.monotonic()
    for ticket, mark in zip(fields[1::2], fields[2::2], strict=True):
        watch = watched.get(ticket)
        if watch is None:
            continue  # gone
        turn = _turn_heard(mark, ends)
        if turn is not None:
            watch.turn = (turn, now)
            if turn.token is not None and watch.heard is not None and not watch.heard.done():
                watch.heard.set_result(None)
        watch.woken.set()


def _wake(watched: dict[str, Watch], tickets: Sequence[str]) -> None:
    for ticket in tickets:
        watch = watched.get(ticket)
        if watch is not None:
            watch.woken.set()


def _take_turn(watch: Watch | None, lease: float) -> LimitTurn | None:
    """The turn a wake-up brought (taken once) if heard less than a third of a lease
    ago. A grant surely still holds then, and its renewals (every third of a lease
    from now on) come in time; a first waiter's place too, and it checks in again
    within a third of a lease. Older, the waiter asks the server with a step."""
    if watch is None or watch.turn is None:
        return None
    (turn, heard), watch.turn = watch.turn, None
    elapsed = time.monotonic() - heard
    if elapsed >= lease / 3:
        return None
    if turn.retry_after is not None:
        return replace(turn, retry_after=max(0.0, turn.retry_after - elapsed))
    return turn


def _turn_of(row: Row) -> LimitTurn:
    token, ends, ahead, retry, woken = row
    return LimitTurn(token, ends, int(ahead), retry, tuple(woken))


async def _step_or_grant(
    watch: Watch, step: asyncio.Future[Row], lease: float
) -> tuple[LimitTurn, bool]:
    """The turn of a waiter's step, or the grant a wake-up brings while the step is on
    its way, whichever comes first (a reply may arrive after later grants are heard).
    Returns the turn and whether the step still runs (then nothing may act on the
    grant on the server before it ends: see ``LimiterSteps._after_steps``)."""
    heard = watch.heard = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait((step, heard), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.heard = None
    if step.done():
        turn = _turn_of(step.result())
        heard_turn = _take_turn(watch, lease)  # a grant: promoted after the step looked
        if turn.token is None and heard_turn is not None and heard_turn.token is not None:
            return heard_turn, False
        return turn, False
    granted = _take_turn(watch, lease)
    if granted is None or granted.token is None:
        return _turn_of(await step), False
    return granted, True


# ── one step of a key at a time ───────────────────────────────────────────


class Turns:
    """The steps of one key from this backend go to the server one at a time: the
    server runs them one at a time anyway (they lock the key's row), and a crowd of
    steps queued on that lock costs it far more than the steps themselves.

    Newcomers (a ticket's first step) wait behind every other step, so a crowd
    arriving together does not hold up the releases and hand-offs of the key.
    Both kinds go first come, first served."""

    def __init__(self) -> None:
        self._gates: dict[tuple[str, str], _Gate] = {}

    @contextlib.asynccontextmanager
    async def turn(self, name: str, key: str, *, newcomer: bool) -> AsyncIterator[None]:
        """Hold the key's turn for one step."""
        gate = self._gates.get((name, key))
        if gate is None:
            gate = self._gates[(name, key)] = _Gate()
        gate.users += 1
        try:
            await gate.enter(newcomer)
            try:
                yield
            finally:
                gate.leave()
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[(name, key)]


class _Gate:
    """One key's turn: taken, and who waits for it (others first, then newcomers)."""

    __slots__ = ("busy", "newcomers", "others", "users")

    def __init__(self) -> None:
        self.busy = False
        self.users = 0
        self.others: deque[asyncio.Future[None]] = deque()
        self.newcomers: deque[asyncio.Future[None]] = deque()

    async def enter(self, newcomer: bool) -> None:
        if not self.busy:
            self.busy = True
            return
        turn = asyncio.get_running_loop().create_future()
        line = self.newcomers if newcomer else self.others
        line.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.leave()  # handed the turn as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    line.remove(turn)
            raise

    def leave(self) -> None:
        """Hand the turn to the next step waiting, if any (it stays taken)."""
        for line in (self.others, self.newcomers):
            while line:
                turn = line.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self.busy = False


@dataclass(eq=False, slots=True)
class _Crowd:
    """Newcomers of one key going in one step: the first sends it when its turn comes;
    the others wait for their rows."""

    spec: LimitSpec
    tickets: list[str]
    weights: list[int]
    rows: list[asyncio.Future[Row]] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Leaving:
    """Tickets of one key giving up, sent as one step; ``woken``: that step."""

    spec: LimitSpec
    tickets: list[str]
    woken: asyncio.Future[tuple[str, ...]] | None = None


# ── the backend's methods ─────────────────────────────────────────────────


class LimiterSteps:
    """The Limiter's steps of ``PostgresBackend`` (see ``Backend`` in base.py)."""

    limiter_poll = 1.0
    """The first waiter re-checks this often: a holder that died sends nothing, and a
    wake-up sent while the listening connection was down is lost."""

    # Provided by PostgresBackend:
    schema: str
    conninfo: str
    limiter_channel: str
    _listening: asyncio.Event

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        raise NotImplementedError

    def _limiter_setup(self) -> None:
        # Where this process's watched tickets are kept; acquire steps on their way, by
        # ticket; steps that went on after their waiter took the grant a wake-up
        # brought, by token; newcomers gathering for one step, by key.
        self._target = f"{self.conninfo} {self.schema}"
        self._acquiring: dict[str, asyncio.Future[Row]] = {}
        self._late: dict[int, asyncio.Future[Row]] = {}
        self._crowds: dict[tuple[str, str], _Crowd] = {}
        self._leaving: dict[tuple[str, str], _Leaving] = {}  # give-ups gathering, by key
        self._turns = Turns()

    def _limiter_heard(self, payload: str) -> None:
        """A notification on this process's limiter channel."""
        _hear(_watches(self._target), payload)

    def _limiter_wake_all(self) -> None:
        """Wake every waiter here (wake-ups may have been missed)."""
        watched = _watches(self._target)
        _wake(watched, list(watched))

    def _limit_params(self, spec: LimitSpec) -> dict[str, Any]:
        rate, per = spec.rate if spec.rate is not None else (None, None)
        return {
            "name": spec.name,
            "key": spec.key,
            "limit": spec.limit,
            "rate": rate,
            "per": per,
            "lease": spec.lease,
        }

    async def _limit_step(
        self, spec: LimitSpec, name: str, params: Mapping[str, Any], newcomer: bool = False
    ) -> Row:
        """One step on ``spec``'s key, in its turn (see ``Turns``)."""
        async with self._turns.turn(spec.name, spec.key, newcomer=newcomer):
            return (await self._rows(name, params))[0]

    async def limiter_acquire(
        self, spec: LimitSpec, ticket: str, weight: int, wait: bool
    ) -> LimitTurn:
        """Settle and place the ticket: a call of limiter_acquire (see the schema). A
        waiter whose turn a wake-up brought takes it without a step."""
        watch = _watches(self._target).get(_ticket(ticket))
        heard = _take_turn(watch, spec.lease)
        if heard is not None:
            return heard
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"limiter weight must be an int >= 1, got {weight!r}")
        newcomer = watch is None or not watch.placed
        if watch is not None:
            watch.placed = True
        if newcomer and wait:
            step = asyncio.ensure_future(self._arrive(spec, ticket, weight))
        else:
            params = {
                **self._limit_params(spec),
                "tickets": [ticket],
                "weights": [weight],
                "wait": wait,
                "channel": self.limiter_channel,
            }
            step = asyncio.ensure_future(
                self._limit_step(spec, "limiter_acquire", params, newcomer)
            )
        # On its way until it ends, even if the waiter is cancelled: a cancel must not
        # overtake it (the step would put the ticket back in line).
        self._acquiring[ticket] = step
        step.add_done_callback(functools.partial(self._step_ended, self._acquiring, ticket))
        if watch is None or not self._listening.is_set():
            return _turn_of(await asyncio.shield(step))
        turn, running = await _step_or_grant(watch, step, spec.lease)
        if running:
            assert turn.token is not None
            self._late[turn.token] = step
            step.add_done_callback(functools.partial(self._step_ended, self._late, turn.token))
        return turn

    async def _arrive(self, spec: LimitSpec, ticket: str, weight: int) -> Row:
        """A newcomer's step. Newcomers of the key that arrive while it waits for its
        turn join it (up to CROWD): the schema's limiter_acquire places them one after
        the other, as if each had its own step."""
        where = (spec.name, spec.key)
        crowd = self._crowds.get(where)
        if crowd is not None and crowd.spec == spec and len(crowd.tickets) < CROWD:
            crowd.tickets.append(ticket)
            crowd.weights.append(weight)
            crowd.rows.append(asyncio.get_running_loop().create_future())
            return await crowd.rows[-1]
        crowd = self._crowds[where] = _Crowd(spec, [ticket], [weight])
        try:
            rows = await self._send_crowd(where, crowd)
        except BaseException as exc:
            for row in crowd.rows:
                if isinstance(exc, asyncio.CancelledError):
                    row.cancel()
                else:
                    row.set_exception(exc)
            raise
        for row, got in zip(crowd.rows, rows[1:], strict=True):
            row.set_result(got)
        return rows[0]

    async def _send_crowd(self, where: tuple[str, str], crowd: _Crowd) -> list[Row]:
        """Place a crowd of newcomers in its key's turn: one row per ticket, in order."""
        try:
            async with self._turns.turn(*where, newcomer=True):
                if self._crowds.get(where) is crowd:
                    del self._crowds[where]  # complete: later newcomers form another
                params = {
                    **self._limit_params(crowd.spec),
                    "tickets": crowd.tickets,
                    "weights": crowd.weights,
                    "wait": True,
                    "channel": self.limiter_channel,
                }
                rows = await self._rows("limiter_acquire", params)
        finally:
            if self._crowds.get(where) is crowd:
                del self._crowds[where]
        if len(rows) != len(crowd.tickets):
            raise RuntimeError(
                f"limiter_acquire returned {len(rows)} rows for {len(crowd.tickets)} tickets "
                "(one per ticket expected): is the schema's migration 0002 intact?"
            )
        return rows

    def _step_ended(self, steps: dict[Any, asyncio.Future[Row]], at: Any, step: Any) -> None:
        """Forget a step that ended; a late one's tickets to wake were announced (or,
        while not listening, are woken here)."""
        if steps.get(at) is step:
            del steps[at]
        if step.cancelled() or step.exception() is not None:
            return  # (its waiter, if still there, got the error)
        if steps is self._late and not self._listening.is_set():
            _wake(_watches(self._target), _turn_of(step.result()).woken)

    async def _after_steps(self, steps: Sequence[asyncio.Future[Row] | None]) -> None:
        """Wait for acquire steps still on their way (their outcome is their waiter's)."""
        running = [step for step in steps if step is not None]
        if running:
            await asyncio.wait(running)

    async def limiter_renew(self, spec: LimitSpec, tokens: Sequence[int]) -> list[bool]:
        """Extend the grants still alive (nothing to send for no tokens)."""
        if not tokens:
            return []
        await self._after_steps([self._late.get(t) for t in tokens])
        params = {"name": spec.name, "key": spec.key, "lease": spec.lease, "tokens": list(tokens)}
        return [bool(kept) for kept in (await self._limit_step(spec, "limiter_renew", params))[0]]

    async def limiter_release(self, spec: LimitSpec, token: int) -> tuple[bool, tuple[str, ...]]:
        """End a live grant (fenced by its token), settle, wake."""
        await self._after_steps([self._late.get(token)])
        params = {**self._limit_params(spec), "token": token}
        done, woken = await self._limit_step(spec, "limiter_release", params)
        return bool(done), tuple(woken)

    async def limiter_cancel(self, spec: LimitSpec, ticket: str) -> tuple[str, ...]:
        """Leave the line, or give back a grant that came meanwhile; settle, wake.

        Tickets of the key that give up while this one waits for its turn go in the
        same step (hand-offs within a process give up a ticket each, and one step each
        would hold up the key's releases)."""
        await self._after_steps([self._acquiring.get(ticket)])
        where = (spec.name, spec.key)
        leaving = self._leaving.get(where)
        if leaving is not None and leaving.spec == spec and len(leaving.tickets) < CROWD:
            leaving.tickets.append(_ticket(ticket))
        else:
            leaving = self._leaving[where] = _Leaving(spec, [_ticket(ticket)])
            # Its own task: a give-up that was cancelled still takes the others along.
            leaving.woken = asyncio.ensure_future(self._send_leaving(where, leaving))
        assert leaving.woken is not None
        return await asyncio.shield(leaving.woken)

    async def _send_leaving(self, where: tuple[str, str], leaving: _Leaving) -> tuple[str, ...]:
        try:
            async with self._turns.turn(*where, newcomer=False):
                if self._leaving.get(where) is leaving:
                    del self._leaving[where]  # complete: later ones form another
                params = {**self._limit_params(leaving.spec), "tickets": leaving.tickets}
                return tuple((await self._rows("limiter_cancel", params))[0][0])
        finally:
            if self._leaving.get(where) is leaving:
                del self._leaving[where]

    async def limiter_stats(self, spec: LimitSpec) -> LimitStats:
        """Counts after dropping what ended (no promotion)."""
        rate, per = spec.rate if spec.rate is not None else (None, None)
        params = {"name": spec.name, "key": spec.key, "rate": rate, "per": per}
        holders, held, waiters, recent = await self._limit_step(spec, "limiter_stats", params)
        return LimitStats(
            int(holders), int(held), int(waiters), None if recent is None else int(recent)
        )

    def limiter_watch(self, ticket: str) -> asyncio.Event:
        """The ticket's event, set by the wake-ups any listener of this process hears."""
        watched = _watches(self._target, keep=True)
        watch = watched.get(ticket)
        if watch is None:
            watch = watched[ticket] = Watch()
        return watch.woken

    def limiter_unwatch(self, ticket: str) -> None:
        """Forget the ticket (and a turn heard for it)."""
        where = (id(asyncio.get_running_loop()), self._target)
        watched = _WATCHED.get(where)
        if watched is not None:
            watched.pop(ticket, None)
            if not watched:
                del _WATCHED[where]

    def limiter_woken(self, spec: LimitSpec, tickets: Sequence[str]) -> None:
        """The step notified ``tickets`` on their processes' channels, this one's too:
        while listening, that wakes them here, in the order of the grants (replies of
        steps on several connections come back in any order). Otherwise they wake now."""
        if not self._listening.is_set():
            _wake(_watches(self._target), tickets)


def _ticket(ticket: str) -> str:
    """A limiter ticket: wake-ups list tickets separated by spaces, so none may hold one."""
    if not isinstance(ticket, str) or not _TICKET.fullmatch(ticket):
        raise ValueError(
            f"limiter ticket {ticket!r} is invalid: use 1-{_TICKET_CHARS} characters without "
            "whitespace or NUL (wake-ups list tickets separated by spaces)"
        )
    return ticket
