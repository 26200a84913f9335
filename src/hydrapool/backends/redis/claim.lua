-- claim.lua: claim up to ARGV[1] due jobs for worker ARGV[4] under lease token ARGV[3]
-- for ARGV[2] seconds: the highest priority first, then round-robin over channels (the
-- channel served least recently first), within channel and queue max_concurrency.
-- ARGV[5]: channels (JSON list) or ''; ARGV[6]: '1' to store events; ARGV[7]: stream cap.
local slots = tonumber(ARGV[1])
local qmax = redis.call('GET', B .. ':qmax')
if qmax then slots = math.min(slots, tonumber(qmax) - redis.call('ZCARD', B .. ':lease')) end
if slots <= 0 then return { { 0, f17(NOW), 0 }, '[]' } end

-- Due delayed jobs (their delay or back-off is over) become claimable as they are: all
-- of them, so a due job of a higher priority is never left behind (each moves once).
local due = redis.call('ZRANGEBYSCORE', B .. ':delayed', '-inf', NOW)
for _, id in ipairs(due) do
  local v = redis.call('HMGET', jkey(id), 'channel', 'rank', 'order')
  redis.call('ZREM', B .. ':delayed', id)
  redis.call('SADD', B .. ':due', id)
  ready_add({ id = id, channel = v[1], rank = v[2], order = v[3] })
end

local filtered = ARGV[5] ~= ''
local channels = filtered and cjson.decode(ARGV[5]) or redis.call('SMEMBERS', B .. ':chans')
local cands, listed = {}, {}
for _, ch in ipairs(channels) do
  if not listed[ch] then
    listed[ch] = true
    local maxc = policy(ch)
    local cap = maxc and (maxc - channel_count('running', ch)) or nil
    if cap == nil or cap > 0 then
      local n = slots
      if cap and cap < n then n = cap end
      local heads = redis.call('ZRANGE', rkey(ch), 0, n - 1, 'WITHSCORES')
      if #heads == 0 then
        if not filtered then redis.call('SREM', B .. ':chans', ch) end
      else
        local served = tonumber(redis.call('HGET', B .. ':served', ch) or '0')
        cands[#cands + 1] = { ch = ch, heads = heads, idx = 1, cap = cap, taken = 0, served = served }
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
if #chosen == 0 then return { { 0, f17(NOW), 0 }, '[]' } end
redis.call('SET', B .. ':ctr', counter)
-- The chosen jobs are each channel's heads, in order: pop them in one call per channel.
for _, c in ipairs(cands) do
  if c.taken > 0 then
    redis.call('HSET', B .. ':served', c.ch, c.served)
    redis.call('ZPOPMIN', rkey(c.ch), c.taken)
    if redis.call('EXISTS', rkey(c.ch)) == 0 then redis.call('SREM', B .. ':chans', c.ch) end
  end
end

local token, worker = ARGV[3], ARGV[4]
local expires = NOW + tonumber(ARGV[2])
local started, until_ = f17(NOW), f17(expires)
local out = {}
for _, pick in ipairs(chosen) do
  local id = string.sub(pick[2], RANK_WIDTH + 1)
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
  redis.call('ZADD', B .. ':lease', expires, id)
  if job.max_processing then
    redis.call('ZADD', B .. ':deadline', NOW + tonumber(job.max_processing), id)
  end
  if RELEASED_BY[was] then event(RELEASED_BY[was], id, job.channel, job.task, attempts - 1) end
  event('dequeued', id, job.channel, job.task, attempts, worker)
  job.was = was
  job.order, job.parents_left, job.kids = nil, nil, nil
  out[#out + 1] = job
end
local stored = step_done(ARGV[6], ARGV[7])
return { stored, cjson.encode(out) }
