"""The Limiter's steps on one key's state, in plain Python.

The reference for every backend: memory:// and sqlite:// run these functions
(SQLite inside one ``BEGIN IMMEDIATE`` transaction), PostgreSQL and Redis
mirror them server-side (a plpgsql function, a Lua script). See the protocol
in ``backends/base.py`` for what each step promises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hydrapool.backends.base import LimitSpec, LimitStats, LimitTurn


@dataclass(slots=True)
class Holder:
    ticket: str
    token: int
    weight: int
    expires_at: float


@dataclass(slots=True)
class Waiter:
    ticket: str
    weight: int
    expires_at: float


@dataclass(slots=True)
class KeyState:
    """One limiter key: its holders, its line (first come first), its rate log."""

    holders: list[Holder] = field(default_factory=list)
    line: list[Waiter] = field(default_factory=list)
    log: list[tuple[float, int]] = field(default_factory=list)  # (granted at, weight), oldest first
    fence: int = 0  # the last token handed out


def _first(state: KeyState) -> str | None:
    return state.line[0].ticket if state.line else None


def _fits(state: KeyState, spec: LimitSpec, weight: int) -> bool:
    if spec.limit is not None and sum(h.weight for h in state.holders) + weight > spec.limit:
        return False
    return spec.rate is None or sum(w for _, w in state.log) + weight <= spec.rate[0]


def _promote(state: KeyState, spec: LimitSpec, now: float) -> list[str]:
    promoted = []
    while state.line and _fits(state, spec, state.line[0].weight):
        waiter = state.line.pop(0)
        state.fence += 1
        state.holders.append(Holder(waiter.ticket, state.fence, waiter.weight, now + spec.lease))
        if spec.rate is not None:
            state.log.append((now, waiter.weight))
        promoted.append(waiter.ticket)
    return promoted


def _drop_ended(state: KeyState, spec: LimitSpec, now: float) -> None:
    state.holders = [h for h in state.holders if h.expires_at > now]
    state.line = [w for w in state.line if w.expires_at > now]
    if spec.rate is None:
        state.log.clear()
    else:
        horizon = now - spec.rate[1]
        state.log = [(at, w) for at, w in state.log if at > horizon]


def settle(state: KeyState, spec: LimitSpec, now: float, first: str | None) -> list[str]:
    """Drop what ended, promote from the front; the tickets to wake (``first``: the
    first waiter when the step began)."""
    _drop_ended(state, spec, now)
    woken = _promote(state, spec, now)
    head = _first(state)
    if head is not None and head != first:
        woken.append(head)
    return woken


def _rate_wait(state: KeyState, spec: LimitSpec, weight: int, now: float) -> float | None:
    """Seconds until ``weight`` more fits the rate window (None: the limit holds it back)."""
    if spec.limit is not None and sum(h.weight for h in state.holders) + weight > spec.limit:
        return None
    if spec.rate is None:
        return 0.0
    excess = sum(w for _, w in state.log) + weight - spec.rate[0]
    if excess <= 0:
        return 0.0
    for at, w in state.log:  # the oldest grants leave the window first
        excess -= w
        if excess <= 0:
            return max(0.0, at + spec.rate[1] - now)
    return 0.0  # not reached: a weight never exceeds the rate


def acquire(
    state: KeyState, spec: LimitSpec, ticket: str, weight: int, wait: bool, now: float
) -> LimitTurn:
    first = _first(state)
    woken = settle(state, spec, now, first)
    if not any(h.ticket == ticket for h in state.holders):
        place = next((w for w in state.line if w.ticket == ticket), None)
        if place is not None:
            place.expires_at = now + spec.lease
        else:
            state.line.append(Waiter(ticket, weight, now + spec.lease))
            woken += _promote(state, spec, now)
            if not wait and state.line and state.line[-1].ticket == ticket:
                state.line.pop()
    woken = [t for t in woken if t != ticket]
    holder = next((h for h in state.holders if h.ticket == ticket), None)
    if holder is not None:
        return LimitTurn(holder.token, holder.expires_at, 0, None, tuple(woken))
    ahead = next((i for i, w in enumerate(state.line) if w.ticket == ticket), len(state.line))
    retry = _rate_wait(state, spec, weight, now) if ahead == 0 else None
    return LimitTurn(None, None, ahead, retry, tuple(woken))


def renew(state: KeyState, spec: LimitSpec, tokens: Sequence[int], now: float) -> list[bool]:
    kept = []
    for token in tokens:
        holder = next((h for h in state.holders if h.token == token), None)
        alive = holder is not None and holder.expires_at > now
        if holder is not None and alive:
            holder.expires_at = now + spec.lease
        kept.append(alive)
    return kept


def release(state: KeyState, spec: LimitSpec, token: int, now: float) -> tuple[bool, list[str]]:
    first = _first(state)
    holder = next((h for h in state.holders if h.token == token), None)
    done = holder is not None and holder.expires_at > now
    if holder is not None:
        state.holders.remove(holder)
    return done, settle(state, spec, now, first)


def cancel(state: KeyState, spec: LimitSpec, ticket: str, now: float) -> list[str]:
    first = _first(state)
    state.line = [w for w in state.line if w.ticket != ticket]
    state.holders = [h for h in state.holders if h.ticket != ticket]
    return [t for t in settle(state, spec, now, first) if t != ticket]


def stats(state: KeyState, spec: LimitSpec, now: float) -> LimitStats:
    _drop_ended(state, spec, now)
    recent = sum(w for _, w in state.log) if spec.rate is not None else None
    held = sum(h.weight for h in state.holders)
    return LimitStats(len(state.holders), held, len(state.line), recent)
