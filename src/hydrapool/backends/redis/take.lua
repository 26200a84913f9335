-- take.lua: the claim itself, for claim.lua and for the hand-off to idle workers
-- (hand.lua). take(limit, lease, token, worker, chans) claims up to ``limit`` due jobs
-- for ``worker`` under lease ``token`` for ``lease`` seconds: the highest priority first,
-- then round-robin over channels (the channel served least recently first), within
-- channel and queue max_concurrency and rate; paused channels are skipped. ``chans``:
-- the channels served (JSON list), or '' for all. Returns the claimed jobs (tables).

-- A rate's log: the claim times of the last ``per`` seconds, a sorted set scored by
-- claim time (members "<time> <job id>"). Drop what left the window (time <= now - per)
-- and return how many more may start now.
local function room(key, n, per)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', f17(NOW - per))
  return n - redis.call('ZCARD', key)
end
-- Log the starts of ``ids`` now; an idle log expires once its entries all have.
local function log_starts(key, ids, per)
  local now, args = f17(NOW), {}
  for _, id in ipairs(ids) do
    args[#args + 1] = now
    args[#args + 1] = now .. ' ' .. id
    if #args >= 1000 then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('ZADD', key, unpack(args)) end
  if per < 1e9 then redis.call('PEXPIRE', key, string.format('%d', math.ceil(per * 1000) + 1000)) end
end

local function take(limit, lease, token, worker, chans)
  local slots = limit
  local limits = redis.call('MGET', B .. ':qmax', B .. ':qrate')
  if limits[1] then
    slots = math.min(slots, tonumber(limits[1]) - redis.call('ZCARD', B .. ':lease'))
  end
  local qper = nil -- the queue's rate window, when it has a rate
  if limits[2] then
    local n, per = string.match(limits[2], '^([^:]*):(.*)$')
    qper = tonumber(per)
    slots = math.min(slots, room(B .. ':rlq', tonumber(n), qper))
  end
  if slots <= 0 then return {} end

  -- Paused channels (a hand-back's pause): skipped until then. Ended pauses are dropped.
  local paused = {}
  local pauses = redis.call('HGETALL', B .. ':paused')
  for i = 1, #pauses, 2 do
    if tonumber(pauses[i + 1]) > NOW then
      paused[pauses[i]] = true
    else
      redis.call('HDEL', B .. ':paused', pauses[i])
    end
  end

  -- Due delayed jobs (their delay or back-off is over) become claimable as they are: all
  -- of them, so a due job of a higher priority is never left behind (each moves once).
  local due = redis.call('ZRANGEBYSCORE', B .. ':delayed', '-inf', NOW)
  for _, id in ipairs(due) do
    local v = redis.call('HMGET', jkey(id), 'channel', 'rank', 'order')
    redis.call('ZREM', B .. ':delayed', id)
    redis.call('SADD', B .. ':due', id)
    ready_add({ id = id, channel = v[1], rank = v[2], order = v[3] })
  end

  local filtered = chans ~= ''
  local channels = filtered and cjson.decode(chans) or redis.call('SMEMBERS', B .. ':chans')
  local cands, listed = {}, {}
  for _, ch in ipairs(channels) do
    if not listed[ch] and not paused[ch] then
      listed[ch] = true
      local maxc, _, rate_n, rate_per = policy(ch)
      local cap = maxc and (maxc - channel_count('running', ch)) or nil
      if rate_n and (cap == nil or cap > 0) then
        local left = room(B .. ':rl:' .. ch, rate_n, rate_per)
        if cap == nil or left < cap then cap = left end
      end
      if cap == nil or cap > 0 then
        local n = slots
        if cap and cap < n then n = cap end
        local heads = redis.call('ZRANGE', rkey(ch), 0, n - 1, 'WITHSCORES')
        if #heads == 0 then
          if not filtered then redis.call('SREM', B .. ':chans', ch) end
        else
          local served = tonumber(redis.call('HGET', B .. ':served', ch) or '0')
          cands[#cands + 1] = { ch = ch, heads = heads, idx = 1, cap = cap, taken = 0, served = served,
            per = rate_n and rate_per }
        end
      end
    end
  end

  -- The core's pick (backends/_fair.py): best head by (rank, last served, channel).
  local counter = tonumber(redis.call('GET', B .. ':ctr') or '0')
  local chosen = {}
  while #chosen < slots do
    local best, best_score = nil, nil
    for _, c in ipairs(cands) do
      if c.idx * 2 <= #c.heads and (c.cap == nil or c.taken < c.cap) then
        local score = string.sub(c.heads[c.idx * 2 - 1], 1, 20)
        if best == nil or score < best_score or (score == best_score and (c.served < best.served
            or (c.served == best.served and c.ch < best.ch))) then
          best, best_score = c, score
        end
      end
    end
    if best == nil then break end
    chosen[#chosen + 1] = { best.ch, best.heads[best.idx * 2 - 1] }
    best.idx = best.idx + 1
    best.taken = best.taken + 1
    counter = counter + 1
    best.served = counter
  end
  if #chosen == 0 then return {} end
  redis.call('SET', B .. ':ctr', counter)
  -- The chosen jobs are each channel's heads, in order: pop them in one call per channel.
  local rated = {} -- channel -> the ids it starts, for channels with a rate
  for _, c in ipairs(cands) do
    if c.taken > 0 then
      redis.call('HSET', B .. ':served', c.ch, c.served)
      redis.call('ZPOPMIN', rkey(c.ch), c.taken)
      if redis.call('EXISTS', rkey(c.ch)) == 0 then redis.call('SREM', B .. ':chans', c.ch) end
      if c.per then rated[c.ch] = {} end
    end
  end

  local expires = NOW + lease
  local started, until_ = f17(NOW), f17(expires)
  local out, ids, leases = {}, {}, {}
  for _, pick in ipairs(chosen) do
    local id = string.sub(pick[2], RANK_WIDTH + 1)
    ids[#ids + 1] = id
    if rated[pick[1]] then table.insert(rated[pick[1]], id) end
    local job = job_get(id)
    local was = job.state
    local attempts = tonumber(job.attempts) + 1
    if was ~= 'queued' then redis.call('SREM', B .. ':due', id) end
    if job.dedup_key ~= nil then
      local field = dkey(job.channel, job.dedup_key)
      if redis.call('HGET', B .. ':dedup', field) == id then redis.call('HDEL', B .. ':dedup', field) end
    end
    move(job, 'running', { 'attempts', attempts, 'started_at', started, 'lease', token,
      'lease_expires_at', until_, 'worker', worker })
    job.attempts, job.started_at, job.lease, job.lease_expires_at, job.worker =
      attempts, started, token, until_, worker
    leases[#leases + 1] = expires
    leases[#leases + 1] = id
    if job.max_processing then
      redis.call('ZADD', B .. ':deadline', NOW + tonumber(job.max_processing), id)
    end
    if RELEASED_BY[was] then event(RELEASED_BY[was], id, job.channel, job.task, attempts - 1) end
    event('dequeued', id, job.channel, job.task, attempts, worker)
    job.was = was
    job.order, job.parents_left, job.kids = nil, nil, nil
    out[#out + 1] = job
  end
  -- The leases: one call per thousand jobs (each call from a script costs a few µs).
  for i = 1, #leases, 1000 do
    redis.call('ZADD', B .. ':lease', unpack(leases, i, math.min(i + 999, #leases)))
  end
  -- Every start counts in its channel's rate log and in the queue's.
  for _, c in ipairs(cands) do
    if rated[c.ch] then log_starts(B .. ':rl:' .. c.ch, rated[c.ch], c.per) end
  end
  if qper then log_starts(B .. ':rlq', ids, qper) end
  return out
end
