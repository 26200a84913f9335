-- Dedup keys: at most one not-yet-started job per (queue, channel, key).

ALTER TABLE hydrapool_jobs ADD COLUMN dedup_key TEXT;

CREATE UNIQUE INDEX hydrapool_jobs_dedup ON hydrapool_jobs (queue, channel, dedup_key)
    WHERE dedup_key IS NOT NULL AND started_at IS NULL AND state IN ('waiting', 'queued');
