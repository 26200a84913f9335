-- Schedules: named recurring enqueues, scoped per (queue, channel).

CREATE TABLE hydrapool_schedules (
    queue          TEXT    NOT NULL,
    channel        TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    spec           TEXT    NOT NULL,  -- JSON: {"cron": ..., "tz": ...} or {"every": seconds}
    task           TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL DEFAULT 1,
    max_processing REAL,
    next_run       REAL    NOT NULL,
    created_at     REAL    NOT NULL,
    PRIMARY KEY (queue, channel, name)
);

CREATE INDEX hydrapool_schedules_due ON hydrapool_schedules (queue, next_run);
