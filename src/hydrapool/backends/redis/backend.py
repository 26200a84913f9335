"""redis:// — durable queues in Redis, every transition one Lua script.

``redis://host:6379/0?prefix=myapp`` (or ``rediss://``): each queue's keys
start with the hash tag ``{prefix:queue}``, so a queue lives in one Redis
Cluster slot and several hydrapools share one server under their own
prefixes. Each step (enqueue, claim, finish, cancel, release, rescue, tick)
is one script from this package's ``*.lua`` files, with ``common.lua`` in
front: a step and its events are one atomic write, and no limit is checked
across round trips. Idle workers and event subscribers wake on pub/sub; the
events themselves are kept in a capped stream, so a subscriber that was away
catches up by number. The Limiter's steps (``limiter*.lua``) keep each
limiter under ``{prefix:L/name}`` and push wake-ups the same way. See
docs/redis.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import ResponseError

from hydrapool.backends._deps import parents_of
from hydrapool.backends._wake import ClaimMarks
from hydrapool.backends.base import (
    CancelResult,
    Change,
    ChannelPolicy,
    Claim,
    ClaimParams,
    Emit,
    Finish,
    FinishResult,
    Heartbeat,
    JobRecord,
    LimitSpec,
    LimitStats,
    LimitTurn,
    NewJob,
    PoolSnapshot,
    ScheduleRecord,
    stamp,
)
from hydrapool.backends.redis._connect import Script, connect, next_hub
from hydrapool.exceptions import Closed
from hydrapool.queue.events import Event, EventType, for_inserts

__all__ = ["RedisBackend", "key_base"]

logger = logging.getLogger("hydrapool.redis")
T = TypeVar("T")

DEFAULT_PREFIX = "hydrapool"
DEFAULT_EVENTS_MAX = 100_000
# Scripts and the libraries they start with (after common.lua).
_SCRIPTS: dict[str, tuple[str, ...]] = {
    "enqueue": ("insert", "take", "hand"),
    "claim": ("take",),
    "unidle": (),
    "heartbeat": (),
    "finish": (),
    "cancel": (),
    "release": (),
    "expired": (),
    "delete": (),
    "stats": (),
    "list": (),
    "leader": (),
    "schedule_upsert": (),
    "schedule_delete": (),
    "schedules": (),
    "schedule_fire": ("insert",),
    "event_since": (),
    "event_trim": (),
    "channel_policy": (),
    "queue_limits": (),
}
# The Limiter's steps start with limiter.lua instead of common.lua: they touch no queue.
_LIMITER_SCRIPTS = (
    "limiter_acquire",
    "limiter_arrive",
    "limiter_renew",
    "limiter_release",
    "limiter_cancel",
    "limiter_stats",
)
# Limiter steps on their way at once, per backend: each holds one of the client's
# connections (redis-py's pool refuses the 101st), and a crowd of waiters that start
# together queues here instead, first come first served.
_LIMITER_STEPS = 32
_CROWD = 64  # newcomers of one key placed in one step at most
_DELETE_CHUNK = 500
# Seconds a worker's inbox reader waits in BLMOVE before it looks again: below a socket
# timeout a URL may set (redis-py's default, 5 s, is off here: _connect.py), which would
# otherwise end every idle wait in an error.
_INBOX_WAIT = 2
_STEP_TIMEOUT = 30.0  # seconds one step's script may take, reply included
_SEEN_MAX = 1000  # delivered tags remembered before the reader trims them (see _Inbox)
_LIST_SPAN = 2000


class _Watch:
    """A Limiter ticket this process waits on: its event; the grant a wake-up brought
    (token, lease end, when it was heard: ``time.monotonic()``); ``live``, set while the
    watcher's subscription to the limiter's wake-ups is confirmed; ``heard``, resolved
    when a grant comes while the ticket's step is on its way."""

    __slots__ = ("arrived", "first", "grant", "heard", "live", "woken")

    def __init__(self) -> None:
        self.arrived = False  # its first step was sent
        self.first = False  # a wake-up said it is first in line now
        self.woken = asyncio.Event()
        self.grant: tuple[int, float, float] | None = None
        self.live: asyncio.Event | None = None
        self.heard: asyncio.Future[None] | None = None


class _Inbox:
    """A worker's inbox (hand.lua): its keys, how long its claims register it as idle, its
    reader, and the tags of the hand-offs it delivered: ``to_ack`` until a claim says so,
    ``seen`` until a re-read of B:got no longer holds them (a hand-off is delivered
    once)."""

    __slots__ = ("got", "idle_for", "key", "reader", "seen", "to_ack")

    def __init__(self, key: str, got: str, idle_for: float) -> None:
        self.key, self.got, self.idle_for = key, got, idle_for
        self.reader: asyncio.Task[None] | None = None
        self.seen: set[str] = set()
        self.to_ack: list[str] = []

    def take(self, queue: str, item: str, deliver: Callable[[list[Claim]], None]) -> bool:
        """Deliver the item's jobs unless delivered before; True for the final '~'."""
        if item == "~":
            return True
        try:
            _, tag, body = item.split("\t", 2)
            if tag in self.seen:
                return False
            claims = _claims(queue, body)
        except (ValueError, KeyError, TypeError):  # (not ours to run: leased, it is rescued)
            logger.exception("an inbox item could not be read: %.200r", item)
            return False
        self.seen.add(tag)
        self.to_ack.append(tag)
        try:
            deliver(claims)
        except Exception:  # the reader must go on (the jobs are leased: rescued later)
            logger.exception("delivering handed jobs failed")
        return False

    def catch_up(
        self, queue: str, held: Sequence[str], deliver: Callable[[list[Claim]], None]
    ) -> bool:
        """Deliver what B:got holds and was never delivered; forget the tags it no longer
        holds (a claim acknowledged them, and tags are never reused). True for '~'."""
        still = {item.split("\t", 2)[1] for item in held if item.count("\t") >= 2}
        self.seen &= still
        return any([self.take(queue, item, deliver) for item in held])


class _Crowd:
    """Newcomers of one key whose first steps go as one (limiter_arrive.lua)."""

    __slots__ = ("sent", "spec", "tickets", "turns")

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self.tickets: list[str | int] = []  # ticket, weight, ticket, weight, ...
        self.turns: list[asyncio.Future[list[Any]]] = []  # a result per ticket
        self.sent: asyncio.Future[None] | None = None  # the step


# Limiter tickets watched in this process, by (event loop, server and prefix), shared by
# all its Limiters on that Redis: a wake-up heard by any of them (a message, or a step's
# reply) reaches every waiter here, and so does the grant it carries.
_WATCHED: dict[tuple[int, str], dict[str, _Watch]] = {}


def key_base(prefix: str, queue: str) -> str:
    """The hash-tagged start of every key of ``queue`` under ``prefix``."""
    return "{" + prefix + ":" + queue + "}"


def limiter_base(prefix: str, name: str) -> str:
    """The hash-tagged start of every key of the limiter ``name`` (a queue's name has
    no '/', so no limiter shares a queue's keys)."""
    return "{" + prefix + ":L/" + name + "}"


def _script(name: str) -> str:
    folder = resources.files("hydrapool.backends.redis")
    if name in _LIMITER_SCRIPTS:
        parts: tuple[str, ...] = ("limiter", name)
    else:
        parts = ("common", *_SCRIPTS[name], name)
    return "\n".join(folder.joinpath(f"{part}.lua").read_text("utf-8") for part in parts)


def _fields(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _float(fields: Mapping[str, Any], key: str) -> float | None:
    value = fields.get(key)
    return None if value is None else float(value)


def _record(queue: str, flat: Sequence[str], *, deduplicated: bool = False) -> JobRecord:
    return _job(queue, _fields(flat), deduplicated=deduplicated)


def _job(queue: str, f: Mapping[str, Any], *, deduplicated: bool = False) -> JobRecord:
    return JobRecord(
        id=f["id"],
        queue=queue,
        task=f["task"],
        channel=f["channel"],
        state=f["state"],
        priority=int(f["priority"]),
        attempts=int(f["attempts"]),
        max_attempts=int(f["max_attempts"]),
        payload=f["payload"],
        created_at=float(f["created_at"]),
        run_at=float(f["run_at"]),
        started_at=_float(f, "started_at"),
        finished_at=_float(f, "finished_at"),
        result=f.get("result"),
        error=f.get("error"),
        lease=f.get("lease"),
        lease_expires_at=_float(f, "lease_expires_at"),
        worker=f.get("worker"),
        max_processing=_float(f, "max_processing"),
        cancel_requested=f.get("cancel_requested") == "1",
        dedup_key=f.get("dedup_key"),
        deduplicated=deduplicated,
    )


def _change(raw: Sequence[Any]) -> Change:
    job_id, channel, task, attempts, old, new, parent, parent_state, error = raw
    return Change(
        job_id,
        channel,
        task,
        int(attempts),
        old,
        new,
        parent or None,
        parent_state or None,
        error or None,
    )


def _new_job(job: NewJob) -> list[Any]:
    return [
        job.id,
        job.task,
        job.channel,
        job.payload,
        str(job.priority),  # text: 64-bit integers do not survive Lua's doubles
        str(job.max_attempts),
        job.delay,
        False if job.run_at is None else job.run_at,
        False if job.max_processing is None else job.max_processing,
        False if job.dedup_key is None else job.dedup_key,
        list(job.depends_on),
        job.cascade,
        _rank(job.priority),
    ]


def _rank(priority: int) -> str:
    """Sorts as text like the priorities in reverse: 20 digits, smaller for higher ones."""
    return f"{(1 << 63) - 1 - priority:020d}"


def _parse_url(url: str) -> tuple[str, str, int]:
    """(the URL for redis-py, the key prefix, the events stream cap)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("prefix", "events_max")}
    prefix = ours.get("prefix", DEFAULT_PREFIX)
    if not prefix or any(c in prefix for c in "{}:"):
        raise ValueError(
            f"redis prefix {prefix!r} in {url!r} must be non-empty, without braces (they "
            "mark the hash tag) or colons (they separate the prefix from the queue's name)"
        )
    events_max = ours.get("events_max", str(DEFAULT_EVENTS_MAX))
    if not events_max.isdigit() or int(events_max) < 1:
        raise ValueError(
            f"events_max={events_max!r} in {url!r} must be a positive whole number "
            "(how many events each queue's stream keeps)"
        )
    rest = urlencode([(k, v) for k, v in query if k not in ours])
    return urlunsplit(parts._replace(query=rest)), prefix, int(events_max)


class RedisBackend:
    """Queues in one Redis (or Redis Cluster slot per queue), under one key prefix."""

    poll_interval = 0.5  # how often waits look again while pub/sub is down

    def __init__(self, url: str) -> None:
        self.url = url
        self._redis_url, self.prefix, self.events_max = _parse_url(url)
        self._client: Any = None  # redis-py's Redis, or its RedisCluster on a cluster
        self._hub: Any = None  # the plain client pub/sub listens through (see _connect.py)
        self._scripts: dict[str, Any] = {}
        self._open_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._listening = asyncio.Event()
        self._channels: dict[str, tuple[str, str]] = {}  # pub/sub channel -> (queue, kind)
        self._subscribed: dict[str, asyncio.Event] = {}  # channel -> confirmed
        self._notified: dict[str, int] = {}  # queue -> work announcements seen
        self._claim_marks = ClaimMarks(f"{id(self):x}")
        self._work: dict[str, asyncio.Event] = {}
        self._event_seen: dict[str, int] = {}
        self._event_wakers: dict[str, asyncio.Event] = {}
        self._target = f"{self._redis_url}\0{self.prefix}"  # the server and prefix
        self._following: dict[str, asyncio.Future[bool]] = {}  # limiter channel -> subscribing
        self._steps: dict[int, asyncio.Future[Any]] = {}  # token -> its acquire step, unfinished
        self._dropped = False  # pub/sub was lost since it last confirmed every channel
        self._limit_slots: asyncio.Semaphore | None = None  # made by open(), on its loop
        self._crowds: dict[tuple[str, str], _Crowd] = {}  # (limiter, key) -> forming
        self._arriving: dict[str, asyncio.Future[None]] = {}  # ticket -> its crowd's step
        self._inboxes: dict[tuple[str, str], _Inbox] = {}  # (queue, worker) -> its inbox

    def _base(self, queue: str) -> str:
        return key_base(self.prefix, queue)

    # ── connection ─────────────────────────────────────────────────────────
    async def open(self) -> None:
        """Connect to the server, or to the cluster its node belongs to, and register the
        scripts."""
        async with self._open_lock:
            if self._client is not None:
                return
            client, self._hub = await connect(self._redis_url)
            self._scripts = {
                name: Script(client, _script(name)) for name in (*_SCRIPTS, *_LIMITER_SCRIPTS)
            }
            self._limit_slots = asyncio.Semaphore(_LIMITER_STEPS)
            self._client = client

    async def close(self) -> None:
        """Stop listening and release the connections."""
        readers = [inbox.reader for inbox in self._inboxes.values() if inbox.reader]
        self._inboxes.clear()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        client, self._client = self._client, None
        hub, self._hub = self._hub, None
        if client is not None:
            await client.aclose()
        if hub is not None and hub is not client:
            await hub.aclose()
        # Opened again, the backend follows its queues afresh.
        self._pubsub = None
        self._listening.clear()
        self._dropped = False
        self._channels.clear()
        for confirmed in self._subscribed.values():
            confirmed.clear()  # limiter waiters watching here no longer count on messages
        self._subscribed.clear()
        for following in self._following.values():
            following.cancel()
        self._following.clear()

    async def migrate(self) -> list[str]:
        """Redis keeps no schema: keys are made as they are used."""
        return []

    async def _ready(self) -> Any:
        if self._client is None:
            await self.open()
        assert self._client is not None
        return self._client

    async def _run(self, script: str, queue: str, *args: Any) -> Any:
        await self._ready()
        # The connections have no socket timeout (_connect.py), and TCP does not notice a
        # server that is alive but never answers (stopped, stuck): a step fails instead.
        async with asyncio.timeout(_STEP_TIMEOUT):
            return await self._scripts[script](keys=[self._base(queue)], args=list(args))

    async def now(self) -> float:
        """The server's clock (``TIME``), epoch seconds."""
        seconds, micros = await (await self._ready()).time()
        return float(seconds) + float(micros) / 1e6

    def _stored(self, emit: Emit[T] | None, result: T, stored: Sequence[Any]) -> None:
        """Give the core's own copies of a step's events the numbers the script gave them."""
        if emit is None or (emit.wanted is not None and not emit.wanted()):
            return  # (the script stored the events; no subscriber here takes copies)
        events = emit.make(result)
        first, at, count = int(stored[0]), float(stored[1]), int(stored[2])
        if len(events) != count:
            logger.error(
                "events differ: the core made %d, the script stored %d", len(events), count
            )
        emit.stored = stamp(events, first, at) if events and first else []

    # ── jobs ───────────────────────────────────────────────────────────────
    async def job_insert_many(
        self, queue: str, jobs: Sequence[NewJob], *, emit: Emit[list[JobRecord]] | None = None
    ) -> list[JobRecord]:
        """Insert all or none, in one script: dedup, parents and max_size checked inside."""
        if not jobs:
            return []
        detail = _insert_detail(queue, jobs[0], emit)
        try:
            now, stored, out = await self._run(
                "enqueue",
                queue,
                json.dumps([_new_job(j) for j in jobs]),
                detail or "",
                "1" if emit else "0",
                self.events_max,
            )
        except ResponseError as exc:
            raise _insert_error(queue, jobs, exc) from None
        records = _inserted(queue, jobs, float(now), out)
        self._stored(emit, records, stored)
        return records

    async def job_claim(
        self, params: ClaimParams, *, emit: Emit[list[Claim]] | None = None
    ) -> list[Claim]:
        """Claim due jobs within the channel and queue limits: one script."""
        queue = params.queue
        self._claim_marks.claimed(queue, self._notified.get(queue, 0))
        token = uuid.uuid4().hex  # one lease token per batch: (job id, token) fences
        inbox = self._inboxes.get((queue, params.worker))
        acks = inbox.to_ack if inbox is not None else []
        if inbox is not None:
            inbox.to_ack = []
        try:
            stored, out = await self._run(
                "claim",
                queue,
                params.limit,
                repr(params.lease),
                token,
                params.worker,
                "" if params.channels is None else json.dumps(list(params.channels)),
                "1" if emit else "0",
                self.events_max,
                "" if inbox is None else repr(inbox.idle_for),
                "\t".join(acks),
                params.hold,
            )
        except BaseException:
            if inbox is not None:  # maybe not acknowledged: say so again next time
                inbox.to_ack[:0] = acks
            raise
        claims = _claims(queue, out)
        if claims:
            self._stored(emit, claims, stored)
        return claims

    async def job_inbox_open(
        self, queue: str, worker: str, deliver: Callable[[list[Claim]], None], idle_for: float
    ) -> None:
        """Give ``worker`` an inbox (see ``Hands`` and hand.lua): its claims register it as
        idle for ``idle_for`` seconds, and a reader takes what enqueues push there."""
        base = self._base(queue)
        inbox = _Inbox(f"{base}:in:{worker}", f"{base}:got:{worker}", idle_for)
        # Left by an earlier run of this worker that could not close them (its jobs are
        # leased: the lease sweep frees them), they would stop the reader at once.
        await (await self._ready()).delete(inbox.key, inbox.got)
        loop = asyncio.get_running_loop()
        inbox.reader = loop.create_task(self._read_inbox(queue, inbox, deliver))
        self._inboxes[(queue, worker)] = inbox

    async def job_inbox_close(self, queue: str, worker: str) -> None:
        """Unregister ``worker``; its reader delivers what its inbox holds, then stops (5 s
        at most: jobs left there are leased, and the lease sweep frees them)."""
        inbox = self._inboxes.pop((queue, worker), None)
        if inbox is None or inbox.reader is None:
            return
        try:
            await self._run("unidle", queue, worker)
            async with asyncio.timeout(5.0):
                await asyncio.shield(inbox.reader)
            await (await self._ready()).delete(inbox.got)
        except Exception:  # unreachable: nothing more will be delivered
            logger.warning(
                "worker %s: its inbox could not be closed; jobs left in it wait for the "
                "lease sweep",
                worker,
            )
        finally:
            inbox.reader.cancel()
            await asyncio.gather(inbox.reader, return_exceptions=True)

    async def _read_inbox(
        self, queue: str, inbox: _Inbox, deliver: Callable[[list[Claim]], None]
    ) -> None:
        """Wait in BLMOVE for hand-offs and deliver each once, until the '~' of
        unidle.lua. First, after a lost connection, after each wait that brought
        nothing, and when many tags were delivered, read B:got again: an item moved
        there whose reply never came (a dropped connection, a retried command) is
        delivered then, and the tags no longer there are forgotten."""
        pause, resync = 0.05, True
        while True:
            try:
                client = await self._ready()
                if resync or len(inbox.seen) > _SEEN_MAX:
                    if inbox.catch_up(queue, await client.lrange(inbox.got, 0, -1), deliver):
                        return
                    resync = False
                async with asyncio.timeout(_INBOX_WAIT + 10.0):  # a silent server
                    item = await client.blmove(inbox.key, inbox.got, _INBOX_WAIT, "LEFT", "RIGHT")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("waiting for hand-offs failed (%s); retrying", exc)
                resync = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            pause = 0.05
            if item is None:
                resync = True
                continue
            if inbox.take(queue, item, deliver):
                return
            # The jobs start before the next BLMOVE is sent (a send can cost more than
            # starting them).
            await asyncio.sleep(0)

    async def job_heartbeat_many(
        self, queue: str, leases: Mapping[str, str], lease: float
    ) -> Heartbeat:
        """Extend the leases still ours and unexpired."""
        if not leases:
            return Heartbeat(frozenset(), frozenset())
        pairs = [x for item in leases.items() for x in item]
        kept, cancel = await self._run("heartbeat", queue, repr(lease), *pairs)
        return Heartbeat(frozenset(kept), frozenset(cancel))

    async def job_finish_many(
        self, queue: str, finishes: Sequence[Finish], *, emit: Emit[FinishResult] | None = None
    ) -> FinishResult:
        """Apply each decision where its lease still matches, in one script."""
        if not finishes:
            return FinishResult([])
        stored, states, changes = await self._run(
            "finish",
            queue,
            "1" if emit else "0",
            self.events_max,
            json.dumps(_finish_args(finishes, emit)),
        )
        result = FinishResult([s or None for s in states], [_change(c) for c in changes])
        self._stored(emit, result, stored)
        return result

    async def job_cancel(
        self, queue: str, job_id: str, *, emit: Emit[CancelResult] | None = None
    ) -> CancelResult:
        """Cancel a job that has not started; flag a running one for its worker."""
        stored, done, flat, changes = await self._run(
            "cancel", queue, job_id, "1" if emit else "0", self.events_max
        )
        if not flat:
            return CancelResult(None)
        result = CancelResult(_record(queue, flat), bool(done), [_change(c) for c in changes])
        self._stored(emit, result, stored)
        return result

    async def job_get(self, queue: str, job_id: str) -> JobRecord | None:
        """One job, or None."""
        fields = await (await self._ready()).hgetall(f"{self._base(queue)}:j:{job_id}")
        if not fields:
            return None
        return _record(queue, [x for item in fields.items() for x in item])

    async def job_list(
        self, queue: str, *, state: str | None, channel: str | None, limit: int
    ) -> list[JobRecord]:
        """Newest first: a script looks at a span of jobs at a time, so a filter that
        matches few jobs of a large queue never blocks the server for long."""
        found: list[JobRecord] = []
        start = 0
        while len(found) < limit:
            out, looked, span = await self._run(
                "list", queue, state or "", channel or "", limit - len(found), start, _LIST_SPAN
            )
            found += [_record(queue, flat) for flat in out]
            start += int(looked)
            if int(span) < _LIST_SPAN:
                break
        return found

    async def job_expired(self, queue: str, limit: int) -> list[JobRecord]:
        """Running jobs past their lease or their max_processing."""
        return [_record(queue, flat) for flat in await self._run("expired", queue, limit)]

    async def job_release_due(
        self, queue: str, *, emit: Emit[list[Change]] | None = None
    ) -> list[Change]:
        """waiting/retrying -> queued once due (and no parent is left to wait for)."""
        stored, raw = await self._run("release", queue, "1" if emit else "0", self.events_max)
        changes = [_change(c) for c in raw]
        if changes:
            self._stored(emit, changes, stored)
        return changes

    async def job_delete_finished(
        self,
        queue: str,
        older_than: float,
        *,
        state: str | None = None,
        emit: Emit[list[Change]] | None = None,
    ) -> list[Change]:
        """Delete jobs that ended long enough ago, a chunk per script."""
        deleted: list[Change] = []
        published: list[Event] = []
        skip = 0
        while True:
            stored, raw, scanned, kept = await self._run(
                "delete",
                queue,
                repr(older_than),
                state or "",
                "1" if emit else "0",
                self.events_max,
                _DELETE_CHUNK,
                skip,
            )
            chunk = [_change(c) for c in raw]
            deleted += chunk
            if chunk and emit is not None:
                part: Emit[list[Change]] = Emit(emit.make)
                self._stored(part, chunk, stored)
                published += part.stored
            skip += int(kept)
            if int(scanned) < _DELETE_CHUNK:
                break
        if emit is not None:
            emit.stored = published
        return deleted

    async def pool_stats(self, queue: str) -> PoolSnapshot:
        """Counts by state and channel, running jobs, limits: one consistent read."""
        cc, running, qmax, pol, qrate, paused = await self._run("stats", queue)
        counts: dict[str, int] = {}
        channels: dict[str, dict[str, int]] = {}
        for field, value in _fields(cc).items():
            n = int(value)
            if n <= 0:
                continue
            state, _, channel = field.partition(":")
            counts[state] = counts.get(state, 0) + n
            channels.setdefault(channel, {})[state] = n
        policies = {ch: _policy(text) for ch, text in _fields(pol).items()}
        return PoolSnapshot(
            counts,
            channels,
            [_record(queue, flat) for flat in running],
            int(qmax) if qmax else None,
            policies,
            _rate(qrate),
            {ch: float(until) for ch, until in _fields(paused).items()},
        )

    async def channel_policy_set(self, queue: str, channel: str, policy: ChannelPolicy) -> None:
        """Set a channel's limits (read by the claim and enqueue scripts): "maxc:maxs", then
        ":n:per" with a rate. A pause is kept apart (``:paused``): it stays."""
        text = f"{_opt(policy.max_concurrency)}:{_opt(policy.max_size)}"
        if policy.rate is not None:
            text += ":" + _rate_text(policy.rate)
        await self._run("channel_policy", queue, channel, text)

    async def channel_policy_clear(self, queue: str, channel: str) -> None:
        """Remove a channel's limits."""
        await self._run("channel_policy", queue, channel, "")

    async def queue_limits_set(
        self, queue: str, max_concurrency: int | None, rate: tuple[int, float] | None = None
    ) -> None:
        """Cap the queue (None: no cap): ``:qmax`` and ``:qrate`` ("n:per"), set together."""
        await self._run("queue_limits", queue, _opt(max_concurrency), _rate_text(rate))

    # ── schedules ──────────────────────────────────────────────────────────
    async def schedule_upsert(self, record: ScheduleRecord) -> None:
        """Create or replace a schedule; the same spec declared again keeps its next run."""
        fields = {
            "channel": record.channel,
            "name": record.name,
            "spec": record.spec,
            "task": record.task,
            "payload": record.payload,
            "priority": str(record.priority),
            "max_attempts": str(record.max_attempts),
            "max_processing": "" if record.max_processing is None else repr(record.max_processing),
            "next_run": repr(record.next_run),
        }
        pairs = [x for item in fields.items() for x in item]
        await self._run("schedule_upsert", record.queue, _sched_id(record), *pairs)

    async def schedule_delete(self, queue: str, channel: str, name: str) -> bool:
        """Remove a schedule; False if there was none."""
        return bool(await self._run("schedule_delete", queue, f"{channel}\0{name}"))

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule of the queue."""
        out = await self._run("schedules", queue, "", 1_000_000)
        records = [_schedule(queue, flat) for flat in out]
        return sorted(records, key=lambda r: (r.channel, r.name))

    async def schedule_due(self, queue: str, limit: int) -> list[ScheduleRecord]:
        """Schedules whose next run has come, soonest first."""
        return [_schedule(queue, flat) for flat in await self._run("schedules", queue, "1", limit)]

    async def schedule_fire(
        self,
        record: ScheduleRecord,
        next_run: float,
        job: NewJob,
        *,
        emit: Emit[JobRecord | None] | None = None,
    ) -> JobRecord | None:
        """Advance the schedule (compare-and-set on next_run) and insert its job: one script."""
        probe: Emit[list[JobRecord]] | None = None
        if emit is not None:
            probe = Emit(lambda records: emit.make(records[0]))
        detail = _insert_detail(record.queue, job, probe)
        out = await self._run(
            "schedule_fire",
            record.queue,
            _sched_id(record),
            repr(record.next_run),
            repr(next_run),
            json.dumps([_new_job(job)]),
            detail or "",
            "1" if emit else "0",
            self.events_max,
        )
        if out == 0:
            return None
        now, stored, inserted = out
        fired = _inserted(record.queue, [job], float(now), inserted)[0]
        self._stored(emit, fired, stored)
        return fired

    async def leader_try(self, queue: str, name: str, owner: str, ttl: float) -> bool:
        """Take or renew a named lease."""
        return bool(await self._run("leader", queue, name, owner, max(1, int(ttl * 1000))))

    # ── events ─────────────────────────────────────────────────────────────
    async def event_read(self, queue: str, after: int, limit: int) -> list[Event]:
        """Events after ``after``, oldest first (from the queue's stream)."""
        client = await self._ready()
        entries = await client.xrange(f"{self._base(queue)}:ev", f"(0-{after}", "+", count=limit)
        out: list[Event] = []
        for _, fields in entries:  # one entry per step: its first number, time and events
            seq, at = int(fields["f"]), float(fields["t"])
            for raw in json.loads(fields["e"]):
                if seq > after:
                    out.append(_event(queue, raw, at, seq))
                seq += 1
            if len(out) >= limit:
                break
        return out[:limit]

    async def event_last(self, queue: str) -> int:
        """The newest event's number."""
        value = await (await self._ready()).get(f"{self._base(queue)}:evn")
        return int(value or 0)

    async def event_since(self, queue: str, time: float) -> int:
        """The newest event's number stored before ``time`` (0 if none)."""
        return int(await self._run("event_since", queue, repr(time)))

    async def event_trim(self, queue: str, older_than: float) -> int:
        """Forget events older than ``older_than`` seconds (the newest stays)."""
        return int(await self._run("event_trim", queue, repr(older_than)))

    async def event_wait(self, queue: str, after: int, timeout: float) -> None:
        """Return when an event after ``after`` was announced or stored, or at ``timeout``."""
        if self._event_seen.get(queue, 0) > after:
            return
        waker = self._event_wakers.setdefault(queue, asyncio.Event())
        waker.clear()
        await self._subscribe(queue, "events")
        if await self.event_last(queue) > after:
            return
        await self._sleep_on(waker, timeout)

    # ── wake-ups ───────────────────────────────────────────────────────────
    async def work_wait(self, queue: str, timeout: float) -> None:
        """Return on an announcement of work for ``queue`` since the last claim began,
        or after ``timeout``."""
        if await self._subscribe(queue, "work"):
            return  # just subscribed: anything sent before was missed, so look again
        if self._claim_marks.news(queue, self._notified.get(queue, 0)):
            return
        waker = self._work.setdefault(queue, asyncio.Event())
        waker.clear()
        await self._sleep_on(waker, timeout)

    def work_notify(self, queue: str) -> None:
        """Local enqueues need no extra wake-up: the script announced them (unless
        pub/sub is down)."""
        if not self._listening.is_set():
            self._wake_work(queue)

    def _wake_work(self, queue: str) -> None:
        self._notified[queue] = self._notified.get(queue, 0) + 1
        waker = self._work.get(queue)
        if waker is not None:
            waker.set()

    def _wake_everyone(self) -> None:
        for queue in list(self._work):
            self._wake_work(queue)
        for waker in self._event_wakers.values():
            waker.set()
        if self._dropped:  # (a limiter waiter follows its limiter before its first step)
            for watch in self._watched().values():
                watch.woken.set()

    async def _sleep_on(self, waker: asyncio.Event, timeout: float) -> None:
        if not self._listening.is_set():
            timeout = min(timeout, self.poll_interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waker.wait(), timeout)

    async def _subscribe(self, queue: str, what: str) -> bool:
        """Follow ``queue``'s announcements of ``what`` ("work", for idle workers, or
        "events", for event subscribers: a worker alone does not hear of every step's
        events); True when this call started following them."""
        suffix = "wake" if what == "work" else "evp"
        return await self._follow({f"{self._base(queue)}:{suffix}": (queue, what)})

    async def _follow(self, channels: Mapping[str, tuple[str, str]]) -> bool:
        """Subscribe to ``channels`` (each: (queue or limiter name, what it announces)) and
        wait for the confirmations, 1 s at most; True when this call started following."""
        new = {ch: what for ch, what in channels.items() if ch not in self._channels}
        if not new:
            return False
        self._channels.update(new)
        confirmed = [self._subscribed.setdefault(ch, asyncio.Event()) for ch in new]
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        elif self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.subscribe(*new)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                for confirmation in confirmed:
                    await confirmation.wait()
        return True

    async def _listen(self) -> None:
        """Follow pub/sub on a dedicated connection; reconnect with back-off when it drops
        (on a cluster, through the next node: the one it used may be gone)."""
        pause = 0.05
        while True:
            await self._ready()
            pubsub: Any = self._hub.pubsub()
            try:
                first = list(self._channels)
                await pubsub.subscribe(*first)
                self._pubsub = pubsub
                later = [ch for ch in self._channels if ch not in first]
                if later:  # followed while the first SUBSCRIBE was on its way
                    await pubsub.subscribe(*later)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._message(message)
                        pause = 0.05
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:
                if self._listening.is_set():
                    logger.warning("lost the pub/sub connection (%s); reconnecting", exc)
            self._pubsub = None
            self._listening.clear()
            self._dropped = True
            for confirmed in self._subscribed.values():
                confirmed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            self._wake_everyone()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
            if self._hub is not self._client:
                self._hub = await next_hub(self._redis_url, self._client, self._hub)

    def _message(self, message: Mapping[str, Any]) -> None:
        channel = str(message.get("channel"))
        kind = message.get("type")
        if kind == "subscribe":
            self._subscribed.setdefault(channel, asyncio.Event()).set()
            if all(c.is_set() for c in self._subscribed.values()) and not self._listening.is_set():
                self._listening.set()
                self._wake_everyone()  # anything sent while we were away
                self._dropped = False
            return
        if kind != "message" or channel not in self._channels:
            return
        queue, what = self._channels[channel]
        if what == "limiter":
            self._wake_tickets(self._heard(str(message.get("data"))))
            return
        if what == "work":
            self._wake_work(queue)
            return
        with contextlib.suppress(ValueError, TypeError):
            seq = int(message.get("data"))  # type: ignore[arg-type]
            self._event_seen[queue] = max(self._event_seen.get(queue, 0), seq)
        waker = self._event_wakers.get(queue)
        if waker is not None:
            waker.set()

    # ── the Limiter (see queue/limiter.py; the steps mirror backends/_limits.py) ──
    limiter_poll = 1.0

    async def _limit(self, script: str, spec: LimitSpec, *args: Any) -> Any:
        """Run a Limiter step on ``spec``'s key: five keys under the limiter's hash tag,
        then its wake channel and settings (see limiter.lua), then ``args``."""
        await self._ready()
        assert self._limit_slots is not None
        base = limiter_base(self.prefix, spec.name)
        keys = [f"{base}:{part}:{spec.key}" for part in ("s", "h", "w", "e", "r")]
        rate = ("", "") if spec.rate is None else (str(spec.rate[0]), repr(spec.rate[1]))
        head = [f"{base}:wake", _opt(spec.limit), *rate, repr(spec.lease)]
        async with self._limit_slots:
            return await self._scripts[script](keys=keys, args=[*head, *args])

    async def _follow_limiter(self, name: str, ticket: str) -> None:
        """Follow the limiter's wake-ups before a waiter's step runs, so a wake published
        after the step is never missed. Waiters that start together share one
        subscription, and each waits for its confirmation (1 s at most)."""
        channel = limiter_base(self.prefix, name) + ":wake"
        following = self._following.get(channel)
        if following is None:
            following = asyncio.ensure_future(self._follow({channel: (name, "limiter")}))
            self._following[channel] = following
        if not following.done():
            try:
                await asyncio.shield(following)
            except asyncio.CancelledError:
                if not following.cancelled():  # our caller's cancellation, not close()'s
                    raise
        watch = self._watched().get(ticket)
        if watch is not None:
            watch.live = self._subscribed.get(channel)

    async def limiter_acquire(
        self, spec: LimitSpec, ticket: str, weight: int, wait: bool
    ) -> LimitTurn:
        """Settle, then take a grant or a place in line: one script. A waiter whose grant
        a wake-up brought (see ``_heard``) gets it without a step while it is fresh."""
        granted = self._granted(spec, ticket)
        if granted is not None:
            return granted
        if not wait:
            return self._turn(await self._limit("limiter_acquire", spec, ticket, weight, "0"))
        await self._follow_limiter(spec.name, ticket)
        watch = self._watched().get(ticket)
        if watch is not None and watch.first and watch.arrived and spec.rate is None:
            # Told it is first now, with no rate wait to time: it re-checks within
            # limiter_poll from here (for holders that died), without a step now.
            watch.first = False
            return LimitTurn(None, None, 0, None)
        if watch is not None and not watch.arrived:
            watch.arrived = True
            step: asyncio.Future[Any] = self._arrive(spec, ticket, weight)
        else:
            step = asyncio.ensure_future(self._limit("limiter_acquire", spec, ticket, weight, "1"))
        if watch is None:
            return self._turn(await step)
        return await self._step_or_grant(spec, ticket, watch, step)

    def _arrive(self, spec: LimitSpec, ticket: str, weight: int) -> asyncio.Future[list[Any]]:
        """A waiter's first step. The newcomers of a key that come in the same turn of the
        event loop (a crowd starting together) go in one script, in the order they came,
        as if each had its own step: one round trip instead of one each. The step is the
        crowd's own task: a newcomer cancelled meanwhile does not stop it for the others
        (and its own leaving waits for it, see ``limiter_cancel``)."""
        where = (spec.name, spec.key)
        crowd = self._crowds.get(where)
        if crowd is None or crowd.spec != spec or len(crowd.turns) >= _CROWD:
            crowd = self._crowds[where] = _Crowd(spec)
            crowd.sent = asyncio.ensure_future(self._send_crowd(where, crowd))
        crowd.tickets += [ticket, weight]
        turn: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        crowd.turns.append(turn)
        assert crowd.sent is not None
        self._arriving[ticket] = crowd.sent
        return turn

    async def _send_crowd(self, where: tuple[str, str], crowd: _Crowd) -> None:
        try:
            await asyncio.sleep(0)  # the others of this turn of the loop join
            if self._crowds.get(where) is crowd:
                del self._crowds[where]
            raw = await self._limit("limiter_arrive", crowd.spec, *crowd.tickets)
        except BaseException as exc:
            if self._crowds.get(where) is crowd:
                del self._crowds[where]
            _fail(crowd.turns, exc if isinstance(exc, Exception) else Closed("closed"))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            for ticket in crowd.tickets[::2]:
                if self._arriving.get(str(ticket)) is crowd.sent:
                    del self._arriving[str(ticket)]
        wake = raw[-1]  # (announced; the first turn carries it, for the grants it names)
        for i, turn in enumerate(crowd.turns):
            if not turn.done():
                turn.set_result([*raw[4 * i : 4 * i + 4], wake if i == 0 else ""])

    async def _step_or_grant(
        self, spec: LimitSpec, ticket: str, watch: _Watch, step: asyncio.Future[Any]
    ) -> LimitTurn:
        """The step's turn, or the grant a wake-up brings first. Wake-ups reach this
        process in the order of the grants; the replies of steps on several connections
        may not, so waiting for the reply could let a later grant be seen first. The
        step then ends in the background, and a release or renewal of the grant waits
        for it (it must not run after them)."""
        heard = watch.heard = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((step, heard), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            step.cancel()
            raise
        finally:
            watch.heard = None
        turn = self._turn(step.result()) if step.done() else None
        if turn is not None and turn.token is not None:
            watch.grant = None
            return turn
        granted = self._granted(spec, ticket)
        if granted is None:
            return turn if turn is not None else self._turn(await step)
        if turn is not None:
            return replace(granted, woken=turn.woken)
        assert granted.token is not None
        self._steps[granted.token] = step
        step.add_done_callback(functools.partial(self._late_step, granted.token))
        return granted

    def _late_step(self, token: int, step: asyncio.Future[Any]) -> None:
        """An acquire step whose waiter took the grant a wake-up brought ended: wake the
        tickets it names that no message wakes (see ``limiter_woken``)."""
        self._steps.pop(token, None)
        if not step.cancelled() and step.exception() is None:
            self._wake_unfollowed(self._turn(step.result()).woken)

    async def _after_steps(self, tokens: Sequence[int]) -> None:
        """Wait for the acquire steps still on their way for ``tokens``."""
        steps = [step for token in tokens if (step := self._steps.get(token)) is not None]
        if steps:
            await asyncio.wait(steps)

    def _turn(self, raw: Sequence[Any]) -> LimitTurn:
        token, ends, ahead, retry, wake = raw
        return LimitTurn(
            None if token is None else int(token),
            None if ends is None else float(ends),
            int(ahead),
            None if retry is None else float(retry),
            self._heard(wake),
        )

    def _granted(self, spec: LimitSpec, ticket: str) -> LimitTurn | None:
        """The grant a wake-up brought ``ticket`` (taken once), if heard less than a third
        of a lease ago: then it surely still holds, and its renewals (every third of a
        lease from now on) come in time. Older, the step asks the server again."""
        watch = self._watched().get(ticket)
        if watch is None or watch.grant is None:
            return None
        (token, ends, heard), watch.grant = watch.grant, None
        if time.monotonic() - heard >= spec.lease / 3:
            return None
        return LimitTurn(token, ends, 0, None)

    def _heard(self, wake: str) -> tuple[str, ...]:
        """The tickets of a step's wake-up text ("<lease end> <ticket> <token> ...", token
        0 for a ticket now first in line); keeps the grants of tickets watched here."""
        if not wake:
            return ()
        fields = wake.split(" ")
        ends, heard = float(fields[0]), time.monotonic()
        watched = self._watched()
        tickets = fields[1::2]
        for ticket, token in zip(tickets, fields[2::2], strict=True):
            watch = watched.get(ticket)
            if watch is not None and token == "0":
                watch.first = True
            elif watch is not None:
                watch.grant = (int(token), ends, heard)
                if watch.heard is not None and not watch.heard.done():
                    watch.heard.set_result(None)
        return tuple(tickets)

    async def limiter_renew(self, spec: LimitSpec, tokens: Sequence[int]) -> list[bool]:
        """Extend the grants still held."""
        if not tokens:
            return []
        await self._after_steps(tokens)
        kept = await self._limit("limiter_renew", spec, *(str(t) for t in tokens))
        return [bool(k) for k in kept]

    async def limiter_release(self, spec: LimitSpec, token: int) -> tuple[bool, tuple[str, ...]]:
        """End a grant (fenced), settle; the script has announced the tickets to wake."""
        await self._after_steps((token,))
        done, wake = await self._limit("limiter_release", spec, str(token))
        return bool(done), self._heard(wake)

    async def limiter_cancel(self, spec: LimitSpec, ticket: str) -> tuple[str, ...]:
        """Leave the line or give back a grant that came meanwhile, settle (after the
        ticket's first step, if still on its way: it must not place the ticket again)."""
        arriving = self._arriving.get(ticket)
        if arriving is not None:
            await asyncio.wait([arriving])
        return self._heard(await self._limit("limiter_cancel", spec, ticket))

    async def limiter_stats(self, spec: LimitSpec) -> LimitStats:
        """Counts now, without what ended."""
        holders, held, waiters, recent = await self._limit("limiter_stats", spec)
        return LimitStats(
            int(holders), int(held), int(waiters), None if recent is None else int(recent)
        )

    def _watched(self, *, keep: bool = False) -> dict[str, _Watch]:
        """The tickets this process watches on this server and prefix (``keep``: store
        the dict if it is new; an empty one is dropped on unwatch)."""
        where = (id(asyncio.get_running_loop()), self._target)
        watched = _WATCHED.get(where)
        if watched is None:
            watched = {}
            if keep:
                _WATCHED[where] = watched
        return watched

    def limiter_watch(self, ticket: str) -> asyncio.Event:
        """The ticket's event, set by wake-ups from any process (see ``_message``)."""
        watched = self._watched(keep=True)
        watch = watched.get(ticket)
        if watch is None:
            watch = watched[ticket] = _Watch()
        return watch.woken

    def limiter_unwatch(self, ticket: str) -> None:
        """Forget the ticket (and a grant heard for it)."""
        watched = self._watched()
        watched.pop(ticket, None)
        if not watched:
            _WATCHED.pop((id(asyncio.get_running_loop()), self._target), None)

    def limiter_woken(self, spec: LimitSpec, tickets: Sequence[str]) -> None:
        """The step's script published the tickets for every process, this one too: a
        ticket whose watcher follows the wake-ups is woken by that message, so this
        process wakes its waiters in the order they were granted (the replies of steps on
        several connections may come back in any order). The others wake here."""
        self._wake_unfollowed(tickets)

    def _wake_unfollowed(self, tickets: Sequence[str]) -> None:
        """Wake the tickets watched here whose wake-up message would not come."""
        watched = self._watched()
        for ticket in tickets:
            watch = watched.get(ticket)
            if watch is not None and (watch.live is None or not watch.live.is_set()):
                watch.woken.set()

    def _wake_tickets(self, tickets: Sequence[str]) -> None:
        watched = self._watched()
        for ticket in tickets:
            watch = watched.get(ticket)
            if watch is not None:
                watch.woken.set()


# ── helpers ─────────────────────────────────────────────────────────────────
def _claims(queue: str, out: str) -> list[Claim]:
    """Claims from a claim's JSON (each job's lease token is among its fields)."""
    claims = []
    for fields in json.loads(out):
        record = _job(queue, fields)
        assert record.lease is not None
        assert record.lease_expires_at is not None
        claims.append(Claim(record, record.lease, record.lease_expires_at, fields["was"]))
    return claims


def _fail(turns: Sequence[asyncio.Future[Any]], exc: Exception) -> None:
    for turn in turns:
        if not turn.done():
            turn.set_exception(exc)


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _rate_text(rate: tuple[int, float] | None) -> str:
    """A rate as the scripts read it: "n:per" ('' for none)."""
    return "" if rate is None else f"{int(rate[0])}:{float(rate[1])!r}"


def _rate(text: str) -> tuple[int, float] | None:
    n, _, per = text.partition(":")
    return (int(n), float(per)) if n else None


def _policy(text: str) -> ChannelPolicy:
    concurrency, _, rest = text.partition(":")
    size, _, rate = rest.partition(":")
    return ChannelPolicy(
        int(concurrency) if concurrency else None, int(size) if size else None, _rate(rate)
    )


def _sched_id(record: ScheduleRecord) -> str:
    return f"{record.channel}\0{record.name}"


def _schedule(queue: str, flat: Sequence[str]) -> ScheduleRecord:
    f = _fields(flat)
    return ScheduleRecord(
        queue=queue,
        channel=f["channel"],
        name=f["name"],
        spec=f["spec"],
        task=f["task"],
        payload=f["payload"],
        priority=int(f["priority"]),
        max_attempts=int(f["max_attempts"]),
        max_processing=float(f["max_processing"]) if f.get("max_processing") else None,
        next_run=float(f["next_run"]),
        created_at=float(f.get("created_at", 0.0)),
    )


def _event(queue: str, raw: Sequence[Any], at: float, seq: int) -> Event:
    kind, job_id, channel, task, attempt, worker, error, detail = raw
    return Event(
        EventType(kind),
        job_id,
        queue,
        channel,
        task,
        int(attempt),
        at,
        worker or None,
        error or None,
        detail or None,
        seq,
    )


def _insert_detail(queue: str, job: NewJob, emit: Emit[list[JobRecord]] | None) -> str | None:
    """The ``detail`` the core's rule gives this step's enqueued events (a schedule's
    tick names it), read off the core's events for a stand-in record."""
    if emit is None or emit.make is for_inserts:  # (a plain enqueue's events have none)
        return None
    sample = JobRecord.new(queue, job, "queued", 0.0, 0.0)
    for event in emit.make([sample]):
        if event.type == EventType.ENQUEUED:
            return event.detail
    return None


def _inserted(
    queue: str, jobs: Sequence[NewJob], now: float, out: Sequence[Any]
) -> list[JobRecord]:
    records: list[JobRecord] = []
    for job, row in zip(jobs, out, strict=True):
        if row[0] == "=":
            records.append(replace(records[int(row[1]) - 1], deduplicated=True))
        elif row[0] == "~":
            records.append(_record(queue, row[1:], deduplicated=True))
        else:
            state, run_at, parent, parent_state = row
            doomed = (parent, parent_state) if parent else None
            records.append(JobRecord.new(queue, job, state, now, float(run_at), doomed))
    return records


def _insert_error(queue: str, jobs: Sequence[NewJob], exc: ResponseError) -> Exception:
    """The core's error for a refused batch (nothing of it was stored)."""
    parts = str(exc).split("\t")
    if parts[0] == "HPDUP":
        return ValueError(f"job id {parts[1]!r} already exists in queue {queue!r}")
    if parts[0] == "HPDEP":
        job = jobs[int(parts[1]) - 1]
        parent, state, started = parts[2], parts[3], parts[4] == "1"
        found = None if not state else (state, 1.0 if started else None)
        states: dict[str, tuple[str, float | None] | None] = {
            p: ("waiting", None) for p in job.depends_on
        }
        states[parent] = found
        parents_of(queue, replace(job, depends_on=(parent,)), states)
    return exc


def _finish_args(finishes: Sequence[Finish], emit: Emit[FinishResult] | None) -> list[list[Any]]:
    """Each finish, with the job as its worker claimed it as the core's rule sees it: the
    events of a refusal (one per finish) carry channel, task, attempt and worker."""
    refusals: list[Event | None] = [None] * len(finishes)
    if emit is not None:
        made = emit.make(FinishResult([None] * len(finishes)))
        if len(made) == len(finishes):
            refusals = list(made)
    out = []
    for finish, refusal in zip(finishes, refusals, strict=True):
        out.append(
            [
                finish.job_id,
                finish.lease,
                finish.state,
                False if finish.result is None else finish.result,
                False if finish.error is None else finish.error,
                finish.delay,
                finish.expired,
                refusal.channel if refusal else "",
                refusal.task if refusal else "",
                refusal.attempt if refusal else 0,
                (refusal.worker_id or False) if refusal else False,
                (refusal.error or "") if refusal else "",
                f"{finish.delay:g}s",
                finish.pause,
            ]
        )
    return out
