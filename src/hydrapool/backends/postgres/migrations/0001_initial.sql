-- hydrapool PostgreSQL schema, version 1. Everything lives in one schema
-- ({schema}, default "hydrapool"), so several hydrapools share a database;
-- the `queue` column namespaces the queues of one hydrapool. Times are epoch
-- seconds (float8) of the server's clock, as in every backend.

CREATE TABLE {schema}.jobs (
    id               text             PRIMARY KEY,
    seq              bigint           GENERATED ALWAYS AS IDENTITY,  -- arrival order (FIFO)
    queue            text             NOT NULL,
    task             text             NOT NULL,
    channel          text             NOT NULL,
    state            text             NOT NULL,
    priority         integer          NOT NULL DEFAULT 0,
    attempts         integer          NOT NULL DEFAULT 0,
    max_attempts     integer          NOT NULL DEFAULT 1,
    payload          text             NOT NULL,
    result           text,
    error            text,
    created_at       double precision NOT NULL,
    run_at           double precision NOT NULL,
    started_at       double precision,
    finished_at      double precision,
    lease            text,
    lease_expires_at double precision,
    worker           text,
    max_processing   double precision,
    cancel_requested boolean          NOT NULL DEFAULT false,
    dedup_key        text,
    parents_left     integer          NOT NULL DEFAULT 0,
    cascade          boolean          NOT NULL DEFAULT true,
    has_children     boolean          NOT NULL DEFAULT false  -- a finish looks for children only then
) WITH (fillfactor = 80);

-- Jobs not yet running, per channel, runnable first and best first: a claim
-- reads each channel's head straight off it, channel sizes are counted on it,
-- and a skip scan over it lists the channels that have work. Few indexes on
-- purpose: each is rewritten at every claim and every finish.
CREATE INDEX jobs_head ON {schema}.jobs (queue, channel, parents_left, priority DESC, seq)
    WHERE state IN ('waiting', 'queued', 'retrying');
-- Delayed and backing-off jobs by due time, for the coordinator's release pass.
CREATE INDEX jobs_due ON {schema}.jobs (queue, run_at)
    WHERE state IN ('waiting', 'retrying') AND parents_left = 0;
CREATE INDEX jobs_running ON {schema}.jobs (queue, lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_finished ON {schema}.jobs (queue, finished_at) WHERE finished_at IS NOT NULL;
-- At most one not-yet-started job per (queue, channel, dedup key).
CREATE UNIQUE INDEX jobs_dedup ON {schema}.jobs (queue, channel, dedup_key)
    WHERE dedup_key IS NOT NULL AND started_at IS NULL AND state IN ('waiting', 'queued');

-- Channel limits: a row only for channels with a policy.
CREATE TABLE {schema}.channels (
    queue           text    NOT NULL,
    channel         text    NOT NULL,
    max_concurrency integer,
    max_size        integer,
    PRIMARY KEY (queue, channel)
);

-- Round-robin marks, written by claims only (apart from the policies, so an
-- enqueue never waits for a claim's row lock).
CREATE TABLE {schema}.turns (
    queue       text   NOT NULL,
    channel     text   NOT NULL,
    last_served bigint NOT NULL,
    PRIMARY KEY (queue, channel)
);

CREATE TABLE {schema}.queues (
    queue           text   PRIMARY KEY,
    max_concurrency integer,
    counter         bigint NOT NULL DEFAULT 0  -- serve counter for round-robin
);

CREATE TABLE {schema}.leaders (
    queue      text             NOT NULL,
    name       text             NOT NULL,
    owner      text             NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (queue, name)
);

CREATE TABLE {schema}.deps (
    queue  text NOT NULL,
    parent text NOT NULL,
    child  text NOT NULL,
    PRIMARY KEY (queue, parent, child)
);

CREATE TABLE {schema}.schedules (
    queue          text             NOT NULL,
    channel        text             NOT NULL,
    name           text             NOT NULL,
    spec           text             NOT NULL,  -- JSON: {"cron": ..., "tz": ...} or {"every": s}
    task           text             NOT NULL,
    payload        text             NOT NULL,
    priority       integer          NOT NULL DEFAULT 0,
    max_attempts   integer          NOT NULL DEFAULT 1,
    max_processing double precision,
    next_run       double precision NOT NULL,
    created_at     double precision NOT NULL,
    PRIMARY KEY (queue, channel, name)
);
CREATE INDEX schedules_due ON {schema}.schedules (queue, next_run);

-- Events: every job transition, numbered per queue in commit order (see
-- event_store). Subscribers follow them by seq; the coordinator trims by age.
CREATE TABLE {schema}.events (
    queue   text             NOT NULL,
    seq     bigint           NOT NULL,
    type    text             NOT NULL,
    job_id  text             NOT NULL,
    channel text             NOT NULL,
    task    text             NOT NULL,
    attempt integer          NOT NULL,
    at      double precision NOT NULL,
    worker  text,
    error   text,
    detail  text,
    PRIMARY KEY (queue, seq)
);

-- The last seq handed out per queue. Its row lock, held from numbering to
-- commit, makes seqs commit in order: a reader that saw seq n will never
-- later find a smaller one appear.
CREATE TABLE {schema}.event_seqs (
    queue text   PRIMARY KEY,
    last  bigint NOT NULL
);

CREATE FUNCTION {schema}.clock() RETURNS double precision
LANGUAGE sql VOLATILE AS $$ SELECT extract(epoch FROM clock_timestamp())::float8 $$;

-- Events of caller transactions wait here, unnumbered: numbering them in the
-- caller's transaction would hold the queue's numbering lock until the caller
-- commits. The next event_store of the queue (a claim, a finish, or the
-- coordinator's pass within a second) numbers them first and dates them then,
-- so times keep rising with seqs (streams start by time, trims cut by time).
CREATE TABLE {schema}.events_pending (
    id      bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue   text             NOT NULL,
    type    text             NOT NULL,
    job_id  text             NOT NULL,
    channel text             NOT NULL,
    task    text             NOT NULL,
    attempt integer          NOT NULL,
    at      double precision NOT NULL,
    worker  text,
    error   text,
    detail  text
);
CREATE INDEX events_pending_queue ON {schema}.events_pending (queue, id);

-- Store one step's events: take the queue's numbering lock, number what
-- caller transactions left pending, then these, dated after the lock was
-- taken (so times rise with seqs), and NOTIFY subscribers at commit.
-- Returns the first seq of these events and their time.
CREATE FUNCTION {schema}.event_store(p_queue text, p_channel text, p_events json)
RETURNS TABLE (first_seq bigint, at double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_n     integer := COALESCE(json_array_length(p_events), 0);
    v_moved integer;
    v_last  bigint;
    v_now   double precision;
BEGIN
    INSERT INTO {schema}.event_seqs AS s (queue, last) VALUES (p_queue, 0)
    ON CONFLICT (queue) DO UPDATE SET last = s.last
    RETURNING s.last INTO v_last;
    v_now := {schema}.clock();
    WITH p AS (
        DELETE FROM {schema}.events_pending AS e WHERE e.queue = p_queue RETURNING e.*
    )
    INSERT INTO {schema}.events
        (queue, seq, type, job_id, channel, task, attempt, at, worker, error, detail)
    SELECT p_queue, v_last + row_number() OVER (ORDER BY p.id), p.type, p.job_id, p.channel,
           p.task, p.attempt, v_now, p.worker, p.error, p.detail
    FROM p;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    v_last := v_last + v_moved;
    IF v_n > 0 THEN
        INSERT INTO {schema}.events
            (queue, seq, type, job_id, channel, task, attempt, at, worker, error, detail)
        SELECT p_queue, v_last + e.ord, e.type, e.job_id, e.channel, e.task, e.attempt, v_now,
               e.worker, e.error, e.detail
        FROM ROWS FROM (json_to_recordset(p_events)
                        AS (type text, job_id text, channel text, task text, attempt integer,
                            worker text, error text, detail text)) WITH ORDINALITY
             AS e(type, job_id, channel, task, attempt, worker, error, detail, ord);
    END IF;
    IF v_moved + v_n > 0 THEN
        UPDATE {schema}.event_seqs SET last = v_last + v_n WHERE queue = p_queue;
        PERFORM pg_notify(p_channel, p_queue || ' ' || (v_last + v_n));
    END IF;
    first_seq := v_last + 1;
    at := v_now;
    RETURN NEXT;
END
$$;

-- The common enqueue in one call (one round trip with its commit): jobs with
-- no dedup key, no parents and no absolute run_at, into channels with no
-- max_size. Returns NULL, having done nothing, when a channel of the batch
-- has a max_size: the caller then takes the general path. The core's events
-- for the jobs come in too (they do not depend on the clock). Jobs and events
-- arrive as JSON arrays: the server unpacks them faster than the driver
-- builds one array parameter per column.
CREATE FUNCTION {schema}.enqueue(
    p_queue text, p_work text, p_notify text, p_channels text[], p_queued boolean,
    p_jobs json, p_events json
) RETURNS TABLE (now double precision, first_seq bigint, at double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_now double precision;
BEGIN
    IF EXISTS (SELECT 1 FROM {schema}.channels AS c
               WHERE c.queue = p_queue AND c.channel = ANY (p_channels)
                 AND c.max_size IS NOT NULL) THEN
        RETURN;
    END IF;
    v_now := {schema}.clock();
    INSERT INTO {schema}.jobs
        (id, queue, task, channel, state, priority, max_attempts, payload, created_at,
         run_at, max_processing)
    SELECT n.id, p_queue, n.task, n.channel,
           CASE WHEN n.delay > 0 THEN 'waiting' ELSE 'queued' END, n.priority,
           n.max_attempts, n.payload, v_now, v_now + n.delay, n.max_processing
    FROM json_to_recordset(p_jobs)
         AS n(id text, task text, channel text, priority integer, max_attempts integer,
              payload text, delay float8, max_processing float8);
    IF p_queued THEN
        PERFORM pg_notify(p_work, p_queue);
    END IF;
    now := v_now;
    SELECT s.first_seq, s.at INTO first_seq, at
    FROM {schema}.event_store(p_queue, p_notify, p_events) AS s;
    RETURN NEXT;
END
$$;

-- A claim in one call (one round trip with its commit). Claims of a queue
-- take turns on an advisory lock (transaction-scoped: fine behind PgBouncer);
-- each statement below reads a snapshot taken after it was granted, so the
-- running counts include every earlier claim. Then: the channels with work (a
-- skip scan of jobs_head), each channel's free places, its head jobs (locked,
-- skipping rows another transaction holds), priority first and round-robin
-- over channels up to the free slots; the chosen jobs become running and the
-- round-robin marks move. The claim's events follow the core's rule for
-- claims (hydrapool.queue.events.for_claims: "released" or "unlocked" for a
-- job claimed straight from waiting or retrying, then "dequeued"); the
-- conformance suite checks the two agree. Returns the claimed jobs as JSON,
-- in claim order, and the events' first seq, time and count (p_events:
-- store events at all).
CREATE FUNCTION {schema}.claim(
    p_queue text, p_key bigint, p_limit bigint, p_channels text[], p_lease text,
    p_duration double precision, p_worker text, p_notify text, p_events boolean
) RETURNS TABLE (jobs json, first_seq bigint, at double precision, events integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_jobs   json;
    v_events json;
BEGIN
    PERFORM pg_advisory_xact_lock(p_key);
    WITH RECURSIVE
    t AS MATERIALIZED (SELECT {schema}.clock() AS now),
    q AS MATERIALIZED (
        SELECT (SELECT max_concurrency FROM {schema}.queues WHERE queue = p_queue) AS cap,
               COALESCE((SELECT counter FROM {schema}.queues WHERE queue = p_queue), 0) AS counter
    ),
    slots AS MATERIALIZED (
        SELECT GREATEST(CASE WHEN q.cap IS NULL THEN p_limit::bigint
                             ELSE LEAST(p_limit::bigint, q.cap - (
                                 SELECT count(*) FROM {schema}.jobs
                                 WHERE queue = p_queue AND state = 'running'))
                        END, 0) AS n
        FROM q
    ),
    ch (channel) AS (
        (SELECT channel FROM {schema}.jobs
         WHERE queue = p_queue AND state IN ('waiting', 'queued', 'retrying')
         ORDER BY channel LIMIT 1)
        UNION ALL
        SELECT (SELECT j.channel FROM {schema}.jobs AS j
                WHERE j.queue = p_queue AND j.state IN ('waiting', 'queued', 'retrying')
                  AND j.channel > ch.channel
                ORDER BY j.channel LIMIT 1)
        FROM ch WHERE ch.channel IS NOT NULL
    ),
    running AS MATERIALIZED (
        SELECT channel, count(*) AS n FROM {schema}.jobs
        WHERE queue = p_queue AND state = 'running' GROUP BY channel
    ),
    chan AS MATERIALIZED (
        SELECT ch.channel, COALESCE(tu.last_served, 0) AS last_served,
               p.max_concurrency - COALESCE(r.n, 0) AS capacity  -- NULL: unlimited
        FROM ch
        LEFT JOIN {schema}.channels AS p ON p.queue = p_queue AND p.channel = ch.channel
        LEFT JOIN {schema}.turns AS tu ON tu.queue = p_queue AND tu.channel = ch.channel
        LEFT JOIN running AS r ON r.channel = ch.channel
        WHERE ch.channel IS NOT NULL
          AND (p_channels::text[] IS NULL OR ch.channel = ANY (p_channels::text[]))
    ),
    cand AS MATERIALIZED (
        SELECT c.channel, c.last_served, h.id, h.state, h.priority,
               row_number() OVER (PARTITION BY c.channel ORDER BY h.priority DESC, h.seq) AS rn
        FROM chan AS c
        CROSS JOIN slots
        CROSS JOIN LATERAL (
            SELECT j.id, j.state, j.priority, j.seq FROM {schema}.jobs AS j
            WHERE j.queue = p_queue AND j.channel = c.channel AND j.parents_left = 0
              AND j.state IN ('waiting', 'queued', 'retrying')
              AND j.run_at <= (SELECT now FROM t)
            ORDER BY j.priority DESC, j.seq
            LIMIT GREATEST(LEAST(COALESCE(c.capacity, slots.n), slots.n), 0)
            FOR UPDATE SKIP LOCKED
        ) AS h
    ),
    chosen AS MATERIALIZED (
        SELECT id, state, channel,
               row_number() OVER (ORDER BY priority DESC, rn, last_served, channel) AS pos
        FROM cand
        ORDER BY priority DESC, rn, last_served, channel
        LIMIT (SELECT n FROM slots)
    ),
    claimed AS (
        UPDATE {schema}.jobs AS j
        SET state = 'running', attempts = j.attempts + 1, started_at = t.now, lease = p_lease,
            lease_expires_at = t.now + p_duration, worker = p_worker
        FROM chosen, t
        WHERE j.id = chosen.id
        RETURNING chosen.pos, chosen.state AS was, j.id, j.queue, j.task, j.channel, j.state,
                  j.priority, j.attempts, j.max_attempts, j.payload, j.created_at, j.run_at, j.started_at,
                  j.finished_at, j.result, j.error, j.lease, j.lease_expires_at, j.worker,
                  j.max_processing, j.cancel_requested, j.dedup_key
    ),
    marks AS (
        INSERT INTO {schema}.turns AS tu (queue, channel, last_served)
        SELECT p_queue, channel, (SELECT counter FROM q) + max(pos) FROM chosen GROUP BY channel
        ON CONFLICT (queue, channel) DO UPDATE SET last_served = excluded.last_served
    ),
    counter AS (
        INSERT INTO {schema}.queues AS qq (queue, counter)
        SELECT p_queue, (SELECT counter FROM q) + count(*) FROM chosen HAVING count(*) > 0
        ON CONFLICT (queue) DO UPDATE SET counter = excluded.counter
    )
    SELECT json_agg(claimed ORDER BY pos) INTO v_jobs FROM claimed;
    IF v_jobs IS NULL OR NOT p_events THEN
        jobs := COALESCE(v_jobs, '[]');
        events := 0;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT json_agg(e ORDER BY e.pos, e.step) INTO v_events FROM (
        SELECT c.pos, 0 AS step,
               CASE c.was WHEN 'waiting' THEN 'released' ELSE 'unlocked' END AS type,
               c.id AS job_id, c.channel, c.task, c.attempts - 1 AS attempt,
               NULL::text AS worker, NULL::text AS error, NULL::text AS detail
        FROM json_to_recordset(v_jobs)
             AS c(pos bigint, was text, id text, channel text, task text, attempts integer)
        WHERE c.was IN ('waiting', 'retrying')
        UNION ALL
        SELECT c.pos, 1, 'dequeued', c.id, c.channel, c.task, c.attempts, p_worker, NULL, NULL
        FROM json_to_recordset(v_jobs)
             AS c(pos bigint, was text, id text, channel text, task text, attempts integer)
    ) AS e;
    jobs := v_jobs;
    events := json_array_length(v_events);
    SELECT s.first_seq, s.at INTO first_seq, at
    FROM {schema}.event_store(p_queue, p_notify, v_events) AS s;
    RETURN NEXT;
END
$$;
