-- hydrapool PostgreSQL schema, version 3: rates and pauses inside the queue.
-- A channel's and the queue's rate (at most rate_n job starts in any window
-- of rate_per seconds) is enforced by the claim function, next to
-- max_concurrency; a channel pause (a task's hp.RetryAfter, stored by the
-- finish that hands its job back) makes claims skip the channel until then.

-- The rates are part of the limits: set and cleared with them.
ALTER TABLE {schema}.channels ADD COLUMN rate_n integer, ADD COLUMN rate_per double precision;
ALTER TABLE {schema}.queues ADD COLUMN rate_n integer, ADD COLUMN rate_per double precision;

-- Paused channels. Apart from the policies, so setting or clearing a policy
-- keeps a pause. A claim reads the queue's rows still paused (one index range);
-- rows whose pause ended stay until the queue's maintenance pass deletes them.
CREATE TABLE {schema}.pauses (
    queue        text             NOT NULL,
    channel      text             NOT NULL,
    paused_until double precision NOT NULL,
    PRIMARY KEY (queue, channel)
);

-- The claim log of the channels and queues that have a rate: how many jobs
-- each claim step took (the jobs of one step share its instant, so they share
-- a row). Channel '' is the queue's own log (a channel name is never empty).
-- A claim counts the rows of its window (an index range from now - rate_per
-- on), deletes the older ones of the logs it looked at and adds its own.
CREATE TABLE {schema}.starts (
    queue   text             NOT NULL,
    channel text             NOT NULL,
    at      double precision NOT NULL,
    n       integer          NOT NULL,
    PRIMARY KEY (queue, channel, at)
);

-- The claim of 0001, with rates and pauses: a paused channel is not listed;
-- a channel's free places are the fewest its max_concurrency and its rate
-- allow (LEAST skips NULL: no limit), the claim's slots the fewest the
-- worker, the queue's max_concurrency and the queue's rate allow. A rate's
-- log is read only when the channel or the queue has a rate, and written (in
-- a second statement, by index) only then, so a queue without rates costs
-- what it did, plus the look at its pauses.
CREATE OR REPLACE FUNCTION {schema}.claim(
    p_queue text, p_key bigint, p_limit bigint, p_channels text[], p_lease text,
    p_duration double precision, p_worker text, p_notify text, p_events boolean
) RETURNS TABLE (jobs json, first_seq bigint, at double precision, events integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_jobs   json;
    v_events json;
    v_now    double precision;
    v_rated  json;  -- the rated logs this claim looked at: channel, per, jobs taken
    v_log    record;
BEGIN
    PERFORM pg_advisory_xact_lock(p_key);
    WITH RECURSIVE
    t AS MATERIALIZED (SELECT {schema}.clock() AS now),
    q AS MATERIALIZED (
        SELECT qq.max_concurrency AS cap, COALESCE(qq.counter, 0) AS counter,
               qq.rate_n, qq.rate_per
        FROM (VALUES (1)) AS one (x)
        LEFT JOIN {schema}.queues AS qq ON qq.queue = p_queue
    ),
    slots AS MATERIALIZED (
        SELECT GREATEST(LEAST(
                   p_limit::bigint,
                   CASE WHEN q.cap IS NOT NULL THEN q.cap - (
                       SELECT count(*) FROM {schema}.jobs
                       WHERE queue = p_queue AND state = 'running') END,
                   CASE WHEN q.rate_n IS NOT NULL THEN q.rate_n - (
                       SELECT COALESCE(sum(s.n), 0) FROM {schema}.starts AS s
                       WHERE s.queue = p_queue AND s.channel = ''
                         AND s.at > t.now - q.rate_per) END
               ), 0) AS n
        FROM q, t
    ),
    paused AS MATERIALIZED (
        SELECT pa.channel FROM {schema}.pauses AS pa
        WHERE pa.queue = p_queue AND pa.paused_until > (SELECT now FROM t)
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
        SELECT ch.channel, COALESCE(tu.last_served, 0) AS last_served, p.rate_per,
               LEAST(p.max_concurrency - COALESCE(r.n, 0),
                     CASE WHEN p.rate_n IS NOT NULL THEN p.rate_n - (
                         SELECT COALESCE(sum(s.n), 0) FROM {schema}.starts AS s
                         WHERE s.queue = p_queue AND s.channel = ch.channel
                           AND s.at > (SELECT now FROM t) - p.rate_per) END
               ) AS capacity  -- NULL: unlimited
        FROM ch
        LEFT JOIN {schema}.channels AS p ON p.queue = p_queue AND p.channel = ch.channel
        LEFT JOIN {schema}.turns AS tu ON tu.queue = p_queue AND tu.channel = ch.channel
        LEFT JOIN running AS r ON r.channel = ch.channel
        WHERE ch.channel IS NOT NULL
          AND (p_channels::text[] IS NULL OR ch.channel = ANY (p_channels::text[]))
          AND NOT EXISTS (SELECT 1 FROM paused WHERE paused.channel = ch.channel)
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
    SELECT (SELECT json_agg(claimed ORDER BY pos) FROM claimed),
           (SELECT now FROM t),
           (SELECT json_agg(r) FROM (
                SELECT c.channel, c.rate_per AS per,
                       (SELECT count(*) FROM chosen WHERE chosen.channel = c.channel) AS n
                FROM chan AS c WHERE c.rate_per IS NOT NULL
                UNION ALL
                SELECT '', q.rate_per, (SELECT count(*) FROM chosen)
                FROM q WHERE q.rate_per IS NOT NULL
            ) AS r)
    INTO v_jobs, v_now, v_rated;
    IF v_rated IS NOT NULL THEN  -- the rates' logs: drop what left the window, add this claim
        FOR v_log IN
            SELECT * FROM json_to_recordset(v_rated) AS r(channel text, per float8, n integer)
        LOOP
            DELETE FROM {schema}.starts AS s
            WHERE s.queue = p_queue AND s.channel = v_log.channel AND s.at <= v_now - v_log.per;
            IF v_log.n > 0 THEN
                INSERT INTO {schema}.starts AS s (queue, channel, at, n)
                VALUES (p_queue, v_log.channel, v_now, v_log.n)
                ON CONFLICT ON CONSTRAINT starts_pkey DO UPDATE SET n = s.n + excluded.n;
            END IF;
        END LOOP;
    END IF;
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
