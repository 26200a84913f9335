-- insert.lua: plan, then write, a batch of new jobs (prepended to enqueue and schedule_fire).
--
-- A job is [id, task, channel, payload, priority (text), max_attempts (text), delay,
-- run_at|false, max_processing|false, dedup_key|false, depends_on, cascade, rank (text)]. Nothing is written until
-- every job of the batch passed its checks: the batch is all or nothing.
local ALLOWED_PARENT = { waiting = true, queued = true, dropped = true, cancelled = true,
  failed = true }

local function dep_error(index, parent, state, started)
  return 'HPDEP\t' .. index .. '\t' .. parent .. '\t' .. (state or '') .. '\t' ..
    (started and '1' or '0')
end

local function channel_size(channel)
  return channel_count('waiting', channel) + channel_count('queued', channel) +
    channel_count('retrying', channel)
end

-- The parents a job waits for, and the first that already ended it (cascade).
local function plan_parents(index, j, batch)
  local waiting, doomed, seen = {}, nil, {}
  for _, p in ipairs(j[11]) do
    if not seen[p] then
      seen[p] = true
      local st, started = batch[p], false
      if st == nil then
        local v = redis.call('HMGET', jkey(p), 'state', 'started_at')
        st, started = v[1], v[2]
      end
      if not st then return nil, nil, dep_error(index, p, nil, false) end
      if started or not ALLOWED_PARENT[st] then return nil, nil, dep_error(index, p, st, started) end
      if st == 'waiting' or st == 'queued' then
        waiting[#waiting + 1] = p
      elseif j[12] and doomed == nil then
        doomed = { p, st }
      end
    end
  end
  return waiting, doomed, nil
end

local function plan_batch(jobs)
  local plan, alias, pending, sizes, batch, index_of, limits = {}, {}, {}, {}, {}, {}, {}
  for i, j in ipairs(jobs) do
    local id, channel, dk = j[1], j[3], j[10]
    if batch[id] or alias[id] or redis.call('EXISTS', jkey(id)) == 1 then
      return nil, 'HPDUP\t' .. id
    end
    for k, p in ipairs(j[11]) do
      if alias[p] then j[11][k] = alias[p] end
    end
    local twin = nil
    if dk then
      twin = pending[dkey(channel, dk)] or redis.call('HGET', B .. ':dedup', dkey(channel, dk))
    end
    if twin then
      alias[id] = twin
      plan[i] = { dedup = twin, index = index_of[twin] }
    else
      local waiting, doomed, err = plan_parents(i, j, batch)
      if err then return nil, err end
      if sizes[channel] == nil then
        local _, maxs = policy(channel)
        limits[channel] = maxs or false
        sizes[channel] = maxs and channel_size(channel) or 0 -- (only a max_size reads it)
      end
      local run_at = j[8] or (NOW + j[7])
      local state = 'queued'
      if limits[channel] and sizes[channel] >= limits[channel] then
        state = 'dropped'
      elseif doomed then
        state = 'failed'
      elseif run_at > NOW or #waiting > 0 then
        state = 'waiting'
      end
      if state ~= 'dropped' and state ~= 'failed' then sizes[channel] = sizes[channel] + 1 end
      plan[i] = { state = state, run_at = run_at, waiting = waiting, doomed = doomed }
      batch[id] = state
      index_of[id] = i
      if dk and state ~= 'dropped' then pending[dkey(channel, dk)] = id end
    end
  end
  return plan, nil
end

local function write_job(j, p, detail)
  local id, task, channel, dk = j[1], j[2], j[3], j[10]
  local order = redis.call('INCR', B .. ':n')
  local job = { id = id, channel = channel, order = order, priority = j[5], rank = j[13] }
  local fields = { 'id', id, 'task', task, 'channel', channel, 'priority', j[5],
    'attempts', 0, 'max_attempts', j[6], 'payload', j[4], 'created_at', f17(NOW),
    'run_at', f17(p.run_at), 'order', order, 'rank', j[13] }
  if j[9] then fields[#fields + 1] = 'max_processing'; fields[#fields + 1] = f17(j[9]) end
  if dk then fields[#fields + 1] = 'dedup_key'; fields[#fields + 1] = dk end
  local state, err = p.state, nil
  if state == 'dropped' then err = 'channel full' end
  if state == 'failed' then err = 'dependency ' .. p.doomed[1] .. ' ended ' .. p.doomed[2] end
  if err then
    fields[#fields + 1] = 'finished_at'; fields[#fields + 1] = f17(NOW)
    fields[#fields + 1] = 'error'; fields[#fields + 1] = err
  end
  fields[#fields + 1] = 'state'; fields[#fields + 1] = state
  redis.call('HSET', jkey(id), unpack(fields))
  redis.call('ZADD', B .. ':all', order, id)
  count(state, channel, 1) -- (move() without a second HSET)
  job.state = state
  if state == 'queued' then
    ready_add(job)
  elseif state == 'waiting' and #p.waiting > 0 then
    redis.call('HSET', jkey(id), 'parents_left', #p.waiting)
    local flag = j[12] and '1' or '0'
    for _, parent in ipairs(p.waiting) do
      redis.call('RPUSH', B .. ':kids:' .. parent, flag .. id)
      redis.call('HSET', jkey(parent), 'kids', '1')
    end
  elseif state == 'waiting' then
    redis.call('ZADD', B .. ':delayed', p.run_at, id)
  else
    job.finished_at = NOW
    ended(job)
  end
  if dk and (state == 'waiting' or state == 'queued') then
    redis.call('HSET', B .. ':dedup', dkey(channel, dk), id)
  end
  -- the events of the core's rule for inserts (for_inserts)
  if state == 'dropped' then
    event('dropped', id, channel, task, 0, nil, err, detail)
  else
    event('enqueued', id, channel, task, 0, nil, nil, detail)
  end
  if state == 'failed' then event('dependencies_unmet', id, channel, task, 0, nil, err) end
  if err then event('finalized', id, channel, task, 0, nil, nil, state) end
end

-- Returns, per job, {state, run_at, doomed parent, its state} for a stored one,
-- {'=', batch index} for one deduplicated against an earlier job of the batch, or
-- {'~', twin's fields...} for one deduplicated against a stored job; then nil (or the
-- error) and the ids of the jobs that became ready (the caller announces them).
local function insert(jobs, detail)
  local plan, err = plan_batch(jobs)
  if err then return nil, err end
  local out, ready = {}, {}
  for i, j in ipairs(jobs) do
    local p = plan[i]
    if p.dedup and p.index then
      out[i] = { '=', p.index }
    elseif p.dedup then
      local flat = redis.call('HGETALL', jkey(p.dedup))
      table.insert(flat, 1, '~')
      out[i] = flat
    else
      write_job(j, p, detail)
      if p.state == 'queued' then ready[#ready + 1] = j[1] end
      local doomed = p.doomed or { '', '' }
      out[i] = { p.state, f17(p.run_at), doomed[1], doomed[2] }
    end
  end
  return out, nil, ready
end
