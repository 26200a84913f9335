-- cancel.lua: cancel job ARGV[1] if it has not started (its children follow); flag it
-- for its worker if it runs. ARGV[2]: '1' to store events; ARGV[3]: stream cap.
local id = ARGV[1]
local job = job_get(id)
if job == nil then return { { 0, f17(NOW), 0 }, 0, {}, {} } end
local done = 0
if NOT_ENDED[job.state] then
  unwait(job)
  redis.call('HDEL', jkey(id), 'parents_left')
  redis.call('HSET', jkey(id), 'finished_at', f17(NOW))
  job.finished_at = NOW
  move(job, 'cancelled')
  ended(job)
  resolve(id, 'cancelled', job.kids)
  event('cancelled', id, job.channel, job.task, job.attempts)
  event('finalized', id, job.channel, job.task, job.attempts, nil, nil, 'cancelled')
  changes_events()
  done = 1
  wake()
elseif job.state == 'running' then
  redis.call('HSET', jkey(id), 'cancel_requested', '1')
  wake()
end
local stored = step_done(ARGV[2], ARGV[3])
return { stored, done, redis.call('HGETALL', jkey(id)), CHANGES }
