-- unidle.lua: worker ARGV[1] stops: it is no longer idle, and a '~' after what its inbox
-- holds tells its reader to stop once it took those jobs.
redis.call('HDEL', B .. ':idle', ARGV[1])
local inbox = B .. ':in:' .. ARGV[1]
redis.call('RPUSH', inbox, '~')
redis.call('PEXPIRE', inbox, 60000)
return 1
