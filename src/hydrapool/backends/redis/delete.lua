-- delete.lua: delete up to ARGV[5] jobs that ended more than ARGV[1] seconds ago (of state
-- ARGV[2] only, unless ''), skipping the first ARGV[6] that did not match.
-- ARGV[3]: '1' to store events; ARGV[4]: stream cap. Returns {stored, changes, scanned, kept}.
local cutoff = NOW - tonumber(ARGV[1])
local only = ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', B .. ':ended', '-inf', '(' .. f17(cutoff), 'LIMIT',
  tonumber(ARGV[6]), tonumber(ARGV[5]))
local kept = 0
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', jkey(id), 'state', 'channel', 'task', 'attempts')
  if v[1] == false then
    redis.call('ZREM', B .. ':ended', id)
  elseif only ~= '' and v[1] ~= only then
    kept = kept + 1
  else
    local job = { id = id, state = v[1], channel = v[2], task = v[3], attempts = v[4] }
    change(job, 'deleted')
    redis.call('DEL', jkey(id), B .. ':kids:' .. id)
    redis.call('ZREM', B .. ':all', id)
    redis.call('ZREM', B .. ':ended', id)
    count(job.state, job.channel, -1)
  end
end
changes_events()
local stored = step_done(ARGV[3], ARGV[4])
return { stored, CHANGES, #ids, kept }
