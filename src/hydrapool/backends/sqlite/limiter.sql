-- The Limiter's statements (sqlite/limiter.py), by name.

-- name: limiter_load
-- What a step needs of one key, in one statement (one snapshot): part 0 the fence
-- (n), the highest seq (weight) and how many waiters the front holds (at, see
-- limiter.front_size), 1 the holders, 2 the front: the first live waiters, 3 the
-- step's own ticket if it waits (it may be further back), 4 the rate log.
-- The unary + keeps the waiters' scans on the primary key, in line order.
WITH front AS (
    SELECT CASE
        WHEN :rate_n IS NULL THEN :front
        WHEN :front < 0 THEN room
        ELSE MIN(:front, room)
    END AS size
    FROM (
        SELECT MAX(2, :rate_n + 2 - COALESCE(
            (SELECT SUM(weight) FROM hydrapool_limiter_log
             WHERE name = :name AND key = :key AND granted_at > :horizon), 0)) AS room
    )
)
SELECT 0 AS part,
       COALESCE((SELECT fence FROM hydrapool_limiter_keys WHERE name = :name AND key = :key), 0)
           AS n,
       NULL AS ticket,
       COALESCE((SELECT MAX(seq) FROM hydrapool_limiter_waiters
                 WHERE name = :name AND key = :key), 0) AS weight,
       (SELECT size FROM front) AS at
UNION ALL
SELECT 1, token, ticket, weight, expires_at
FROM hydrapool_limiter_holders WHERE name = :name AND key = :key
UNION ALL
SELECT * FROM (
    SELECT 2, seq, ticket, weight, expires_at
    FROM hydrapool_limiter_waiters
    WHERE name = :name AND key = :key AND +expires_at > :now
    ORDER BY seq LIMIT (SELECT size FROM front)
)
UNION ALL
SELECT 3, seq, ticket, weight, expires_at
FROM hydrapool_limiter_waiters INDEXED BY hydrapool_limiter_waiters_ticket
WHERE name = :name AND key = :key AND ticket = :ticket AND +expires_at > :now
UNION ALL
SELECT 4, 0, NULL, weight, granted_at
FROM hydrapool_limiter_log WHERE name = :name AND key = :key
ORDER BY part, n, at;

-- name: limiter_waiters_drop_ended
DELETE FROM hydrapool_limiter_waiters INDEXED BY hydrapool_limiter_waiters_expiry
WHERE name = :name AND key = :key AND expires_at <= :now;

-- name: limiter_between
-- Waiters between two places in the line (in a write step, where lapsed places
-- were just deleted: live waiters; counted off the primary key alone).
SELECT COUNT(*) FROM hydrapool_limiter_waiters
WHERE name = :name AND key = :key AND seq > :after AND seq < :before;

-- name: limiter_waiting
SELECT COUNT(*) FROM hydrapool_limiter_waiters INDEXED BY hydrapool_limiter_waiters_expiry
WHERE name = :name AND key = :key AND expires_at > :now;

-- name: limiter_fence_set
INSERT INTO hydrapool_limiter_keys (name, key, fence) VALUES (:name, :key, :fence)
ON CONFLICT (name, key) DO UPDATE SET fence = excluded.fence;

-- name: limiter_holder_insert
INSERT INTO hydrapool_limiter_holders (name, key, token, ticket, weight, expires_at)
VALUES (:name, :key, :token, :ticket, :weight, :expires_at);

-- name: limiter_holder_renew
UPDATE hydrapool_limiter_holders SET expires_at = :expires_at
WHERE name = :name AND key = :key AND token = :token;

-- name: limiter_holder_delete
DELETE FROM hydrapool_limiter_holders WHERE name = :name AND key = :key AND token = :token;

-- name: limiter_waiter_insert
INSERT INTO hydrapool_limiter_waiters (name, key, seq, ticket, weight, expires_at)
VALUES (:name, :key, :seq, :ticket, :weight, :expires_at);

-- name: limiter_waiter_renew
UPDATE hydrapool_limiter_waiters SET expires_at = :expires_at
WHERE name = :name AND key = :key AND seq = :seq;

-- name: limiter_waiter_delete
DELETE FROM hydrapool_limiter_waiters WHERE name = :name AND key = :key AND seq = :seq;

-- name: limiter_log_set
INSERT INTO hydrapool_limiter_log (name, key, granted_at, weight)
VALUES (:name, :key, :granted_at, :weight)
ON CONFLICT (name, key, granted_at) DO UPDATE SET weight = excluded.weight;

-- name: limiter_log_delete
DELETE FROM hydrapool_limiter_log WHERE name = :name AND key = :key AND granted_at = :granted_at;

-- name: limiter_front
-- What a watcher's wake-up needs to know of a key (read only): its holders'
-- tickets (part 1) and the first live waiter's (part 2).
SELECT 1 AS part, ticket FROM hydrapool_limiter_holders WHERE name = :name AND key = :key
UNION ALL
SELECT * FROM (
    SELECT 2, ticket FROM hydrapool_limiter_waiters
    WHERE name = :name AND key = :key AND +expires_at > :now
    ORDER BY seq LIMIT 1
);
