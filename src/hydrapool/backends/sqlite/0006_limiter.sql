-- The distributed Limiter (hp.Limiter): per (limiter name, key) its holders, its
-- line of waiters and its rate log. Each step loads what it needs of one key's
-- rows, runs the reference step of backends/_limits.py and writes back only what
-- changed, so every table is keyed by (name, key) first. WITHOUT ROWID: a table
-- is one B-tree (no separate rowid table to update at each write).

-- One row per key that ever granted: the fencing counter (the last token handed
-- out). Kept when the key empties: a counter that restarted would hand out a
-- token a stale holder still has, and its late release would free a new grant.
CREATE TABLE hydrapool_limiter_keys (
    name  TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    fence INTEGER NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;

-- Grants: a release or renewal names its token; a lapsed one is dropped by the
-- next step of the key.
CREATE TABLE hydrapool_limiter_holders (
    name       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    ticket     TEXT    NOT NULL,
    weight     INTEGER NOT NULL,
    expires_at REAL    NOT NULL,
    PRIMARY KEY (name, key, token)
) WITHOUT ROWID;

-- The line, in arrival order (seq: one more than the key's highest when joining).
-- A step reads only its front (and its own ticket's place, by the ticket index);
-- places that lapsed are found and deleted by the expiry index.
CREATE TABLE hydrapool_limiter_waiters (
    name       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    ticket     TEXT    NOT NULL,
    weight     INTEGER NOT NULL,
    expires_at REAL    NOT NULL,
    PRIMARY KEY (name, key, seq)
) WITHOUT ROWID;
CREATE INDEX hydrapool_limiter_waiters_ticket ON hydrapool_limiter_waiters (name, key, ticket);
CREATE INDEX hydrapool_limiter_waiters_expiry
    ON hydrapool_limiter_waiters (name, key, expires_at);

-- Weight granted per instant (grants of one step share their instant, so they
-- share a row): what the rate window counts, oldest first.
CREATE TABLE hydrapool_limiter_log (
    name       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    granted_at REAL    NOT NULL,
    weight     INTEGER NOT NULL,
    PRIMARY KEY (name, key, granted_at)
) WITHOUT ROWID;
