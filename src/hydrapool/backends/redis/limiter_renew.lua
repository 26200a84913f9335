-- limiter_renew.lua: _limits.renew: extend the grants ARGV[6..] by the lease; for each,
-- 1 if it was still held (its lease not ended), else 0. Nothing is settled.
local kept = {}
for i = 6, #ARGV do
  local ends = tonumber(redis.call('ZSCORE', H, ARGV[i]))
  if ends ~= nil and ends > NOW then
    redis.call('ZADD', H, 'XX', NOW + LEASE, ARGV[i])
    kept[#kept + 1] = 1
  else
    kept[#kept + 1] = 0
  end
end
return kept
