-- finish.lua: apply the core's decisions about running jobs, each only where its lease
-- still matches (and is valid, or expired for a rescue); children of ended jobs follow.
-- ARGV[1]: '1' to store events; ARGV[2]: stream cap; ARGV[3]: the finishes (JSON), each
-- [id, lease, state, result|false, error|false, delay, expired, channel, task, attempt,
--  worker|false, refusal text, back-off text, pause]: the job as its worker claimed it,
-- and the attempt its events carry, as the core's rule gave them. A hand-back's pause
-- (> 0) pauses the job's channel until that long from now, unless it is paused longer.
local ENDED_AS = { succeeded = 'succeeded', queued = 'requeued', cancelled = 'cancelled' }

local function pause(channel, seconds)
  local until_ = NOW + seconds
  local was = redis.call('HGET', B .. ':paused', channel)
  if not was or until_ > tonumber(was) then
    redis.call('HSET', B .. ':paused', channel, f17(until_))
  end
end

-- Leases to drop and ended jobs to index: one call per thousand at the end (flush_sets).
local UNLEASED, ENDED = {}, {}
local function flush_sets()
  for i = 1, #UNLEASED, 1000 do
    redis.call('ZREM', B .. ':lease', unpack(UNLEASED, i, math.min(i + 999, #UNLEASED)))
  end
  for i = 1, #ENDED, 1000 do
    redis.call('ZADD', B .. ':ended', unpack(ENDED, i, math.min(i + 999, #ENDED)))
  end
end

-- The fields apply() and the events read: an HMGET of these costs about half an
-- HGETALL of the whole job (its payload and result included).
local FIELDS = { 'state', 'lease', 'lease_expires_at', 'cancel_requested', 'max_processing',
  'attempts', 'max_attempts', 'channel', 'dedup_key', 'kids', 'rank', 'order' }
local function job_brief(id)
  local v = redis.call('HMGET', jkey(id), unpack(FIELDS))
  if not v[1] then return nil end
  local job = { id = id }
  for i, k in ipairs(FIELDS) do
    if v[i] then job[k] = v[i] end
  end
  return job
end

local function apply(f)
  local id, fstate = f[1], f[3]
  local job = job_brief(id)
  if job == nil or job.state ~= 'running' or job.lease ~= f[2] then return nil, nil end
  if (tonumber(job.lease_expires_at) < NOW) ~= f[7] then return nil, nil end
  local state = fstate
  if job.cancel_requested and (state == 'retrying' or state == 'queued') then state = 'cancelled' end
  local sets, drops = {}, { 'lease', 'lease_expires_at' }
  local function set(k, v) sets[#sets + 1] = k; sets[#sets + 1] = v end
  UNLEASED[#UNLEASED + 1] = id
  if job.max_processing then redis.call('ZREM', B .. ':deadline', id) end
  if state == 'cancelled' and fstate ~= 'cancelled' then
    set('finished_at', f17(NOW))
    job.finished_at = NOW
  end
  if TERMINAL[state] and state == fstate then
    set('finished_at', f17(NOW))
    job.finished_at = NOW
    if f[4] then set('result', f[4]) else drops[#drops + 1] = 'result' end
    if f[5] then set('error', f[5]) end
  elseif fstate == 'retrying' then
    set('run_at', f17(NOW + f[6]))
    if f[5] then set('error', f[5]) else drops[#drops + 1] = 'error' end
  elseif fstate == 'queued' then -- handed back: the attempt is refunded
    set('attempts', tonumber(job.attempts) - 1)
    set('run_at', f17(NOW))
    drops[#drops + 1] = 'started_at'
    if f[14] > 0 then pause(job.channel, f[14]) end
    if job.dedup_key ~= nil then
      local field = dkey(job.channel, job.dedup_key)
      if redis.call('HEXISTS', B .. ':dedup', field) == 1 then -- a twin took the key meanwhile
        drops[#drops + 1] = 'dedup_key'
      elseif state == 'queued' then
        redis.call('HSET', B .. ':dedup', field, id)
      end
    end
  end
  redis.call('HDEL', jkey(id), unpack(drops))
  move(job, state, sets)
  if state == 'queued' then
    ready_add(job)
  elseif state == 'retrying' then
    redis.call('ZADD', B .. ':delayed', NOW + f[6], id)
  else
    ENDED[#ENDED + 1] = job.finished_at
    ENDED[#ENDED + 1] = id
    resolve(id, state, job.kids)
  end
  return state, job
end

-- The core's rule for one report (for_finish), from the job as its worker claimed it.
local function finish_events(f, state, job)
  local id, fstate, n = f[1], f[3], f[10]
  local worker = f[11] or nil
  local function ev(kind, err, detail) event(kind, id, f[8], f[9], n, worker, err, detail) end
  if state == nil then
    ev('report_refused', f[12])
    return
  end
  local err = f[5] or nil
  if f[7] then ev('lease_expired', err) end
  if fstate == 'failed' or fstate == 'retrying' then ev('failed', err) end
  if state == 'retrying' then
    ev('retrying', err, f[13])
  elseif state == 'failed' and n >= tonumber(job.max_attempts) then
    ev('attempts_exhausted', err)
  elseif ENDED_AS[state] then
    ev(ENDED_AS[state])
  end
  if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
    ev('finalized', nil, state)
  end
end

local states, back, freed = {}, false, {}
for i, f in ipairs(cjson.decode(ARGV[3])) do
  local state, job = apply(f)
  states[i] = state or false
  finish_events(f, state, job)
  if state == 'queued' or state == 'retrying' then back = true end
  if state then freed[job.channel] = true end
end
flush_sets()
changes_events()
-- Wake idle workers when jobs came back, children were released, or a slot of a
-- capped channel (or queue) was freed.
local limited = redis.call('EXISTS', B .. ':qmax') == 1
if not (back or limited or #CHANGES > 0) then
  for channel in pairs(freed) do
    if policy(channel) then limited = true; break end
  end
end
if back or limited or #CHANGES > 0 then wake() end
local stored = step_done(ARGV[1], ARGV[2])
return { stored, states, CHANGES }
