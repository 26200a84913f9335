-- hydrapool PostgreSQL schema, version 2: the distributed Limiter
-- (hydrapool.queue.limiter). Each step is one call to a limiter_* function
-- below (one round trip, its commit included) and does exactly what
-- backends/_limits.py does, with the server's clock. A step first locks its
-- (limiter name, key) row of limiter_keys, so the steps of one key take turns
-- while other keys run in parallel, and reads the clock only once it holds
-- that lock (times rise in the order the steps commit).
--
-- Plans: every query of a step reaches its rows through exactly one index
-- (the key's rows in holders, line order or a ticket in waiters, the key's
-- log) and the step functions run with enable_seqscan off. A cached plan
-- made while a table was tiny must not turn into a scan of every key's rows
-- once a crowd of waiters arrives.

-- One row per key ever used: the lock, and counters that must never go back
-- (the fence: a token is never handed out twice), so it stays when idle.
CREATE TABLE {schema}.limiter_keys (
    name        text             NOT NULL,
    key         text             NOT NULL,
    fence       bigint           NOT NULL DEFAULT 0,  -- the last token handed out
    arrivals    bigint           NOT NULL DEFAULT 0,  -- the last place number given
    waiting     bigint           NOT NULL DEFAULT 0,  -- the key's rows in limiter_waiters
    -- No waiter's place ends before this (a lower bound, exact after each look):
    -- a step looks for places that ended only once the clock reached it.
    soonest_end double precision NOT NULL DEFAULT 'infinity',
    logged      boolean          NOT NULL DEFAULT false,  -- the key may have rate log rows
    PRIMARY KEY (name, key)
);

-- Grants: few per key (at most `limit`, or what the rate let in lately).
CREATE TABLE {schema}.limiter_holders (
    name       text             NOT NULL,
    key        text             NOT NULL,
    token      bigint           NOT NULL,
    ticket     text             NOT NULL,
    weight     bigint           NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (name, key, token)
);

-- The line, first come (lowest seq) first served. It may be long (a crowd
-- waiting on one key); a step reads its front, or one ticket's place.
-- Tickets are unique (each acquire draws a new one). `channel`: where the
-- waiter's process listens for its wake-ups.
CREATE TABLE {schema}.limiter_waiters (
    ticket     text             PRIMARY KEY,
    name       text             NOT NULL,
    key        text             NOT NULL,
    seq        bigint           NOT NULL,
    weight     bigint           NOT NULL,
    expires_at double precision NOT NULL,
    channel    text             NOT NULL
);
CREATE UNIQUE INDEX limiter_waiters_line ON {schema}.limiter_waiters (name, key, seq);

-- The rate log: the grants of the current window, in token order (= the
-- order they were made). Kept only for keys with a rate.
CREATE TABLE {schema}.limiter_log (
    name       text             NOT NULL,
    key        text             NOT NULL,
    token      bigint           NOT NULL,
    granted_at double precision NOT NULL,
    weight     bigint           NOT NULL,
    PRIMARY KEY (name, key, token)
);

-- Lock the key's row, creating it on first use.
CREATE FUNCTION {schema}.limiter_lock(p_name text, p_key text)
RETURNS {schema}.limiter_keys
LANGUAGE plpgsql AS $$
DECLARE
    v_row {schema}.limiter_keys;
BEGIN
    SELECT * INTO v_row FROM {schema}.limiter_keys AS k
    WHERE k.name = p_name AND k.key = p_key
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO {schema}.limiter_keys (name, key) VALUES (p_name, p_key)
        ON CONFLICT DO NOTHING;
        SELECT * INTO v_row FROM {schema}.limiter_keys AS k
        WHERE k.name = p_name AND k.key = p_key
        FOR UPDATE;
    END IF;
    RETURN v_row;
END
$$;

-- Store the key's counters if the step changed them. A step that handed out
-- no token also commits without waiting for its WAL to reach the disk
-- (synchronous_commit off, for this transaction only): a server crash may
-- then forget it, which costs a waiter its place or keeps a released place
-- until its lease ends, but never hands a token out twice or lets more in.
-- Grants (and renewals) wait for the disk as usual; they also flush what
-- came before them.
CREATE FUNCTION {schema}.limiter_save(p_was {schema}.limiter_keys, p_new {schema}.limiter_keys)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_new IS DISTINCT FROM p_was THEN
        UPDATE {schema}.limiter_keys AS k
        SET fence = p_new.fence, arrivals = p_new.arrivals, waiting = p_new.waiting,
            soonest_end = p_new.soonest_end, logged = p_new.logged
        WHERE k.name = p_new.name AND k.key = p_new.key;
    END IF;
    IF p_new.fence = p_was.fence THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END
$$;

-- Wake tickets, at commit, each on the channel its process listens on, with
-- what its next step would tell it (so it needs none): a payload
-- "<lease end> <ticket> <turn> <ticket> <turn> ...", where a promoted
-- ticket's turn is its token (the grant lasts until the lease end), and the
-- new first waiter's is "0" when the limit holds it back, "~<seconds>" when
-- the rate does (its rate wait). A process hears its payloads in the order
-- the steps committed, so in the order of the grants. A payload must stay
-- under 8000 bytes: a long list goes out in several, each starting with the
-- lease end.
CREATE FUNCTION {schema}.limiter_wake(
    p_ends double precision, p_channels text[], p_tickets text[], p_turns text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_start   text := p_ends::text;
    v_sent    text[] := '{}';  -- channels done
    v_payload text;
    v_entry   text;
BEGIN
    FOR i IN 1 .. cardinality(p_tickets) LOOP
        CONTINUE WHEN p_channels[i] = ANY (v_sent);
        v_payload := v_start;
        FOR j IN i .. cardinality(p_tickets) LOOP
            CONTINUE WHEN p_channels[j] <> p_channels[i];
            v_entry := ' ' || p_tickets[j] || ' ' || p_turns[j];
            IF v_payload <> v_start
               AND octet_length(v_payload) + octet_length(v_entry) > 7999 THEN
                PERFORM pg_notify(p_channels[i], v_payload);
                v_payload := v_start;
            END IF;
            v_payload := v_payload || v_entry;
        END LOOP;
        PERFORM pg_notify(p_channels[i], v_payload);
        v_sent := v_sent || p_channels[i];
    END LOOP;
END
$$;

-- Settle the locked key (_limits.settle): drop the holders and waiters whose
-- lease ended and the rate log older than the window (all of it without a
-- rate); then (p_promote) promote waiters from the front while the first one
-- fits under both limits, and wake (limiter_wake) the tickets promoted, then
-- the new first waiter when it is not the first waiter the step began with;
-- never the step's own ticket (p_self). That first waiter is p_first, or
-- when p_look, the first one now (a step that changed nothing in the line).
-- Weights are at least 1, so at most `room` waiters fit: the front is read in
-- one go. Returns the counts after, the first waiter left (o_head) and the
-- tickets woken.
CREATE FUNCTION {schema}.limiter_settle(
    INOUT io_key {schema}.limiter_keys, p_limit bigint, p_rate bigint,
    p_per double precision, p_lease double precision, p_now double precision, p_first text,
    p_look boolean, p_self text, p_promote boolean,
    OUT o_holders bigint, OUT o_held bigint, OUT o_recent bigint, OUT o_head text,
    OUT o_woken text[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_first    text := p_first;
    v_ended    bigint;
    v_room     bigint;
    v_used     bigint := 0;
    v_n        integer := 0;  -- promoted
    v_front    {schema}.limiter_waiters[];  -- at most room + 1 waiters, in line order
    v_turns    text[] := '{}';
    v_to       text[] := '{}';  -- the channels of the tickets woken
BEGIN
    SELECT count(*) FILTER (WHERE h.expires_at > p_now),
           COALESCE(sum(h.weight) FILTER (WHERE h.expires_at > p_now), 0),
           count(*) FILTER (WHERE h.expires_at <= p_now)
    INTO o_holders, o_held, v_ended
    FROM {schema}.limiter_holders AS h WHERE h.name = io_key.name AND h.key = io_key.key;
    IF v_ended > 0 THEN
        DELETE FROM {schema}.limiter_holders AS h
        WHERE h.name = io_key.name AND h.key = io_key.key AND h.expires_at <= p_now;
    END IF;
    IF p_now >= io_key.soonest_end THEN  -- a place may have ended: look at the whole line
        IF p_look THEN
            v_first := (SELECT w.ticket FROM {schema}.limiter_waiters AS w
                        WHERE w.name = io_key.name AND w.key = io_key.key
                        ORDER BY w.seq LIMIT 1);
            p_look := false;
        END IF;
        DELETE FROM {schema}.limiter_waiters AS w
        WHERE w.name = io_key.name AND w.key = io_key.key AND w.expires_at <= p_now;
        GET DIAGNOSTICS v_ended = ROW_COUNT;
        io_key.waiting := io_key.waiting - v_ended;
        io_key.soonest_end := (SELECT COALESCE(min(w.expires_at), 'infinity')
                               FROM {schema}.limiter_waiters AS w
                               WHERE w.name = io_key.name AND w.key = io_key.key);
    END IF;
    o_recent := 0;
    IF p_rate IS NOT NULL THEN
        SELECT COALESCE(sum(l.weight) FILTER (WHERE l.granted_at > p_now - p_per), 0),
               count(*) FILTER (WHERE l.granted_at <= p_now - p_per)
        INTO o_recent, v_ended
        FROM {schema}.limiter_log AS l WHERE l.name = io_key.name AND l.key = io_key.key;
        IF v_ended > 0 THEN
            DELETE FROM {schema}.limiter_log AS l
            WHERE l.name = io_key.name AND l.key = io_key.key AND l.granted_at <= p_now - p_per;
        END IF;
    ELSIF io_key.logged THEN
        DELETE FROM {schema}.limiter_log AS l WHERE l.name = io_key.name AND l.key = io_key.key;
        io_key.logged := false;
    END IF;
    o_woken := '{}';
    IF NOT p_promote THEN
        RETURN;
    END IF;
    v_room := LEAST(p_limit - o_held, p_rate - o_recent);  -- NULL: neither limit is set
    SELECT array_agg(f ORDER BY f.seq) INTO v_front
    FROM (SELECT * FROM {schema}.limiter_waiters AS w
          WHERE w.name = io_key.name AND w.key = io_key.key
          ORDER BY w.seq
          LIMIT CASE WHEN v_room IS NULL THEN NULL ELSE GREATEST(v_room, 0) + 1 END) AS f;
    IF p_look THEN
        v_first := v_front[1].ticket;
    END IF;
    FOR i IN 1 .. COALESCE(cardinality(v_front), 0) LOOP
        IF v_used + v_front[i].weight > v_room THEN  -- (NULL room: it fits)
            o_head := v_front[i].ticket;
            EXIT;
        END IF;
        v_used := v_used + v_front[i].weight;
        v_n := i;
        IF v_front[i].ticket IS DISTINCT FROM p_self THEN
            o_woken := o_woken || v_front[i].ticket;
            v_turns := v_turns || (io_key.fence + i)::text;
            v_to := v_to || v_front[i].channel;
        END IF;
    END LOOP;
    IF v_n > 0 THEN
        DELETE FROM {schema}.limiter_waiters AS w
        WHERE w.name = io_key.name AND w.key = io_key.key AND w.seq <= v_front[v_n].seq;
        -- (unnest spreads a limiter_waiters row into its columns, in table order)
        INSERT INTO {schema}.limiter_holders (name, key, token, ticket, weight, expires_at)
        SELECT io_key.name, io_key.key, io_key.fence + t.n, t.ticket, t.weight, p_now + p_lease
        FROM unnest(v_front[1:v_n]) WITH ORDINALITY AS t(ticket, name, key, seq, weight,
                                                         expires_at, channel, n);
        IF p_rate IS NOT NULL THEN
            INSERT INTO {schema}.limiter_log (name, key, token, granted_at, weight)
            SELECT io_key.name, io_key.key, io_key.fence + t.n, p_now, t.weight
            FROM unnest(v_front[1:v_n]) WITH ORDINALITY AS t(ticket, name, key, seq, weight,
                                                             expires_at, channel, n);
            io_key.logged := true;
            o_recent := o_recent + v_used;
        END IF;
        io_key.fence := io_key.fence + v_n;
        io_key.waiting := io_key.waiting - v_n;
        o_holders := o_holders + v_n;
        o_held := o_held + v_used;
    END IF;
    IF o_head IS NOT NULL AND o_head IS DISTINCT FROM v_first
       AND o_head IS DISTINCT FROM p_self THEN
        o_woken := o_woken || o_head;
        v_turns := v_turns || COALESCE('~' || {schema}.limiter_rate_wait(
            io_key.name, io_key.key, p_limit, p_rate, p_per, p_now, o_held, o_recent,
            v_front[v_n + 1].weight)::text, '0');
        v_to := v_to || v_front[v_n + 1].channel;
    END IF;
    IF cardinality(o_woken) > 0 THEN
        PERFORM {schema}.limiter_wake(p_now + p_lease, v_to, o_woken, v_turns);
    END IF;
END
$$;

-- Seconds until p_weight more fits the rate window, for the first waiter
-- (_limits._rate_wait): NULL when the limit holds it back (it waits for a
-- release), else when enough of the oldest grants have left the window.
CREATE FUNCTION {schema}.limiter_rate_wait(
    p_name text, p_key text, p_limit bigint, p_rate bigint, p_per double precision,
    p_now double precision, p_held bigint, p_recent bigint, p_weight bigint
) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_excess bigint;
BEGIN
    IF p_limit IS NOT NULL AND p_held + p_weight > p_limit THEN
        RETURN NULL;
    END IF;
    IF p_rate IS NULL THEN
        RETURN 0;
    END IF;
    v_excess := p_recent + p_weight - p_rate;
    IF v_excess <= 0 THEN
        RETURN 0;
    END IF;
    RETURN COALESCE((
        SELECT GREATEST(0, o.granted_at + p_per - p_now)
        FROM (SELECT l.token, l.granted_at, sum(l.weight) OVER (ORDER BY l.token) AS upto
              FROM {schema}.limiter_log AS l WHERE l.name = p_name AND l.key = p_key) AS o
        WHERE o.upto >= v_excess
        ORDER BY o.token LIMIT 1
    ), 0);
END
$$;

-- acquire (_limits.acquire), for the tickets p_tickets one after the other, as
-- that many steps at the same instant (a crowd of newcomers costs one call):
-- settle (once, as the first ticket's step: the steps after it would find
-- nothing more to drop or promote, and wake nobody); then a ticket that holds
-- gets its grant back; a waiting one has its place renewed and learns how
-- many wait before it; a new one is granted at once when nobody waits and it
-- fits, else joins the back of the line (p_wait) or leaves empty-handed. A
-- first waiter also learns its rate wait (o_retry_after). One row per ticket,
-- in order; the tickets woken come with the first. p_channel: where the
-- caller's process hears its wake-ups (kept with its waiters).
CREATE FUNCTION {schema}.limiter_acquire(
    p_name text, p_key text, p_limit bigint, p_rate bigint, p_per double precision,
    p_lease double precision, p_tickets text[], p_weights bigint[], p_wait boolean,
    p_channel text
) RETURNS TABLE (
    o_token bigint, o_expires_at double precision, o_ahead bigint,
    o_retry_after double precision, o_woken text[]
)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_was     {schema}.limiter_keys := {schema}.limiter_lock(p_name, p_key);
    v_now     double precision := {schema}.clock();
    v_settled record;
    v_key     {schema}.limiter_keys;
    v_head    text;
    v_held    bigint;
    v_recent  bigint;
    v_ticket  text;
    v_weight  bigint;
    v_seq     bigint;
BEGIN
    v_settled := {schema}.limiter_settle(v_was, p_limit, p_rate, p_per, p_lease, v_now,
                                         NULL, true, p_tickets[1], true);
    v_key := v_settled.io_key;
    v_head := v_settled.o_head;
    v_held := v_settled.o_held;
    v_recent := v_settled.o_recent;
    o_woken := v_settled.o_woken;
    FOR i IN 1 .. cardinality(p_tickets) LOOP
        v_ticket := p_tickets[i];
        v_weight := p_weights[i];
        o_ahead := NULL;
        o_retry_after := NULL;
        SELECT h.token, h.expires_at INTO o_token, o_expires_at
        FROM {schema}.limiter_holders AS h
        WHERE h.name = p_name AND h.key = p_key AND h.ticket = v_ticket;
        IF o_token IS NULL THEN
            -- (IS NOT DISTINCT FROM is no index condition: the ticket's key is the way in)
            UPDATE {schema}.limiter_waiters AS w SET expires_at = v_now + p_lease
            WHERE w.ticket = v_ticket AND (w.name, w.key) IS NOT DISTINCT FROM (p_name, p_key)
            RETURNING w.seq INTO v_seq;
            IF v_seq IS NOT NULL THEN
                v_key.soonest_end := LEAST(v_key.soonest_end, v_now + p_lease);
                o_ahead := CASE WHEN v_head = v_ticket THEN 0 ELSE (
                    SELECT count(*) FROM {schema}.limiter_waiters AS w
                    WHERE w.name = p_name AND w.key = p_key AND w.seq < v_seq) END;
            ELSIF v_head IS NULL
                  AND (p_limit IS NULL OR v_held + v_weight <= p_limit)
                  AND (p_rate IS NULL OR v_recent + v_weight <= p_rate) THEN
                -- Nobody waits and it fits: it joins and is promoted by this same step.
                v_key.fence := v_key.fence + 1;
                o_token := v_key.fence;
                o_expires_at := v_now + p_lease;
                INSERT INTO {schema}.limiter_holders
                    (name, key, token, ticket, weight, expires_at)
                VALUES (p_name, p_key, o_token, v_ticket, v_weight, o_expires_at);
                v_held := v_held + v_weight;
                IF p_rate IS NOT NULL THEN
                    INSERT INTO {schema}.limiter_log (name, key, token, granted_at, weight)
                    VALUES (p_name, p_key, o_token, v_now, v_weight);
                    v_key.logged := true;
                    v_recent := v_recent + v_weight;
                END IF;
            ELSE
                o_ahead := v_key.waiting;
                IF p_wait THEN
                    v_key.arrivals := v_key.arrivals + 1;
                    INSERT INTO {schema}.limiter_waiters
                        (ticket, name, key, seq, weight, expires_at, channel)
                    VALUES (v_ticket, p_name, p_key, v_key.arrivals, v_weight, v_now + p_lease,
                            p_channel)
                    ON CONFLICT (ticket) DO NOTHING;
                    IF NOT FOUND THEN
                        RAISE EXCEPTION 'limiter ticket % already waits on another key: a '
                                        'ticket belongs to one (name, key)', v_ticket;
                    END IF;
                    v_key.waiting := v_key.waiting + 1;
                    v_key.soonest_end := LEAST(v_key.soonest_end, v_now + p_lease);
                    v_head := COALESCE(v_head, v_ticket);
                END IF;
            END IF;
        END IF;
        IF o_token IS NOT NULL THEN
            o_ahead := 0;
        ELSIF o_ahead = 0 THEN
            o_retry_after := {schema}.limiter_rate_wait(p_name, p_key, p_limit, p_rate, p_per,
                                                        v_now, v_held, v_recent, v_weight);
        END IF;
        RETURN NEXT;
        o_woken := '{}';
    END LOOP;
    PERFORM {schema}.limiter_save(v_was, v_key);
END
$$;

-- renew (_limits.renew): extend each grant still alive; false for one that
-- ended (released, or expired even if no step dropped it yet).
CREATE FUNCTION {schema}.limiter_renew(
    p_name text, p_key text, p_lease double precision, p_tokens bigint[]
) RETURNS boolean[]
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_was  {schema}.limiter_keys := {schema}.limiter_lock(p_name, p_key);
    v_now  double precision := {schema}.clock();
    v_kept boolean[];
BEGIN
    WITH renewed AS (
        UPDATE {schema}.limiter_holders AS h SET expires_at = v_now + p_lease
        WHERE h.name = p_name AND h.key = p_key AND h.token = ANY (p_tokens)
          AND h.expires_at > v_now
        RETURNING h.token
    )
    SELECT array_agg(t.token IN (SELECT r.token FROM renewed AS r) ORDER BY t.n)
    INTO v_kept
    FROM unnest(p_tokens) WITH ORDINALITY AS t(token, n);
    RETURN COALESCE(v_kept, '{}');
END
$$;

-- release (_limits.release): end the grant p_token (o_done false when it had
-- already ended: fenced, nothing freed), settle, wake.
CREATE FUNCTION {schema}.limiter_release(
    p_name text, p_key text, p_limit bigint, p_rate bigint, p_per double precision,
    p_lease double precision, p_token bigint,
    OUT o_done boolean, OUT o_woken text[]
)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_was     {schema}.limiter_keys := {schema}.limiter_lock(p_name, p_key);
    v_now     double precision := {schema}.clock();
    v_settled record;
BEGIN
    DELETE FROM {schema}.limiter_holders AS h
    WHERE h.name = p_name AND h.key = p_key AND h.token = p_token
    RETURNING h.expires_at > v_now INTO o_done;
    o_done := COALESCE(o_done, false);
    v_settled := {schema}.limiter_settle(v_was, p_limit, p_rate, p_per, p_lease, v_now,
                                         NULL, true, NULL, true);
    PERFORM {schema}.limiter_save(v_was, v_settled.io_key);
    o_woken := v_settled.o_woken;
END
$$;

-- cancel (_limits.cancel): the ticket leaves the line, or gives back the
-- grant it got meanwhile; settle, wake (never the ticket itself).
CREATE FUNCTION {schema}.limiter_cancel(
    p_name text, p_key text, p_limit bigint, p_rate bigint, p_per double precision,
    p_lease double precision, p_ticket text
) RETURNS text[]
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_was     {schema}.limiter_keys := {schema}.limiter_lock(p_name, p_key);
    v_now     double precision := {schema}.clock();
    v_first   text := (SELECT w.ticket FROM {schema}.limiter_waiters AS w
                         WHERE w.name = p_name AND w.key = p_key ORDER BY w.seq LIMIT 1);
    v_key     {schema}.limiter_keys := v_was;
    v_left    bigint;
    v_settled record;
BEGIN
    DELETE FROM {schema}.limiter_waiters AS w
    WHERE w.ticket = p_ticket AND (w.name, w.key) IS NOT DISTINCT FROM (p_name, p_key);
    GET DIAGNOSTICS v_left = ROW_COUNT;
    v_key.waiting := v_key.waiting - v_left;
    DELETE FROM {schema}.limiter_holders AS h
    WHERE h.name = p_name AND h.key = p_key AND h.ticket = p_ticket;
    v_settled := {schema}.limiter_settle(v_key, p_limit, p_rate, p_per, p_lease, v_now,
                                         v_first, false, p_ticket, true);
    PERFORM {schema}.limiter_save(v_was, v_settled.io_key);
    RETURN v_settled.o_woken;
END
$$;

-- stats (_limits.stats): drop what ended (no promotion), then count;
-- o_recent is NULL without a rate.
CREATE FUNCTION {schema}.limiter_stats(
    p_name text, p_key text, p_rate bigint, p_per double precision,
    OUT o_holders bigint, OUT o_held bigint, OUT o_waiters bigint, OUT o_recent bigint
)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_was     {schema}.limiter_keys := {schema}.limiter_lock(p_name, p_key);
    v_settled record;
BEGIN
    v_settled := {schema}.limiter_settle(v_was, NULL, p_rate, p_per, NULL, {schema}.clock(),
                                         NULL, false, NULL, false);
    PERFORM {schema}.limiter_save(v_was, v_settled.io_key);
    o_holders := v_settled.o_holders;
    o_held := v_settled.o_held;
    o_waiters := (v_settled.io_key).waiting;
    o_recent := CASE WHEN p_rate IS NULL THEN NULL ELSE v_settled.o_recent END;
END
$$;
