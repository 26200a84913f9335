-- Every statement the SQLite backend runs, by name. Parameters are named.

-- name: migrations_create
CREATE TABLE IF NOT EXISTS hydrapool_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
);

-- name: migrations_applied
SELECT version FROM hydrapool_migrations ORDER BY version;

-- name: migration_record
INSERT INTO hydrapool_migrations (version, name, applied_at) VALUES (:version, :name, :now);

-- name: job_insert
INSERT INTO hydrapool_jobs
    (id, queue, task, channel, state, priority, max_attempts, payload,
     created_at, run_at, finished_at, error, max_processing, dedup_key,
     parents_left, cascade)
VALUES
    (:id, :queue, :task, :channel, :state, :priority, :max_attempts, :payload,
     :now, :run_at, :finished_at, :error, :max_processing, :dedup_key,
     :parents_left, :cascade);

-- name: dep_parent_state
SELECT state, started_at FROM hydrapool_jobs WHERE id = :id AND +queue = :queue;

-- name: dep_forget
DELETE FROM hydrapool_deps
WHERE queue = :queue AND parent IN (SELECT value FROM json_each(:parents));

-- name: dep_insert
INSERT OR IGNORE INTO hydrapool_deps (queue, parent, child) VALUES (:queue, :parent, :child);

-- name: dep_children
-- The waiting children of a batch of jobs that just ended (one query per batch).
SELECT d.parent, c.id, c.cascade, c.channel, c.task, c.attempts, c.state FROM hydrapool_deps AS d
JOIN hydrapool_jobs AS c ON c.id = d.child
WHERE d.queue = :queue AND d.parent IN (SELECT value FROM json_each(:parents))
  AND c.state IN ('waiting', 'queued');

-- name: dep_release
-- One parent fewer to wait for; the last one makes a due child runnable.
UPDATE hydrapool_jobs
SET parents_left = parents_left - 1,
    state = CASE WHEN parents_left = 1 AND state = 'waiting' AND run_at <= :now
                 THEN 'queued' ELSE state END
WHERE id = :id AND +queue = :queue AND state IN ('waiting', 'queued')
RETURNING state;

-- name: dep_fail
UPDATE hydrapool_jobs SET state = 'failed', finished_at = :now, error = :error
WHERE id = :id AND +queue = :queue AND state IN ('waiting', 'queued');

-- name: job_dedup_find
SELECT * FROM hydrapool_jobs INDEXED BY hydrapool_jobs_dedup
WHERE queue = :queue AND channel = :channel AND dedup_key = :dedup_key
  AND started_at IS NULL AND state IN ('waiting', 'queued');

-- name: channel_touch
INSERT OR IGNORE INTO hydrapool_channels (queue, channel) VALUES (:queue, :channel);

-- name: channel_size
SELECT COUNT(*) FROM hydrapool_jobs INDEXED BY hydrapool_jobs_head
WHERE queue = :queue AND channel = :channel AND state IN ('waiting', 'queued', 'retrying');

-- name: channel_policy_get
SELECT max_concurrency, max_size FROM hydrapool_channels WHERE queue = :queue AND channel = :channel;

-- name: channel_meta
-- Only channels not paused with a due job (one index probe each, inside SQLite).
SELECT c.channel, c.max_concurrency, c.last_served, c.rate_n, c.rate_per
FROM hydrapool_channels AS c
WHERE c.queue = :queue AND c.paused_until <= :now
  AND EXISTS (
      SELECT 1 FROM hydrapool_jobs AS j INDEXED BY hydrapool_jobs_head
      WHERE j.queue = c.queue AND j.channel = c.channel
        AND j.state IN ('waiting', 'queued', 'retrying') AND j.run_at <= :now
        AND j.parents_left = 0
  );

-- name: channel_prune
-- Forget channels with no policy, no pause and no job that has not ended (retention pass).
DELETE FROM hydrapool_channels
WHERE queue = :queue AND max_concurrency IS NULL AND max_size IS NULL AND rate_n IS NULL
  AND paused_until <= :now
  AND NOT EXISTS (
      SELECT 1 FROM hydrapool_jobs AS j
      WHERE j.queue = hydrapool_channels.queue AND j.channel = hydrapool_channels.channel
        AND j.state IN ('waiting', 'queued', 'retrying', 'running')
  );

-- name: channel_running
SELECT channel, COUNT(*) FROM hydrapool_jobs
WHERE queue = :queue AND state = 'running' GROUP BY channel;

-- name: channel_served
UPDATE hydrapool_channels SET last_served = :mark WHERE queue = :queue AND channel = :channel;

-- name: queue_get
SELECT max_concurrency, counter, rate_n, rate_per FROM hydrapool_queues WHERE queue = :queue;

-- name: queue_counter_set
INSERT INTO hydrapool_queues (queue, counter) VALUES (:queue, :counter)
ON CONFLICT (queue) DO UPDATE SET counter = excluded.counter;

-- name: queue_running
SELECT COUNT(*) FROM hydrapool_jobs WHERE queue = :queue AND state = 'running';

-- name: rate_prune
-- A rate's log (channel '': the queue's): drop the claims that left the window.
DELETE FROM hydrapool_rate_log WHERE queue = :queue AND channel = :channel AND at <= :cutoff;

-- name: rate_count
SELECT COALESCE(SUM(n), 0) FROM hydrapool_rate_log WHERE queue = :queue AND channel = :channel;

-- name: rate_log
-- Positional: (queue, channel, at, n); two steps at the same instant share the row.
INSERT INTO hydrapool_rate_log (queue, channel, at, n) VALUES (?, ?, ?, ?)
ON CONFLICT (queue, channel, at) DO UPDATE SET n = n + excluded.n;

-- name: channel_pause
-- Pause a channel until :until, unless it is paused longer already.
INSERT INTO hydrapool_channels (queue, channel, paused_until) VALUES (:queue, :channel, :until)
ON CONFLICT (queue, channel) DO UPDATE
SET paused_until = MAX(paused_until, excluded.paused_until);

-- name: pause_next
-- When the queue's next pause ends (NULL: none); `paused_until > 0` picks the partial index.
SELECT MIN(paused_until) FROM hydrapool_channels
WHERE queue = :queue AND paused_until > 0 AND paused_until > :now;

-- name: claim_heads
SELECT priority, id, state FROM hydrapool_jobs INDEXED BY hydrapool_jobs_head
WHERE queue = :queue AND channel = :channel
  AND state IN ('waiting', 'queued', 'retrying') AND run_at <= :now AND parents_left = 0
ORDER BY priority DESC, seq
LIMIT :limit;

-- name: job_claim
UPDATE hydrapool_jobs
SET state = 'running', attempts = attempts + 1, started_at = :now, lease = :lease,
    lease_expires_at = :expires, worker = :worker
WHERE id IN (SELECT value FROM json_each(:ids))
  AND +queue = :queue  -- the unary + keeps the planner on the id index
  AND state IN ('waiting', 'queued', 'retrying') AND parents_left = 0
RETURNING *;

-- name: job_heartbeat
UPDATE hydrapool_jobs SET lease_expires_at = :expires
WHERE queue = :queue AND id = :id AND state = 'running' AND lease = :lease
  AND lease_expires_at >= :now
RETURNING id, cancel_requested;

-- name: job_finish_end
UPDATE hydrapool_jobs
SET state = json_extract(f.value, '$.state'),
    finished_at = :now,
    result = json_extract(f.value, '$.result'),
    error = COALESCE(json_extract(f.value, '$.error'), hydrapool_jobs.error),
    lease = NULL, lease_expires_at = NULL  -- worker stays: who ran the last attempt
FROM json_each(:batch) AS f
WHERE hydrapool_jobs.id = json_extract(f.value, '$.id')
  AND +hydrapool_jobs.queue = :queue
  AND hydrapool_jobs.state = 'running'
  AND hydrapool_jobs.lease = json_extract(f.value, '$.lease')
  AND (hydrapool_jobs.lease_expires_at < :now) = json_extract(f.value, '$.expired')
RETURNING hydrapool_jobs.id, hydrapool_jobs.state;

-- name: job_finish_retry
-- A job someone asked to cancel is not tried again: it ends cancelled.
UPDATE hydrapool_jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'retrying' END,
    finished_at = CASE WHEN cancel_requested THEN :now ELSE finished_at END,
    run_at = :now + json_extract(f.value, '$.delay'),
    error = json_extract(f.value, '$.error'),
    lease = NULL, lease_expires_at = NULL
FROM json_each(:batch) AS f
WHERE hydrapool_jobs.id = json_extract(f.value, '$.id')
  AND +hydrapool_jobs.queue = :queue
  AND hydrapool_jobs.state = 'running'
  AND hydrapool_jobs.lease = json_extract(f.value, '$.lease')
  AND (hydrapool_jobs.lease_expires_at < :now) = json_extract(f.value, '$.expired')
RETURNING hydrapool_jobs.id, hydrapool_jobs.state;

-- name: job_finish_hand_back
UPDATE hydrapool_jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested THEN :now ELSE finished_at END,
    run_at = :now, attempts = attempts - 1, started_at = NULL,
    -- It waits again under its dedup key, unless a twin took the key while it ran.
    dedup_key = CASE WHEN EXISTS (
        SELECT 1 FROM hydrapool_jobs AS t
        WHERE t.queue = hydrapool_jobs.queue AND t.channel = hydrapool_jobs.channel
          AND t.dedup_key = hydrapool_jobs.dedup_key AND t.started_at IS NULL
          AND t.state IN ('waiting', 'queued')) THEN NULL ELSE dedup_key END,
    lease = NULL, lease_expires_at = NULL
FROM json_each(:batch) AS f
WHERE hydrapool_jobs.id = json_extract(f.value, '$.id')
  AND +hydrapool_jobs.queue = :queue
  AND hydrapool_jobs.state = 'running'
  AND hydrapool_jobs.lease = json_extract(f.value, '$.lease')
  AND (hydrapool_jobs.lease_expires_at < :now) = json_extract(f.value, '$.expired')
RETURNING hydrapool_jobs.id, hydrapool_jobs.state, hydrapool_jobs.channel;  -- to pause

-- name: job_cancel_waiting
UPDATE hydrapool_jobs SET state = 'cancelled', finished_at = :now
WHERE queue = :queue AND id = :id AND state IN ('waiting', 'queued', 'retrying');

-- name: job_cancel_running
UPDATE hydrapool_jobs SET cancel_requested = 1
WHERE queue = :queue AND id = :id AND state = 'running';

-- name: job_get
SELECT * FROM hydrapool_jobs WHERE queue = :queue AND id = :id;

-- name: job_list
SELECT * FROM hydrapool_jobs
WHERE queue = :queue
  AND (:state IS NULL OR state = :state)
  AND (:channel IS NULL OR channel = :channel)
ORDER BY seq DESC LIMIT :limit;

-- name: job_expired
SELECT * FROM hydrapool_jobs
WHERE queue = :queue AND state = 'running'
  AND (lease_expires_at < :now
       OR (max_processing IS NOT NULL AND started_at + max_processing < :now))
LIMIT :limit;

-- name: job_expire_lease
UPDATE hydrapool_jobs SET lease_expires_at = :now - 0.000001
WHERE queue = :queue AND id = :id AND state = 'running' AND lease_expires_at >= :now;

-- name: job_release_due
-- One state per statement, so each moved job says where it came from.
UPDATE hydrapool_jobs INDEXED BY hydrapool_jobs_due SET state = 'queued'
WHERE queue = :queue AND state IN ('waiting', 'retrying') AND parents_left = 0  -- the index's
  AND state = :state AND run_at <= :now
RETURNING id, channel, task, attempts;

-- name: job_delete_finished
DELETE FROM hydrapool_jobs
WHERE queue = :queue AND finished_at < :cutoff AND (:state IS NULL OR state = :state)
RETURNING id, channel, task, attempts, state;

-- name: stats_counts
SELECT channel, state, COUNT(*) FROM hydrapool_jobs WHERE queue = :queue GROUP BY channel, state;

-- name: stats_running
SELECT * FROM hydrapool_jobs WHERE queue = :queue AND state = 'running' ORDER BY started_at;

-- name: stats_policies
SELECT channel, max_concurrency, max_size, rate_n, rate_per FROM hydrapool_channels
WHERE queue = :queue
  AND (max_concurrency IS NOT NULL OR max_size IS NOT NULL OR rate_n IS NOT NULL);

-- name: stats_paused
SELECT channel, paused_until FROM hydrapool_channels
WHERE queue = :queue AND paused_until > :now;

-- name: channel_policy_set
-- A pause is not part of the policy: it stays.
INSERT INTO hydrapool_channels (queue, channel, max_concurrency, max_size, rate_n, rate_per)
VALUES (:queue, :channel, :max_concurrency, :max_size, :rate_n, :rate_per)
ON CONFLICT (queue, channel) DO UPDATE
SET max_concurrency = excluded.max_concurrency, max_size = excluded.max_size,
    rate_n = excluded.rate_n, rate_per = excluded.rate_per;

-- name: channel_policy_clear
UPDATE hydrapool_channels SET max_concurrency = NULL, max_size = NULL, rate_n = NULL, rate_per = NULL
WHERE queue = :queue AND channel = :channel;

-- name: queue_limits_set
INSERT INTO hydrapool_queues (queue, max_concurrency, rate_n, rate_per)
VALUES (:queue, :max_concurrency, :rate_n, :rate_per)
ON CONFLICT (queue) DO UPDATE
SET max_concurrency = excluded.max_concurrency, rate_n = excluded.rate_n,
    rate_per = excluded.rate_per;

-- name: leader_try
INSERT INTO hydrapool_leaders (queue, name, owner, expires_at)
VALUES (:queue, :name, :owner, :now + :ttl)
ON CONFLICT (queue, name) DO UPDATE
SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE hydrapool_leaders.owner = excluded.owner OR hydrapool_leaders.expires_at < :now
RETURNING owner;

-- name: data_version
PRAGMA data_version;

-- name: schedule_upsert
INSERT INTO hydrapool_schedules
    (queue, channel, name, spec, task, payload, priority, max_attempts, max_processing,
     next_run, created_at)
VALUES
    (:queue, :channel, :name, :spec, :task, :payload, :priority, :max_attempts,
     :max_processing, :next_run, :now)
ON CONFLICT (queue, channel, name) DO UPDATE
SET spec = excluded.spec, task = excluded.task, payload = excluded.payload,
    priority = excluded.priority, max_attempts = excluded.max_attempts,
    max_processing = excluded.max_processing,
    -- Declaring the same schedule again (every start of an app) keeps its next tick.
    next_run = CASE WHEN hydrapool_schedules.spec = excluded.spec
                    THEN hydrapool_schedules.next_run ELSE excluded.next_run END;

-- name: schedule_delete
DELETE FROM hydrapool_schedules WHERE queue = :queue AND channel = :channel AND name = :name;

-- name: schedule_list
SELECT * FROM hydrapool_schedules WHERE queue = :queue ORDER BY channel, name;

-- name: schedule_due
SELECT * FROM hydrapool_schedules WHERE queue = :queue AND next_run <= :now
ORDER BY next_run LIMIT :limit;

-- name: schedule_advance
-- Compare-and-set on next_run: of several coordinators, exactly one fires a tick.
UPDATE hydrapool_schedules SET next_run = :new_next_run
WHERE queue = :queue AND channel = :channel AND name = :name AND next_run = :old_next_run;

-- name: event_insert
-- Positional: executemany binds a tuple per event faster than a dict.
INSERT INTO hydrapool_events
    (queue, type, job_id, channel, task, attempt, at, worker, error, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: event_last_rowid
SELECT last_insert_rowid();

-- name: event_last
SELECT COALESCE(MAX(seq), 0) FROM hydrapool_events WHERE queue = :queue;

-- name: event_since
-- Reads backwards only over the events stored since :time.
SELECT COALESCE(
    (SELECT seq FROM hydrapool_events WHERE at < :time ORDER BY seq DESC LIMIT 1), 0);

-- name: event_read
SELECT * FROM hydrapool_events WHERE seq > :after AND queue = :queue ORDER BY seq LIMIT :limit;

-- name: event_trim
-- Events are stored in time order, so the old ones are a prefix of the table:
-- finding where it ends reads only the rows about to be deleted. The newest
-- row always stays: new seqs continue from it (see 0005_events.sql).
DELETE FROM hydrapool_events
WHERE queue = :queue
  AND seq < COALESCE(
      (SELECT seq FROM hydrapool_events WHERE queue = :queue AND at >= :cutoff
       ORDER BY seq LIMIT 1),
      (SELECT MAX(seq) FROM hydrapool_events WHERE queue = :queue));
