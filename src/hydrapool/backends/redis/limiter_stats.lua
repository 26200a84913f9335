-- limiter_stats.lua: _limits.stats: drop what ended (no promotion), then count.
-- Returns {holders, held, waiters, recent or false}.
load()
drop_ended()
save()
local recent = false
if RATE ~= nil then recent = RECENT end
return { redis.call('ZCARD', H), HELD, redis.call('ZCARD', W), recent }
