-- queue_limits.lua: set the queue's max_concurrency ARGV[1] and rate ARGV[2] ("n:per"),
-- each '' for none, together, and tell idle workers: more may be claimable.
local values = { qmax = ARGV[1], qrate = ARGV[2] }
for name, value in pairs(values) do
  if value == '' then
    redis.call('DEL', B .. ':' .. name)
  else
    redis.call('SET', B .. ':' .. name, value)
  end
end
redis.call('PUBLISH', B .. ':wake', '1')
