-- hydrapool SQLite schema, version 1. Every queue shares these tables; the
-- `queue` column namespaces everything.

CREATE TABLE hydrapool_jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order (FIFO)
    id               TEXT    NOT NULL UNIQUE,
    queue            TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    channel          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1,
    payload          TEXT    NOT NULL,
    result           TEXT,
    error            TEXT,
    created_at       REAL    NOT NULL,
    run_at           REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    lease            TEXT,
    lease_expires_at REAL,
    worker           TEXT,
    max_processing   REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);

-- Jobs not yet running, per channel, best first: a claim reads each channel's
-- head straight off it, and channel sizes are counted on it. Few indexes on
-- purpose: every one is rewritten at each claim and each finish.
CREATE INDEX hydrapool_jobs_head ON hydrapool_jobs (queue, channel, priority DESC, seq)
    WHERE state IN ('waiting', 'queued', 'retrying');
-- Delayed and backing-off jobs by due time, for the coordinator's release
-- (claims of jobs enqueued due at once never touch it).
CREATE INDEX hydrapool_jobs_due ON hydrapool_jobs (queue, run_at)
    WHERE state IN ('waiting', 'retrying');
CREATE INDEX hydrapool_jobs_running ON hydrapool_jobs (queue, lease_expires_at)
    WHERE state = 'running';
CREATE INDEX hydrapool_jobs_finished ON hydrapool_jobs (queue, finished_at)
    WHERE finished_at IS NOT NULL;

CREATE TABLE hydrapool_channels (
    queue           TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    max_concurrency INTEGER,
    max_size        INTEGER,
    last_served     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, channel)
);

CREATE TABLE hydrapool_queues (
    queue           TEXT    PRIMARY KEY,
    max_concurrency INTEGER,
    counter         INTEGER NOT NULL DEFAULT 0  -- serve counter for round-robin
);

CREATE TABLE hydrapool_leaders (
    queue      TEXT NOT NULL,
    name       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (queue, name)
);
