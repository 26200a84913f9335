-- common.lua: helpers every step script starts with (the backend prepends this file).
--
-- KEYS[1] is the queue's base key "{prefix:queue}": every key below starts with it,
-- so one queue lives in one Redis Cluster slot and each script is one atomic step.
-- Floats travel as "%.17g" text (Lua would cut numbers to integers on return).
local B = KEYS[1]
local t = redis.call('TIME')
local NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f17(x) return string.format('%.17g', x) end
local function jkey(id) return B .. ':j:' .. id end
local function rkey(channel) return B .. ':r:' .. channel end
local function dkey(channel, key) return channel .. '\0' .. key end

local NOT_ENDED = { waiting = true, queued = true, retrying = true }
local TERMINAL = { succeeded = true, failed = true, cancelled = true, dropped = true }

-- A job's fields as a Lua table (nil when the job does not exist).
local function as_table(flat)
  local job = {}
  for i = 1, #flat, 2 do job[flat[i]] = flat[i + 1] end
  return job
end
local function job_get(id)
  local flat = redis.call('HGETALL', jkey(id))
  if #flat == 0 then return nil end
  return as_table(flat)
end

-- Member of a channel's ready set (every score is 0, so members sort as text): the
-- job's rank (20 digits, smaller for a higher 64-bit priority, made by the caller), its
-- arrival (16 digits, so equal priorities are FIFO), then its id.
local RANK_WIDTH = 36
local function ready_member(job)
  return job.rank .. string.format('%016d', tonumber(job.order)) .. job.id
end
local SEEN_CHANNELS = {}
local function ready_add(job)
  redis.call('ZADD', rkey(job.channel), 0, ready_member(job))
  if not SEEN_CHANNELS[job.channel] then
    redis.call('SADD', B .. ':chans', job.channel)
    SEEN_CHANNELS[job.channel] = true
  end
end
local function ready_remove(job)
  redis.call('ZREM', rkey(job.channel), ready_member(job))
end

-- Move a job between states. The per-channel counts by state change in memory and are
-- written once per step (flush_counts); ``fields`` (name, value, ...) are set in the
-- same HSET as the new state.
local DELTAS = {}
local function count(state, channel, by)
  local field = state .. ':' .. channel
  DELTAS[field] = (DELTAS[field] or 0) + by
end
local function flush_counts()
  for field, by in pairs(DELTAS) do
    if by ~= 0 then redis.call('HINCRBY', B .. ':cc', field, by) end
  end
  DELTAS = {}
end
local function move(job, new, fields)
  if job.state ~= nil then count(job.state, job.channel, -1) end
  count(new, job.channel, 1)
  job.state = new
  if fields then
    redis.call('HSET', jkey(job.id), 'state', new, unpack(fields))
  else
    redis.call('HSET', jkey(job.id), 'state', new)
  end
end

-- Drop the job from the indexes of jobs that wait (ready, delayed, due) and its dedup key.
local function unwait(job)
  ready_remove(job)
  redis.call('ZREM', B .. ':delayed', job.id)
  redis.call('SREM', B .. ':due', job.id)
  if job.dedup_key ~= nil then
    local field = dkey(job.channel, job.dedup_key)
    if redis.call('HGET', B .. ':dedup', field) == job.id then
      redis.call('HDEL', B .. ':dedup', field)
    end
  end
end

local function ended(job)
  redis.call('ZADD', B .. ':ended', tonumber(job.finished_at), job.id)
end

-- ── events: the core's rules (hydrapool.queue.events), applied here so that a step
-- and its events are one atomic write. tests/conformance/test_stored_events.py checks
-- that these agree with the Python rules.
local EVENTS = {}
local function event(kind, job_id, channel, task, attempt, worker, err, detail)
  EVENTS[#EVENTS + 1] = { kind, job_id, channel, task, tonumber(attempt) or 0,
    worker or false, err or false, detail or false }
end

local RELEASED_BY = { waiting = 'released', retrying = 'unlocked' }

-- Change records, for the caller (and the events of the for_changes rule).
local CHANGES = {}
local function change(job, new, parent, parent_state, err)
  CHANGES[#CHANGES + 1] = { job.id, job.channel, job.task, tonumber(job.attempts), job.state,
    new, parent or false, parent_state or false, err or false }
end

local function changes_events(from)
  for i = from or 1, #CHANGES do
    local c = CHANGES[i]
    local id, channel, task, attempts, old, new = c[1], c[2], c[3], c[4], c[5], c[6]
    if c[7] then
      event('dependency_resolved', id, channel, task, attempts, nil, nil,
        'parent ' .. c[7] .. ' ' .. c[8])
    end
    if new == 'deleted' then
      event('deleted', id, channel, task, attempts, nil, nil, old)
    elseif new == 'failed' and old ~= 'failed' then
      event('dependencies_unmet', id, channel, task, attempts, nil, c[9])
      event('finalized', id, channel, task, attempts, nil, nil, 'failed')
    elseif new == 'queued' and RELEASED_BY[old] then
      event(RELEASED_BY[old], id, channel, task, attempts)
    end
  end
end

-- Store EVENTS in the queue's capped stream as one entry (its id is 0-<last seq>; it
-- holds the first seq, the time and the events), and announce the newest number.
-- Returns {first seq, now, count} (0 when there were none).
local function store_events(maxlen)
  flush_counts()
  local n = #EVENTS
  if n == 0 then return { 0, f17(NOW), 0 } end
  local last = redis.call('INCRBY', B .. ':evn', n)
  local first = last - n + 1
  local now = f17(NOW)
  redis.call('XADD', B .. ':ev', 'MAXLEN', '~', maxlen, '0-' .. last,
    'f', first, 't', now, 'e', cjson.encode(EVENTS))
  redis.call('PUBLISH', B .. ':evp', last)
  return { first, now, n }
end

-- The end of every writing step: write the counts; store the events if asked ('1').
local function step_done(with_events, maxlen)
  flush_counts()
  if with_events == '1' then return store_events(maxlen) end
  return { 0, f17(NOW), 0 }
end

local function wake() redis.call('PUBLISH', B .. ':wake', '1') end

-- A parent ended: release its children, or fail them in cascade (and their children).
local function resolve(parent_id, parent_state, has_kids)
  if not has_kids then return end
  local pending = { { parent_id, parent_state } }
  while #pending > 0 do
    local item = table.remove(pending)
    local parent, state = item[1], item[2]
    local kids = redis.call('LRANGE', B .. ':kids:' .. parent, 0, -1)
    redis.call('DEL', B .. ':kids:' .. parent)
    for _, entry in ipairs(kids) do
      local cascade = string.sub(entry, 1, 1) == '1'
      local job = job_get(string.sub(entry, 2))
      if job ~= nil and (job.state == 'waiting' or job.state == 'queued') then
        if state == 'succeeded' or not cascade then
          local left = (tonumber(job.parents_left) or 1) - 1
          if left > 0 then
            redis.call('HSET', jkey(job.id), 'parents_left', left)
            change(job, job.state, parent, state)
          else
            redis.call('HDEL', jkey(job.id), 'parents_left')
            local new = job.state
            if job.state == 'waiting' and tonumber(job.run_at) <= NOW then new = 'queued' end
            change(job, new, parent, state)
            if new == 'queued' and job.state == 'waiting' then
              move(job, 'queued')
              ready_add(job)
            elseif job.state == 'waiting' then
              redis.call('ZADD', B .. ':delayed', tonumber(job.run_at), job.id)
            end
          end
        else
          local err = 'dependency ' .. parent .. ' ended ' .. state
          change(job, 'failed', parent, state, err)
          redis.call('HDEL', jkey(job.id), 'parents_left')
          unwait(job)
          redis.call('HSET', jkey(job.id), 'finished_at', f17(NOW), 'error', err)
          job.finished_at = NOW
          move(job, 'failed')
          ended(job)
          if job.kids then pending[#pending + 1] = { job.id, 'failed' } end
        end
      end
    end
  end
end

-- Channel limits: max_concurrency, max_size, and the rate (starts, per seconds), each
-- nil when unlimited. Stored as "maxc:maxs", or "maxc:maxs:n:per" with a rate.
local function policy(channel)
  local p = redis.call('HGET', B .. ':pol', channel)
  if not p then return nil, nil, nil, nil end
  local maxc, maxs, n, per = string.match(p, '^([^:]*):([^:]*):?([^:]*):?(.*)$')
  return tonumber(maxc), tonumber(maxs), tonumber(n), tonumber(per)
end

local function channel_count(state, channel)
  return tonumber(redis.call('HGET', B .. ':cc', state .. ':' .. channel) or '0')
end
