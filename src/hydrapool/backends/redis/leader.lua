-- leader.lua: take or renew the named lease ARGV[1] for owner ARGV[2] for ARGV[3] ms.
local key = B .. ':lead:' .. ARGV[1]
local holder = redis.call('GET', key)
if holder and holder ~= ARGV[2] then return 0 end
redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
return 1
