-- Rates and pauses inside the queue: a channel's and the queue's job starts per
-- window (rate_n starts in any rate_per seconds), enforced by the claim step, and
-- channel pauses (a hand-back's hp.RetryAfter).

-- The rates are part of the policy (set and cleared with it).
ALTER TABLE hydrapool_channels ADD COLUMN rate_n INTEGER;
ALTER TABLE hydrapool_channels ADD COLUMN rate_per REAL;
ALTER TABLE hydrapool_queues ADD COLUMN rate_n INTEGER;
ALTER TABLE hydrapool_queues ADD COLUMN rate_per REAL;

-- A pause is not: setting or clearing the policy keeps it. It sits on the channel's
-- row so a claim skips paused channels in the query that lists them (no extra read);
-- 0: not paused.
ALTER TABLE hydrapool_channels ADD COLUMN paused_until REAL NOT NULL DEFAULT 0;
-- When the next pause ends, for idle workers to claim again then: only channels ever
-- paused are in it, and claims (which rewrite last_served) never touch it.
CREATE INDEX hydrapool_channels_paused ON hydrapool_channels (queue, paused_until)
    WHERE paused_until > 0;

-- Claims per instant (the jobs of one claim step share their instant, so they share
-- a row) of the channels and queues that have a rate; channel '' is the queue's own
-- log (channel names are never empty). A claim step drops what left the window and
-- counts the rest: at most rate_n rows stay.
CREATE TABLE hydrapool_rate_log (
    queue     TEXT    NOT NULL,
    channel   TEXT    NOT NULL,
    at        REAL    NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (queue, channel, at)
) WITHOUT ROWID;
