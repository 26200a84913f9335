-- Every statement the PostgreSQL backend runs, by name. Values are always
-- bound parameters (%(name)s); {schema} is the schema's quoted identifier,
-- put in once when the backend starts. {cols} is the job columns in
-- JobRecord order.

-- name: migrations_create
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version    integer          PRIMARY KEY,
    name       text             NOT NULL,
    applied_at double precision NOT NULL
);

-- name: migrations_exists
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: schema_exists
SELECT to_regnamespace(%(schema)s) IS NOT NULL;

-- name: migration_installed
-- For installation_sql(): the same record with literal values (ours, not a user's).
INSERT INTO {schema}.migrations (version, name, applied_at)
VALUES ({version}, '{name}', extract(epoch FROM clock_timestamp())::float8);

-- name: migrations_applied
SELECT version FROM {schema}.migrations ORDER BY version;

-- name: migration_record
INSERT INTO {schema}.migrations (version, name, applied_at)
VALUES (%(version)s, %(name)s, extract(epoch FROM clock_timestamp())::float8);

-- name: migrate_lock
-- One migrating process at a time per schema; others wait, then find nothing to do.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: schema_create
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: clock
SELECT {schema}.clock();

-- name: session_guard
-- Pooled connections: a client that stalls mid-step cannot hold locks for ever.
SET idle_in_transaction_session_timeout = '60s';

-- name: noop
-- Through a caller's SQLAlchemy connection: makes it begin its driver's transaction.
SELECT 1;

-- name: savepoint
-- A caller's transaction: an enqueue that must start again leaves nothing.
SAVEPOINT hydrapool_enqueue;

-- name: savepoint_rollback
ROLLBACK TO SAVEPOINT hydrapool_enqueue;

-- ── enqueue ──────────────────────────────────────────────────────────────

-- name: capped_lock
-- Channels of the batch with a max_size, locked: inserts into one capped
-- channel take turns, so two of them never both see the last free place.
SELECT channel, max_size FROM {schema}.channels
WHERE queue = %(queue)s AND channel = ANY (%(channels)s::text[]) AND max_size IS NOT NULL
ORDER BY channel
FOR UPDATE;

-- name: capped_sizes
-- Runs after capped_lock, with a snapshot taken after the lock was granted.
SELECT j.channel, count(*) FROM {schema}.jobs AS j
WHERE j.queue = %(queue)s AND j.state IN ('waiting', 'queued', 'retrying')
  AND j.channel IN (SELECT c.channel FROM {schema}.channels AS c
                    WHERE c.queue = %(queue)s AND c.channel = ANY (%(channels)s::text[])
                      AND c.max_size IS NOT NULL)
GROUP BY j.channel;

-- name: dedup_twins
-- Locked: a claim skips them until this enqueue commits, so a twin returned
-- as "not started yet" is still not started when the caller sees it.
SELECT {cols} FROM {schema}.jobs
WHERE queue = %(queue)s AND dedup_key IS NOT NULL AND started_at IS NULL
  AND state IN ('waiting', 'queued')
  AND (channel, dedup_key) IN (SELECT * FROM unnest(%(channels)s::text[], %(keys)s::text[]))
FOR UPDATE;

-- name: parents_mark
-- Lock the parents named by new jobs (a claim skips them until this commits,
-- so none can end unseen by its new children) and read their states.
UPDATE {schema}.jobs SET has_children = true
WHERE queue = %(queue)s AND id = ANY (%(ids)s::text[])
RETURNING id, state, started_at;

-- name: job_insert
-- The batch comes as one JSON array: the server unpacks it faster than
-- the driver builds one array parameter per column.
INSERT INTO {schema}.jobs
    (id, queue, task, channel, state, priority, max_attempts, payload, created_at, run_at,
     finished_at, error, max_processing, dedup_key, parents_left, cascade, has_children)
SELECT n.id, %(queue)s, n.task, n.channel, n.state, n.priority, n.max_attempts, n.payload,
       %(now)s, n.run_at, n.finished_at, n.error, n.max_processing, n.dedup_key,
       n.parents_left, n.cascade, n.id = ANY (%(parents)s::text[])
FROM json_to_recordset(%(jobs)s::json)
     AS n(id text, task text, channel text, state text, priority integer,
          max_attempts integer, payload text, run_at float8, finished_at float8, error text,
          max_processing float8, dedup_key text, parents_left integer, cascade boolean)
ON CONFLICT (queue, channel, dedup_key)
    WHERE dedup_key IS NOT NULL AND started_at IS NULL AND state IN ('waiting', 'queued')
    DO NOTHING
RETURNING id;

-- name: job_enqueue
-- The common case in one call: see the enqueue function in the schema.
SELECT now, first_seq, at
FROM {schema}.enqueue(%(queue)s, %(work)s, %(notify)s, %(channels)s::text[], %(queued)s,
                      %(jobs)s::json, %(events)s::json);

-- name: dep_insert
INSERT INTO {schema}.deps (queue, parent, child)
SELECT %(queue)s, d.parent, d.child
FROM unnest(%(parents)s::text[], %(children)s::text[]) AS d(parent, child)
ON CONFLICT DO NOTHING;

-- name: work_notify
SELECT pg_notify(%(channel)s, %(queue)s);

-- name: work_notify_if_limited
-- After a finish that put no job back: only a worker held back by a limit can
-- use the place it freed (the finishing worker sees its own free slot).
SELECT pg_notify(%(channel)s, %(queue)s)
WHERE EXISTS (SELECT 1 FROM {schema}.queues
              WHERE queue = %(queue)s AND max_concurrency IS NOT NULL)
   OR EXISTS (SELECT 1 FROM {schema}.channels
              WHERE queue = %(queue)s AND max_concurrency IS NOT NULL);

-- ── claims ───────────────────────────────────────────────────────────────

-- name: job_claim
-- See the claim function in the schema.
SELECT jobs, first_seq, at, events FROM {schema}.claim(
    %(queue)s, %(key)s, %(limit)s, %(channels)s::text[], %(lease)s, %(duration)s, %(worker)s,
    %(notify)s, %(events)s);

-- name: job_heartbeat
WITH t AS MATERIALIZED (SELECT {schema}.clock() AS now)
UPDATE {schema}.jobs AS j SET lease_expires_at = t.now + %(duration)s
FROM t, unnest(%(ids)s::text[], %(leases)s::text[]) AS f(id, lease)
WHERE j.id = f.id AND j.queue = %(queue)s AND j.state = 'running' AND j.lease = f.lease
  AND j.lease_expires_at >= t.now
RETURNING j.id, j.cancel_requested;

-- ── finishes ─────────────────────────────────────────────────────────────

-- name: job_finish
-- Every decision of a batch in one statement, each applied only if its lease
-- still matches (and has expired for the coordinator's, not for a worker's).
-- kind: end (a terminal state), retry (due again after delay), hand_back
-- (queued again, attempt refunded). A job someone asked to cancel is not
-- run again: a retry or hand-back of it ends cancelled. A hand-back applied
-- with a pause (hp.RetryAfter) pauses its channel until that long from now,
-- unless it is paused longer already.
WITH t AS MATERIALIZED (SELECT {schema}.clock() AS now),
done AS (
    UPDATE {schema}.jobs AS j
    SET state = CASE
            WHEN f.kind = 'end' THEN f.state
            WHEN j.cancel_requested THEN 'cancelled'
            WHEN f.kind = 'retry' THEN 'retrying'
            ELSE 'queued' END,
        finished_at = CASE WHEN f.kind = 'end' OR j.cancel_requested THEN t.now
                           ELSE j.finished_at END,
        run_at = CASE f.kind WHEN 'end' THEN j.run_at WHEN 'retry' THEN t.now + f.delay
                             ELSE t.now END,
        result = CASE WHEN f.kind = 'end' THEN f.result ELSE j.result END,
        error = CASE f.kind WHEN 'end' THEN COALESCE(f.error, j.error)
                            WHEN 'retry' THEN f.error ELSE j.error END,
        attempts = CASE WHEN f.kind = 'hand_back' THEN j.attempts - 1 ELSE j.attempts END,
        started_at = CASE WHEN f.kind = 'hand_back' THEN NULL ELSE j.started_at END,
        -- A job handed back waits again under its dedup key, unless a twin took the key
        -- while it ran.
        dedup_key = CASE WHEN f.kind = 'hand_back' AND j.dedup_key IS NOT NULL AND EXISTS (
                             SELECT 1 FROM {schema}.jobs AS t
                             WHERE t.queue = j.queue AND t.channel = j.channel
                               AND t.dedup_key = j.dedup_key AND t.started_at IS NULL
                               AND t.state IN ('waiting', 'queued'))
                         THEN NULL ELSE j.dedup_key END,
        lease = NULL, lease_expires_at = NULL  -- worker stays: who ran the last attempt
    FROM t, json_to_recordset(%(batch)s::json)
            AS f(id text, lease text, kind text, state text, result text, error text,
                 delay float8, expired boolean, pause float8)
    WHERE j.id = f.id AND j.queue = %(queue)s AND j.state = 'running' AND j.lease = f.lease
      AND (j.lease_expires_at < t.now) = f.expired
    RETURNING j.id, j.state, j.has_children, t.now, j.channel, f.kind, f.pause
),
paused AS (
    INSERT INTO {schema}.pauses AS pa (queue, channel, paused_until)
    SELECT %(queue)s, d.channel, max(d.now + d.pause) FROM done AS d
    WHERE d.kind = 'hand_back' AND d.pause > 0
    GROUP BY d.channel
    ON CONFLICT (queue, channel) DO UPDATE
    SET paused_until = GREATEST(pa.paused_until, excluded.paused_until)
)
SELECT id, state, has_children, now FROM done;

-- name: dep_children
-- The not-yet-started children of jobs that just ended, locked in id order.
SELECT d.parent, c.id, c.cascade, c.channel, c.task, c.attempts, c.state
FROM {schema}.deps AS d
JOIN {schema}.jobs AS c ON c.id = d.child
WHERE d.queue = %(queue)s AND d.parent = ANY (%(parents)s::text[])
  AND c.state IN ('waiting', 'queued')
ORDER BY c.id
FOR UPDATE OF c;

-- name: dep_release
-- One parent fewer to wait for; the last one makes a due child runnable.
UPDATE {schema}.jobs
SET parents_left = parents_left - 1,
    state = CASE WHEN parents_left = 1 AND state = 'waiting' AND run_at <= %(now)s
                 THEN 'queued' ELSE state END
WHERE id = %(id)s AND queue = %(queue)s AND state IN ('waiting', 'queued')
RETURNING state;

-- name: dep_fail
UPDATE {schema}.jobs SET state = 'failed', finished_at = %(now)s, error = %(error)s
WHERE id = %(id)s AND queue = %(queue)s AND state IN ('waiting', 'queued')
RETURNING id;

-- name: dep_forget
DELETE FROM {schema}.deps WHERE queue = %(queue)s AND parent = ANY (%(parents)s::text[]);

-- ── cancel, reads, maintenance ───────────────────────────────────────────

-- name: job_cancel_waiting
UPDATE {schema}.jobs SET state = 'cancelled', finished_at = {schema}.clock()
WHERE queue = %(queue)s AND id = %(id)s AND state IN ('waiting', 'queued', 'retrying')
RETURNING finished_at;

-- name: job_cancel_running
UPDATE {schema}.jobs SET cancel_requested = true
WHERE queue = %(queue)s AND id = %(id)s AND state = 'running';

-- name: job_get
SELECT {cols} FROM {schema}.jobs WHERE id = %(id)s AND queue = %(queue)s;

-- name: job_list
SELECT {cols} FROM {schema}.jobs
WHERE queue = %(queue)s
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(channel)s::text IS NULL OR channel = %(channel)s::text)
ORDER BY seq DESC LIMIT %(limit)s;

-- name: job_expired
-- Running jobs past their lease or max_processing; the latter get an expired
-- lease, so the worker's late report is refused.
WITH t AS MATERIALIZED (SELECT {schema}.clock() AS now),
due AS (
    SELECT j.id FROM {schema}.jobs AS j
    WHERE j.queue = %(queue)s AND j.state = 'running'
      AND (j.lease_expires_at < (SELECT now FROM t)
           OR (j.max_processing IS NOT NULL
               AND j.started_at + j.max_processing < (SELECT now FROM t)))
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {schema}.jobs AS j
SET lease_expires_at = LEAST(j.lease_expires_at, t.now - 0.000001)
FROM due, t
WHERE j.id = due.id
RETURNING {jcols};

-- name: job_release_due
WITH t AS MATERIALIZED (SELECT {schema}.clock() AS now),
due AS (
    SELECT j.id, j.state FROM {schema}.jobs AS j
    WHERE j.queue = %(queue)s AND j.state IN ('waiting', 'retrying') AND j.parents_left = 0
      AND j.run_at <= (SELECT now FROM t)
    ORDER BY j.run_at
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {schema}.jobs AS j SET state = 'queued'
FROM due
WHERE j.id = due.id
RETURNING j.id, j.channel, j.task, j.attempts, due.state;

-- name: job_delete_finished
DELETE FROM {schema}.jobs
WHERE queue = %(queue)s AND finished_at < {schema}.clock() - %(older_than)s
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
RETURNING id, channel, task, attempts, state;

-- name: turns_prune
-- Forget the round-robin marks of channels with no job left to run.
DELETE FROM {schema}.turns AS tu
WHERE tu.queue = %(queue)s
  AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                  WHERE j.queue = tu.queue AND j.channel = tu.channel
                    AND j.state IN ('waiting', 'queued', 'retrying', 'running'));

-- name: pauses_prune
-- Forget the pauses that ended.
DELETE FROM {schema}.pauses WHERE queue = %(queue)s AND paused_until <= {schema}.clock();

-- name: starts_prune
-- Drop the claim log rows out of their rate's window (all of them once the rate is
-- gone); claims only prune the logs of channels they look at.
DELETE FROM {schema}.starts AS s
WHERE s.queue = %(queue)s
  AND s.at <= {schema}.clock() - COALESCE(
      CASE WHEN s.channel = ''
           THEN (SELECT q.rate_per FROM {schema}.queues AS q WHERE q.queue = s.queue)
           ELSE (SELECT c.rate_per FROM {schema}.channels AS c
                 WHERE c.queue = s.queue AND c.channel = s.channel) END, 0);

-- name: stats_counts
SELECT channel, state, count(*) FROM {schema}.jobs WHERE queue = %(queue)s
GROUP BY channel, state;

-- name: stats_running
SELECT {cols} FROM {schema}.jobs WHERE queue = %(queue)s AND state = 'running'
ORDER BY started_at;

-- name: stats_policies
SELECT channel, max_concurrency, max_size, rate_n, rate_per FROM {schema}.channels
WHERE queue = %(queue)s
  AND (max_concurrency IS NOT NULL OR max_size IS NOT NULL OR rate_n IS NOT NULL);

-- name: stats_paused
SELECT channel, paused_until FROM {schema}.pauses
WHERE queue = %(queue)s AND paused_until > {schema}.clock();

-- name: queue_get
SELECT max_concurrency, rate_n, rate_per FROM {schema}.queues WHERE queue = %(queue)s;

-- name: channel_policy_set
-- A pause is kept apart (pauses): setting or clearing the policy keeps it.
INSERT INTO {schema}.channels (queue, channel, max_concurrency, max_size, rate_n, rate_per)
VALUES (%(queue)s, %(channel)s, %(max_concurrency)s, %(max_size)s, %(rate_n)s, %(rate_per)s)
ON CONFLICT (queue, channel) DO UPDATE
SET max_concurrency = excluded.max_concurrency, max_size = excluded.max_size,
    rate_n = excluded.rate_n, rate_per = excluded.rate_per;

-- name: channel_policy_clear
DELETE FROM {schema}.channels WHERE queue = %(queue)s AND channel = %(channel)s;

-- name: queue_limits_set
INSERT INTO {schema}.queues (queue, max_concurrency, rate_n, rate_per)
VALUES (%(queue)s, %(max_concurrency)s, %(rate_n)s, %(rate_per)s)
ON CONFLICT (queue) DO UPDATE
SET max_concurrency = excluded.max_concurrency, rate_n = excluded.rate_n,
    rate_per = excluded.rate_per;

-- name: leader_try
WITH t AS MATERIALIZED (SELECT {schema}.clock() AS now)
INSERT INTO {schema}.leaders AS l (queue, name, owner, expires_at)
SELECT %(queue)s, %(name)s, %(owner)s, t.now + %(ttl)s FROM t
ON CONFLICT (queue, name) DO UPDATE
SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE l.owner = excluded.owner OR l.expires_at < excluded.expires_at - %(ttl)s
RETURNING owner;

-- ── schedules ────────────────────────────────────────────────────────────

-- name: schedule_upsert
INSERT INTO {schema}.schedules AS s
    (queue, channel, name, spec, task, payload, priority, max_attempts, max_processing,
     next_run, created_at)
VALUES
    (%(queue)s, %(channel)s, %(name)s, %(spec)s, %(task)s, %(payload)s, %(priority)s,
     %(max_attempts)s, %(max_processing)s, %(next_run)s, {schema}.clock())
ON CONFLICT (queue, channel, name) DO UPDATE
SET spec = excluded.spec, task = excluded.task, payload = excluded.payload,
    priority = excluded.priority, max_attempts = excluded.max_attempts,
    max_processing = excluded.max_processing,
    -- Declaring the same schedule again (every start of an app) keeps its next tick.
    next_run = CASE WHEN s.spec = excluded.spec THEN s.next_run ELSE excluded.next_run END;

-- name: schedule_delete
DELETE FROM {schema}.schedules
WHERE queue = %(queue)s AND channel = %(channel)s AND name = %(name)s
RETURNING name;

-- name: schedule_list
SELECT queue, channel, name, spec, task, payload, priority, max_attempts, max_processing,
       next_run, created_at
FROM {schema}.schedules WHERE queue = %(queue)s ORDER BY channel, name;

-- name: schedule_due
SELECT queue, channel, name, spec, task, payload, priority, max_attempts, max_processing,
       next_run, created_at
FROM {schema}.schedules WHERE queue = %(queue)s AND next_run <= {schema}.clock()
ORDER BY next_run LIMIT %(limit)s;

-- name: schedule_advance
-- Compare-and-set on next_run: of several coordinators, exactly one fires a tick.
UPDATE {schema}.schedules SET next_run = %(new_next_run)s
WHERE queue = %(queue)s AND channel = %(channel)s AND name = %(name)s
  AND next_run = %(old_next_run)s
RETURNING name;

-- ── events ───────────────────────────────────────────────────────────────

-- name: event_store
SELECT first_seq, at FROM {schema}.event_store(%(queue)s, %(notify)s, %(events)s::json);

-- name: event_pend
-- A caller transaction's events: numbered by the queue's next event_store.
INSERT INTO {schema}.events_pending
    (queue, type, job_id, channel, task, attempt, at, worker, error, detail)
SELECT %(queue)s, e.type, e.job_id, e.channel, e.task, e.attempt, {schema}.clock(), e.worker,
       e.error, e.detail
FROM json_to_recordset(%(events)s::json)
     AS e(type text, job_id text, channel text, task text, attempt integer, worker text,
          error text, detail text);

-- name: event_read
SELECT seq, type, job_id, channel, task, attempt, at, worker, error, detail
FROM {schema}.events WHERE queue = %(queue)s AND seq > %(after)s
ORDER BY seq LIMIT %(limit)s;

-- name: event_last
SELECT COALESCE((SELECT last FROM {schema}.event_seqs WHERE queue = %(queue)s), 0);

-- name: event_since
SELECT COALESCE((SELECT seq FROM {schema}.events WHERE queue = %(queue)s AND at < %(time)s
                 ORDER BY seq DESC LIMIT 1), 0);

-- name: event_trim
-- Old events are a prefix of the queue's events (times rise with seqs).
DELETE FROM {schema}.events
WHERE queue = %(queue)s
  AND seq < COALESCE(
      (SELECT seq FROM {schema}.events WHERE queue = %(queue)s
         AND at >= {schema}.clock() - %(older_than)s
       ORDER BY seq LIMIT 1),
      (SELECT max(seq) FROM {schema}.events WHERE queue = %(queue)s));

-- ── the Limiter: one call per step (see 0002_limiter.sql) ────────────────

-- name: limiter_acquire
SELECT o_token, o_expires_at, o_ahead, o_retry_after, o_woken
FROM {schema}.limiter_acquire(%(name)s, %(key)s, %(limit)s::bigint, %(rate)s::bigint,
                              %(per)s::float8, %(lease)s::float8, %(tickets)s::text[],
                              %(weights)s::bigint[], %(wait)s, %(channel)s);

-- name: limiter_renew
SELECT {schema}.limiter_renew(%(name)s, %(key)s, %(lease)s::float8, %(tokens)s::bigint[]);

-- name: limiter_release
SELECT o_done, o_woken
FROM {schema}.limiter_release(%(name)s, %(key)s, %(limit)s::bigint, %(rate)s::bigint,
                              %(per)s::float8, %(lease)s::float8, %(token)s::bigint);

-- name: limiter_cancel
-- Give up the tickets %(tickets)s of one key, one after the other, in one round
-- trip; the tickets to wake, all together.
SELECT COALESCE(array_agg(woken), '{}')
FROM (SELECT unnest({schema}.limiter_cancel(%(name)s, %(key)s, %(limit)s::bigint,
                                            %(rate)s::bigint, %(per)s::float8,
                                            %(lease)s::float8, ticket)) AS woken
      FROM unnest(%(tickets)s::text[]) WITH ORDINALITY AS t(ticket, n)) AS w;

-- name: limiter_stats
SELECT o_holders, o_held, o_waiters, o_recent
FROM {schema}.limiter_stats(%(name)s, %(key)s, %(rate)s::bigint, %(per)s::float8);
