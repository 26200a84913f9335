-- schedules.lua: schedules due by ARGV[1] ('' for all), soonest first, at most ARGV[2].
local top = ARGV[1] == '' and '+inf' or f17(NOW)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', B .. ':scd', '-inf', top, 'LIMIT', 0, tonumber(ARGV[2]))) do
  out[#out + 1] = redis.call('HGETALL', B .. ':sc:' .. id)
end
return out
