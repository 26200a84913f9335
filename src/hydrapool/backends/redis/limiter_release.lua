-- limiter_release.lua: _limits.release: end the grant ARGV[6] (refused, 0, when its
-- lease had ended: fenced), settle. Returns {1 or 0, wake-up text}.
load()
local first = front()
local ends = tonumber(redis.call('ZSCORE', H, ARGV[6]))
local done = ends ~= nil and ends > NOW
if ends ~= nil then unhold(ARGV[6]) end
return { done and 1 or 0, finish(settle(first)) }
