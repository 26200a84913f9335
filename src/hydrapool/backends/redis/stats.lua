-- stats.lua: one consistent snapshot: counts per state and channel, running jobs, limits
-- (the queue's max_concurrency and rate, the channels' policies), the channels still paused.
local running = {}
for _, id in ipairs(redis.call('ZRANGE', B .. ':lease', 0, -1)) do
  running[#running + 1] = redis.call('HGETALL', jkey(id))
end
local paused = {}
local pauses = redis.call('HGETALL', B .. ':paused')
for i = 1, #pauses, 2 do
  if tonumber(pauses[i + 1]) > NOW then
    paused[#paused + 1] = pauses[i]
    paused[#paused + 1] = pauses[i + 1]
  end
end
local limits = redis.call('MGET', B .. ':qmax', B .. ':qrate')
return { redis.call('HGETALL', B .. ':cc'), running, limits[1] or '',
  redis.call('HGETALL', B .. ':pol'), limits[2] or '', paused }
