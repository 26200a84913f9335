-- release.lua: due waiting/retrying jobs (no parent left to wait for) become queued.
-- ARGV[1]: '1' to store events; ARGV[2]: stream cap.
local function release(id)
  local job = job_get(id)
  if job ~= nil and (job.state == 'waiting' or job.state == 'retrying') then
    change(job, 'queued')
    move(job, 'queued')
    ready_add(job)
  end
end
local due = redis.call('ZRANGEBYSCORE', B .. ':delayed', '-inf', NOW)
for _, id in ipairs(due) do
  redis.call('ZREM', B .. ':delayed', id)
  release(id)
end
for _, id in ipairs(redis.call('SMEMBERS', B .. ':due')) do release(id) end
redis.call('DEL', B .. ':due')
changes_events()
if #CHANGES > 0 then wake() end
local stored = step_done(ARGV[1], ARGV[2])
return { stored, CHANGES }
