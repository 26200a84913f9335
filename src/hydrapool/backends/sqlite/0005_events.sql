-- Events: every job transition, numbered in the order stored. Subscribers in
-- any process follow the table by seq; the coordinator trims it by age.
-- AUTOINCREMENT: a seq is never reused, even after a trim empties the table,
-- so a subscriber's cursor never skips new events.

CREATE TABLE hydrapool_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
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

-- Waiting children are now 'waiting' (not 'queued') until their parents are done.
UPDATE hydrapool_jobs SET state = 'waiting' WHERE state = 'queued' AND parents_left > 0;
