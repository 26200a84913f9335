-- stats.lua: one consistent snapshot: counts per state and channel, running jobs, limits.
local running = {}
for _, id in ipairs(redis.call('ZRANGE', B .. ':lease', 0, -1)) do
  running[#running + 1] = redis.call('HGETALL', jkey(id))
end
return { redis.call('HGETALL', B .. ':cc'), running, redis.call('GET', B .. ':qmax') or '',
  redis.call('HGETALL', B .. ':pol') }
