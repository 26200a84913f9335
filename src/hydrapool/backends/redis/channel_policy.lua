-- channel_policy.lua: set channel ARGV[1]'s limits to ARGV[2] ("maxc:maxs", then ":n:per"
-- with a rate), or clear them (ARGV[2] ''), and tell idle workers: more may be claimable.
if ARGV[2] == '' then
  redis.call('HDEL', B .. ':pol', ARGV[1])
else
  redis.call('HSET', B .. ':pol', ARGV[1], ARGV[2])
end
redis.call('PUBLISH', B .. ':wake', '1')
