-- expired.lua: running jobs whose lease (or max_processing) ran out, at most ARGV[1].
-- A job over its max_processing gets its lease expired now, so the rescue fences it.
local limit = tonumber(ARGV[1])
local over = redis.call('ZRANGEBYSCORE', B .. ':deadline', '-inf', '(' .. f17(NOW), 'LIMIT', 0, limit)
for _, id in ipairs(over) do
  redis.call('ZREM', B .. ':deadline', id)
  local v = redis.call('HMGET', jkey(id), 'state', 'lease_expires_at')
  if v[1] == 'running' and v[2] and tonumber(v[2]) >= NOW then
    redis.call('HSET', jkey(id), 'lease_expires_at', f17(NOW - 0.000001))
    redis.call('ZADD', B .. ':lease', NOW - 0.000001, id)
  end
end
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', B .. ':lease', '-inf', '(' .. f17(NOW), 'LIMIT', 0, limit)) do
  out[#out + 1] = redis.call('HGETALL', jkey(id))
end
return out
