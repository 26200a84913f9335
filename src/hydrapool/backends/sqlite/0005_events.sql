-- Events: every job transition, numbered in the order stored. Subscribers in
-- any process follow the table by seq; the coordinator trims it by age.
-- A trim always keeps the newest row, so a seq is never reused and a
-- subscriber's cursor never skips new events (AUTOINCREMENT would do the same
-- for 12% more per insert).

CREATE TABLE hydrapool_events (
    seq      INTEGER PRIMARY KEY,
    queue    TEXT    NOT NULL,
    type     TEXT    NOT NULL,
    job_id   TEXT    NOT NULL,
    channel  TEXT    NOT NULL,
    task     TEXT    NOT NULL,
    attempt  INTEGER NOT NULL,
    at       REAL    NOT NULL,
    worker   TEXT,
    error    TEXT,
    detail   TEXT
);

-- A queue's events in order: reads, the newest of a queue, trims.
CREATE INDEX hydrapool_events_queue ON hydrapool_events (queue, seq);

-- Children blocked on parents stay out of the release pass's index.
DROP INDEX hydrapool_jobs_due;
CREATE INDEX hydrapool_jobs_due ON hydrapool_jobs (queue, run_at)
    WHERE state IN ('waiting', 'retrying') AND parents_left = 0;

-- Waiting children are now 'waiting' (not 'queued') until their parents are done.
UPDATE hydrapool_jobs SET state = 'waiting' WHERE state = 'queued' AND parents_left > 0;
