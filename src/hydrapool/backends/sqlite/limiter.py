"""The Limiter on SQLite: the reference steps of ``backends/_limits.py`` on stored rows.

A step loads what it needs of one key into a ``KeyState`` (one statement: the
fence, the holders, the rate log, the front of the line and the step's own
place), runs the ``_limits`` step with the time read after the write lock was
taken, and writes back only the rows the step changed. Only the front of the
line is loaded (``front_size``): a line of thousands costs a step no more than
a short one.

Steps run in batches (``Steps``): one ``BEGIN IMMEDIATE`` transaction and one
thread hop for the steps of a backend that piled up meanwhile, releases first.
A woken waiter's step that would change nothing is tried read-only, outside the
write lock, or skipped: a step that promotes a ticket hands its turn to it
(``Watchers.offer``).

Wake-ups: a step's own process wakes the tickets it returns directly
(``limiter_woken``, which also reaches the other backends of the process on the
same file). Other processes cannot be pushed to: while a backend watches
tickets, a checker thread checks ``PRAGMA data_version`` (it changes when
another connection commits; checking it reads no table) every ``CHECK_EVERY``
seconds (``CHECK_QUIET`` when nobody committed for a while), and on a change
reads each watched key's holders and first waiter and wakes only the watched
tickets that *became* holders or first in line since this process last knew:
not every watcher, and not the same one again at each commit. A ticket found
promoted gets its turn with the wake-up, read by the checker, so it needs no
step of its own either.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, cast

from hydrapool.backends import _limits
from hydrapool.backends._limits import Holder, KeyState, Waiter
from hydrapool.backends._sql import load_queries
from hydrapool.backends.base import LimitSpec, LimitStats, LimitTurn

T = TypeVar("T")
Q = load_queries(__package__ or "hydrapool.backends.sqlite", "limiter.sql")
Status = Literal["holder", "first", "behind"]
Where = tuple[str, str]  # (limiter name, key)
Run = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

logger = logging.getLogger("hydrapool.sqlite")
# Seconds between two checks for other processes' commits: CHECK_EVERY, or CHECK_QUIET
# once nobody committed for QUIET_AFTER seconds (a check costs some 40 µs of CPU with
# its thread wake-up: 2 % of a core at 2 ms, for a process that waits long).
CHECK_EVERY, CHECK_QUIET, QUIET_AFTER = 0.002, 0.01, 0.2


# ── one step ────────────────────────────────────────────────────────────────
@dataclass(slots=True)
class Loaded:
    """A key as its rows held it when the step began (``state`` is what the step then
    changes in place): the rest says what to compare against when writing back.

    ``state.line`` holds the front of the line only (see ``load``): ``whole`` says
    whether that is every live waiter, ``front`` which tickets it took from the front
    (the ticket of the step may follow them) and ``front_end`` the last one's seq.
    """

    state: KeyState = field(default_factory=KeyState)
    fence: int = 0
    holders: dict[int, float] = field(default_factory=dict)  # token -> expires_at
    line: dict[str, tuple[int, float]] = field(default_factory=dict)  # ticket -> (seq, expires)
    log: dict[float, int] = field(default_factory=dict)  # granted_at -> weight
    last_seq: int = 0  # the key's highest seq: a newcomer gets the next one
    front: set[str] = field(default_factory=set)
    front_end: int = 0
    whole: bool = True


def front_size(spec: LimitSpec, now: float) -> dict[str, Any]:
    """The parameters that size the front of the line a step loads (see ``load``).

    A step promotes at most ``limit`` waiters (each weighs at least 1 and all must fit
    under the limit), and at most the room left in the rate window (releases and
    cancels give no rate room back: the window frees with time only, and the step's
    settle sees it at the same ``now``); besides, a cancel may take its own ticket out
    of the front. Two waiters more than those loaded, and the first waiter after the
    step is always in the loaded front: promotion stops inside it, the new first in
    line (woken when the front changes) is known, and the waiters behind cannot take
    part in the step, so a line of thousands costs a step no more than a short one.
    ``front``: ``limit + 2`` (-1: no limit); the statement takes the smaller of it and
    the rate's room + 2, computed from the log in the same snapshot."""
    return {
        "front": -1 if spec.limit is None else spec.limit + 2,
        "rate_n": spec.rate[0] if spec.rate else None,
        "horizon": now - spec.rate[1] if spec.rate else None,
    }


def load(conn: sqlite3.Connection, spec: LimitSpec, now: float, ticket: str | None) -> Loaded:
    """Read what a step on the key needs (one statement: one consistent snapshot): the
    fence, every holder, the rate log, the live waiters at the front of the line
    (``front_size``), and ``ticket``'s own place if it is further back.

    Waiters whose place lapsed are left out (and deleted by the next write step): for
    ``_limits`` they are as good as dropped by its settle."""
    params = {"name": spec.name, "key": spec.key, "now": now, "ticket": ticket}
    loaded, size = Loaded(), -1
    for part, n, text, weight, at in conn.execute(
        Q["limiter_load"], {**params, **front_size(spec, now)}
    ):
        if part == 0:
            loaded.state.fence = loaded.fence = n
            loaded.last_seq, size = weight, int(at)
        elif part == 1:
            loaded.state.holders.append(Holder(text, n, weight, at))
            loaded.holders[n] = at
        elif part in (2, 3):
            _load_waiter(loaded, part == 2, n, Waiter(text, weight, at))
        else:
            loaded.state.log.append((at, weight))
            loaded.log[at] = weight
    loaded.whole = size < 0 or len(loaded.front) < size
    return loaded


def _load_waiter(loaded: Loaded, front: bool, seq: int, waiter: Waiter) -> None:
    if waiter.ticket in loaded.line:  # the step's ticket, already in the front
        return
    loaded.state.line.append(waiter)
    loaded.line[waiter.ticket] = (seq, waiter.expires_at)
    if front:
        loaded.front.add(waiter.ticket)
        loaded.front_end = seq


def behind_front(conn: sqlite3.Connection, spec: LimitSpec, loaded: Loaded, ticket: str) -> int:
    """How many waiters stand between the loaded front and ``ticket`` (left out of the
    step's state, so missing from the position ``_limits`` computed). Exact in a write
    step (lapsed places deleted first); a read-only step's result is kept only when it
    changed nothing, which a waiting ticket's step never does (it renews the place)."""
    if loaded.whole or ticket in loaded.front:
        return 0
    seq = loaded.line.get(ticket, (loaded.last_seq + 1, 0.0))[0]  # a newcomer: the next seq
    params = {"name": spec.name, "key": spec.key, "after": loaded.front_end, "before": seq}
    return int(conn.execute(Q["limiter_between"], params).fetchone()[0])


def writes(spec: LimitSpec, was: Loaded) -> list[tuple[str, list[dict[str, Any]]]]:
    """The statements (by name, with their rows) that store what the step changed in
    ``was.state``; none for a step that changed nothing."""
    where = {"name": spec.name, "key": spec.key}
    out: list[tuple[str, list[dict[str, Any]]]] = []
    if was.state.fence != was.fence:
        out.append(("limiter_fence_set", [{**where, "fence": was.state.fence}]))
    out += _holder_writes(where, was)
    out += _line_writes(where, was)
    out += _log_writes(where, was)
    return [(name, rows) for name, rows in out if rows]


def _holder_writes(where: dict[str, str], was: Loaded) -> list[tuple[str, list[dict[str, Any]]]]:
    now = {h.token: h for h in was.state.holders}
    gone = [{**where, "token": t} for t in was.holders if t not in now]
    new, renewed = [], []
    for h in now.values():
        row = {**where, "token": h.token, "expires_at": h.expires_at}
        if h.token not in was.holders:
            new.append({**row, "ticket": h.ticket, "weight": h.weight})
        elif was.holders[h.token] != h.expires_at:
            renewed.append(row)
    return [
        ("limiter_holder_delete", gone),
        ("limiter_holder_insert", new),
        ("limiter_holder_renew", renewed),
    ]


def _line_writes(where: dict[str, str], was: Loaded) -> list[tuple[str, list[dict[str, Any]]]]:
    """The line only loses waiters and gains them at the back (``_limits`` never
    reorders it), so a newcomer's seq is one more than the last one's."""
    now = {w.ticket: w for w in was.state.line}
    gone = [{**where, "seq": seq} for t, (seq, _) in was.line.items() if t not in now]
    new, renewed, seq = [], [], was.last_seq
    for w in now.values():
        if w.ticket not in was.line:
            seq += 1
            row = {"seq": seq, "ticket": w.ticket, "weight": w.weight}
            new.append({**where, **row, "expires_at": w.expires_at})
        elif was.line[w.ticket][1] != w.expires_at:
            renewed.append({**where, "seq": was.line[w.ticket][0], "expires_at": w.expires_at})
    return [
        ("limiter_waiter_delete", gone),
        ("limiter_waiter_insert", new),
        ("limiter_waiter_renew", renewed),
    ]


def _log_writes(where: dict[str, str], was: Loaded) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows are per instant: grants at the same instant add up (the window counts
    sums and drops by instant, so that changes nothing for ``_limits``)."""
    now: dict[float, int] = {}
    for at, weight in was.state.log:
        now[at] = now.get(at, 0) + weight
    gone = [{**where, "granted_at": at} for at in was.log if at not in now]
    changed = [
        {**where, "granted_at": at, "weight": weight}
        for at, weight in now.items()
        if was.log.get(at) != weight
    ]
    return [("limiter_log_delete", gone), ("limiter_log_set", changed)]


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[float]:
    """A write transaction; yields the time read after the write lock was taken (as the
    backend's ``_write``, with a finer wait for the lock, see ``_begin``)."""
    _begin(conn)
    try:
        yield time.time()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _begin(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, retried every 50 µs growing to 1 ms while another process
    writes, for as long as the connection's busy timeout.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ms... between tries: a step that
    meets another process's step (a tenth of a millisecond) would wait a millisecond
    or more, and a hand-off with it; limiter steps are short and frequent, so here
    that is most of the waiting."""
    timeout = int(conn.execute("PRAGMA busy_timeout").fetchone()[0]) / 1000
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline, pause = time.monotonic() + timeout, 50e-6
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")


Fn = Callable[[sqlite3.Connection, Loaded, float], Any]  # a _limits step on loaded.state


@dataclass(slots=True)
class Pending:
    """A step waiting for the next write transaction of its backend."""

    spec: LimitSpec
    fn: Fn
    ticket: str | None
    future: asyncio.Future[Any]


def read_step(
    conn: sqlite3.Connection, spec: LimitSpec, fn: Fn, ticket: str | None
) -> tuple[bool, Any]:
    """Try a step on a read-only snapshot (WAL readers take no lock): (True, result) when
    it changed nothing, as that result then is the step's at that snapshot; (False,
    None) when it must run in a write transaction after all."""
    now = time.time()
    loaded = load(conn, spec, now, ticket)
    result = fn(conn, loaded, now)
    return (True, result) if not writes(spec, loaded) else (False, None)


def write_steps(
    conn: sqlite3.Connection, steps: Sequence[Pending]
) -> tuple[list[Any], dict[str, LimitTurn]]:
    """Run ``steps`` one after the other in one write transaction (one lock, one commit
    for all); each loads what the ones before it wrote. Their results, in order, and
    the turns of the tickets they promoted (as those tickets' next step would find them:
    the key is settled at this instant)."""
    results: list[Any] = []
    granted: dict[str, tuple[Where, LimitTurn]] = {}
    with _write(conn) as now:
        swept: set[Where] = set()
        for step in steps:
            key = (step.spec.name, step.spec.key)
            if key not in swept:  # lapsed places, once per key
                params = {"name": key[0], "key": key[1], "now": now}
                conn.execute(Q["limiter_waiters_drop_ended"], params)
                swept.add(key)
            loaded = load(conn, step.spec, now, step.ticket)
            results.append(step.fn(conn, loaded, now))
            _note_grants(granted, key, loaded)
            for name, rows in writes(step.spec, loaded):
                conn.executemany(Q[name], rows)
    return results, {ticket: turn for ticket, (_, turn) in granted.items()}


def _note_grants(granted: dict[str, tuple[Where, LimitTurn]], key: Where, loaded: Loaded) -> None:
    """Add the grants the step made; drop those of the key it ended (a cancel later in
    the batch)."""
    holding = {h.ticket for h in loaded.state.holders}
    for ticket in [t for t, (k, _) in granted.items() if k == key and t not in holding]:
        del granted[ticket]
    for h in loaded.state.holders:
        if h.token > loaded.fence:
            granted[h.ticket] = (key, LimitTurn(h.token, h.expires_at, 0, None))


def acquire(
    conn: sqlite3.Connection,
    loaded: Loaded,
    now: float,
    spec: LimitSpec,
    ticket: str,
    weight: int,
    wait: bool,
) -> LimitTurn:
    """``_limits.acquire``, counting the waiters behind the loaded front into ``ahead``."""
    turn = _limits.acquire(loaded.state, spec, ticket, weight, wait, now)
    if turn.token is not None:
        return turn
    return replace(turn, ahead=turn.ahead + behind_front(conn, spec, loaded, ticket))


def stats(conn: sqlite3.Connection, spec: LimitSpec) -> LimitStats:
    """``_limits.stats`` with every live waiter counted, in one read transaction."""
    conn.execute("BEGIN")
    try:
        now = time.time()
        found = _limits.stats(load(conn, spec, now, None).state, spec, now)
        params = {"name": spec.name, "key": spec.key, "now": now}
        waiters = int(conn.execute(Q["limiter_waiting"], params).fetchone()[0])
    finally:
        conn.execute("COMMIT")
    return replace(found, waiters=waiters)


# ── wake-ups ────────────────────────────────────────────────────────────────
@dataclass(slots=True)
class _Watch:
    event: asyncio.Event
    where: Where | None = None  # known from the ticket's first acquire step
    status: Status = "behind"  # as this process last knew it
    woken: bool = False  # since its last step: it may hold a grant now
    spec: LimitSpec | None = None
    weight: int = 1
    ready: LimitTurn | None = None  # its grant, found by another step: no step needed


@dataclass(eq=False, slots=True)
class Family:
    """The backends of this process on one database file and one event loop (several
    Limiter objects, or a Limiter beside a Queue). A step's wake-ups reach them all at
    once, without a poll; and when there are several, their steps take turns in the
    order they were asked for (``lock``): otherwise their threads race, so waiters
    granted together would learn it in any order, and each collision on SQLite's write
    lock would cost a busy wait of a millisecond or more."""

    members: weakref.WeakSet[Watchers] = field(default_factory=weakref.WeakSet)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_FAMILIES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Family]] = (
    weakref.WeakKeyDictionary()
)


def fronts(
    conn: sqlite3.Connection, seen: int | None, keys: frozenset[Where]
) -> tuple[int, dict[Where, tuple[set[str], str | None]] | None]:
    """``PRAGMA data_version`` and, when it moved from ``seen`` (another connection
    committed) or ``seen`` is None, each key's holders' tickets and first waiter."""
    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
    if version == seen:
        return version, None
    out: dict[Where, tuple[set[str], str | None]] = {}
    for name, key in keys:
        holders, first = set(), None
        params = {"name": name, "key": key, "now": time.time()}
        for part, ticket in conn.execute(Q["limiter_front"], params):
            if part == 1:
                holders.add(ticket)
            else:
                first = ticket
        out[(name, key)] = (holders, first)
    return version, out


class Watchers:
    """This backend's watched tickets, and the checker that wakes them when another
    process's commit made them holders or first in line.

    The checker is a thread with a read-only connection of its own: checking
    ``PRAGMA data_version`` there every ``CHECK_EVERY`` seconds never wakes the event
    loop, which hears only of tickets to wake. (Its
    connection also counts this process's own commits as changes: a wasted look,
    each a single indexed read per watched key.) It idles, blocked, while nothing
    is watched."""

    def __init__(self, path: str) -> None:
        # A ":memory:" database is the connection's own: no family, nobody else commits.
        self._file = None if path == ":memory:" else os.path.realpath(path)
        self._watched: dict[str, _Watch] = {}
        self._keys: dict[Where, int] = {}  # the keys of the watched tickets, how many each
        self._key_set: frozenset[Where] = frozenset()  # the same, for the checker thread
        self._family: Family | None = None
        self._family_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checker: threading.Thread | None = None
        self._active = threading.Event()  # set while tickets are watched (or to stop)
        self._stopping = threading.Event()

    def family(self) -> Family | None:
        """This backend's family on the running loop (joined on first use); None for
        a ``:memory:`` database."""
        loop = asyncio.get_running_loop()
        if self._file is None:
            return None
        if self._family is None or self._family_loop is not loop:
            self._leave()
            self._family = _FAMILIES.setdefault(loop, {}).setdefault(self._file, Family())
            self._family.members.add(self)
            self._family_loop = loop
        return self._family

    def _leave(self) -> None:
        if self._family is not None:
            self._family.members.discard(self)
        self._family = self._family_loop = None

    def watch(self, ticket: str) -> asyncio.Event:
        """The ticket's event; starts the checker if it is not running."""
        watch = self._watched.get(ticket)
        if watch is None:
            watch = self._watched[ticket] = _Watch(asyncio.Event())
        if self._file is not None:
            self.family()
            self._loop = asyncio.get_running_loop()
            if self._checker is None or not self._checker.is_alive():
                self._stopping.clear()
                self._checker = threading.Thread(
                    target=self._check_loop, name="hydrapool-sqlite-limiter", daemon=True
                )
                self._checker.start()
            self._active.set()
        return watch.event

    def unwatch(self, ticket: str) -> None:
        """Forget the ticket (the checker idles once nothing is watched)."""
        watch = self._watched.pop(ticket, None)
        if watch is not None and watch.where is not None:
            left = self._keys[watch.where] - 1
            if left:
                self._keys[watch.where] = left
            else:
                del self._keys[watch.where]
                self._key_set = frozenset(self._keys)

    def wake(self, tickets: Iterable[str]) -> None:
        """Set the events of those of ``tickets`` watched by this backend's family
        (other loops and processes: their checkers see the commit)."""
        family = self.family()
        members = [self] if family is None else list(family.members)
        for ticket in tickets:  # in their order: waiters granted together resume in line order
            for watchers in members:
                watch = watchers._watched.get(ticket)
                if watch is not None:
                    watch.woken = True
                    watch.event.set()

    def joining(self, ticket: str, spec: LimitSpec, weight: int) -> tuple[bool, LimitTurn | None]:
        """Before a ticket's acquire step: the checker must look at its key from now on
        (set before the step, so no commit after the step goes unchecked).

        Returns whether the ticket was woken since its last step (it likely holds a
        grant, so the step is worth trying read-only first), and its grant if another
        step found it already (then no step is needed: see ``offer``)."""
        watch = self._watched.get(ticket)
        if watch is None:
            return False, None
        if watch.where is None:  # a ticket's key never changes (its spec is fixed)
            watch.where, watch.spec, watch.weight = (spec.name, spec.key), spec, weight
            self._keys[watch.where] = self._keys.get(watch.where, 0) + 1
            if self._keys[watch.where] == 1:
                self._key_set = frozenset(self._keys)
        woken, watch.woken = watch.woken, False
        ready, watch.ready = watch.ready, None
        if ready is not None and ready.expires_at is not None and ready.expires_at > time.time():
            return woken, ready
        return woken, None

    def offer(self, granted: dict[str, LimitTurn]) -> None:
        """Grants a step of this process just made: a watched ticket among them finds
        its turn here, without a step of its own (the key was settled when the grant was
        made, so that step would have changed nothing: its result is this turn)."""
        if not granted:
            return
        family = self.family()
        for watchers in [self] if family is None else list(family.members):
            for ticket, turn in granted.items():
                watch = watchers._watched.get(ticket)
                if watch is not None:
                    watch.ready = turn

    def saw(self, ticket: str, turn: LimitTurn) -> None:
        """After a ticket's acquire step: where it stands (the checker wakes it only when
        that changes for the better)."""
        watch = self._watched.get(ticket)
        if watch is not None:
            status: Status = "first" if turn.ahead == 0 else "behind"
            watch.status = "holder" if turn.token is not None else status

    def stop(self) -> None:
        """Stop the checker and leave the family (the backend closes)."""
        self._leave()
        checker, self._checker = self._checker, None
        if checker is not None:
            self._stopping.set()
            self._active.set()
            checker.join()

    # ── the checker thread ────────────────────────────────────────────────
    def _check_loop(self) -> None:
        assert self._file is not None
        try:
            conn = sqlite3.connect(self._file)
        except sqlite3.Error:
            logger.warning(
                "limiter wake-ups: cannot open %r; waiters re-check on their own timers",
                self._file,
                exc_info=True,
            )
            return
        try:
            conn.execute("PRAGMA query_only = ON")
            seen: int | None = None
            changed = time.monotonic()
            while not self._stopping.is_set():
                if not self._watched:
                    self._active.clear()
                    if not self._watched:  # (a watch between the two tests set it again)
                        self._active.wait()
                        seen = None  # new tickets: look once, whatever the version says
                    continue
                version = self._check(conn, seen)
                if version != seen:
                    seen, changed = version, time.monotonic()
                quiet = time.monotonic() - changed > QUIET_AFTER
                self._stopping.wait(CHECK_QUIET if quiet else CHECK_EVERY)
        finally:
            conn.close()

    def _check(self, conn: sqlite3.Connection, seen: int | None) -> int | None:
        """One check: a look when the version moved (or ``seen`` is None); the tickets
        that moved up go to the loop. Returns the version seen."""
        try:
            version, found = fronts(conn, seen, self._key_set)
            moved = self._moved(found or {})
            turns = {t: turn for t in moved if (turn := self._pick_up(conn, t)) is not None}
        except sqlite3.Error:  # the waiters still re-check on their own timers
            logger.warning("checking for limiter wake-ups failed; retrying", exc_info=True)
            return seen
        if moved and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake_moved, moved, turns)
            except RuntimeError:  # the loop closed under us (no close() was awaited)
                pass
        return version

    def _moved(self, found: dict[Where, tuple[set[str], str | None]]) -> dict[str, Status]:
        """The watched tickets that moved up: now holders, or now first in line."""
        moved: dict[str, Status] = {}
        for where, (holders, first) in found.items():
            now: list[tuple[str, Status]] = [(t, "holder") for t in holders]
            if first is not None:
                now.append((first, "first"))
            for ticket, status in now:
                watch = self._watched.get(ticket)
                if watch is not None and watch.where == where and watch.status != status:
                    moved[ticket] = status
        return moved

    def _pick_up(self, conn: sqlite3.Connection, ticket: str) -> LimitTurn | None:
        """A promoted ticket's acquire step, read-only on the checker's connection: its
        turn when that step changes nothing (the ticket then needs no step of its own)."""
        watch = self._watched.get(ticket)
        spec = watch.spec if watch is not None else None
        if watch is None or spec is None:
            return None
        weight = watch.weight

        def step(c: sqlite3.Connection, loaded: Loaded, now: float) -> LimitTurn:
            return acquire(c, loaded, now, spec, ticket, weight, True)

        done, turn = read_step(conn, spec, step, ticket)
        return turn if done and turn.token is not None else None

    def _wake_moved(self, moved: dict[str, Status], turns: dict[str, LimitTurn]) -> None:
        for ticket, status in moved.items():
            watch = self._watched.get(ticket)
            if watch is not None and watch.status != status:
                watch.status = status
                watch.ready = turns.get(ticket, watch.ready)
                watch.woken = True
                watch.event.set()


# ── running the steps ───────────────────────────────────────────────────────
MAX_BATCH = 32  # steps per write transaction: bounds how long one holds the lock


class Steps:
    """A backend's limiter steps: each tried read-only first when asked, else queued,
    and the queue run in write transactions of up to ``MAX_BATCH`` steps.

    One transaction for the steps that piled up while the previous one ran: hundreds
    of tasks joining a line at once cost a few transactions, not hundreds of thread
    hops and lock waits. Steps that free places (releases, cancels, renewals) go
    before queued acquires: a release must not wait behind a crowd joining the line.
    (Reordering them is safe: a ticket's own steps never wait in the queue together,
    its owner awaits each; a cancelled acquire still queued is dropped.)"""

    def __init__(self, run: Run, watchers: Watchers) -> None:
        self._run = run
        self._watchers = watchers
        self._urgent: list[Pending] = []
        self._pending: list[Pending] = []
        self._runner: asyncio.Task[None] | None = None

    async def step(
        self,
        spec: LimitSpec,
        fn: Callable[[sqlite3.Connection, Loaded, float], T],
        ticket: str | None = None,
        *,
        read_first: bool = False,
        urgent: bool = False,
    ) -> T:
        """Run ``fn(conn, loaded, now)`` on the key; ``ticket``: the step's own ticket
        (its place is loaded even far back in the line); ``read_first``: try it
        read-only first (see ``read_step``); ``urgent``: it frees places (see above)."""
        if read_first and not self._pending and not self._urgent:
            done, result = await self._hop(lambda conn: read_step(conn, spec, fn, ticket))
            if done:
                return cast(T, result)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._pending).append(Pending(spec, fn, ticket, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _hop(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        family = self._watchers.family()
        if family is None or len(family.members) < 2:
            return cast(T, await self._run(fn))
        async with family.lock:  # see Family
            return cast(T, await self._run(fn))

    def _next_batch(self) -> list[Pending]:
        batch = self._urgent[:MAX_BATCH]
        del self._urgent[:MAX_BATCH]
        room = MAX_BATCH - len(batch)
        batch += self._pending[:room]
        del self._pending[:room]
        return [p for p in batch if not p.future.cancelled()]

    async def _drain(self) -> None:
        while self._urgent or self._pending:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                results, granted = await self._hop(functools.partial(write_steps, steps=batch))
            except asyncio.CancelledError:
                left = batch + self._urgent + self._pending
                self._urgent, self._pending = [], []
                _fail(left, RuntimeError("the SQLite backend closed while a limiter step waited"))
                raise
            except Exception as exc:  # the transaction rolled back: none of them ran
                _fail(batch, exc)
                continue
            self._watchers.offer(granted)
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    async def stop(self) -> None:
        """Stop running steps (the backend closes); steps still queued fail."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


def _fail(steps: Iterable[Pending], exc: BaseException) -> None:
    for p in steps:
        if not p.future.done():
            p.future.set_exception(exc)
