-- limiter_acquire.lua: _limits.acquire for ticket ARGV[6] of weight ARGV[7]; ARGV[8]: '1'
-- to wait (a new ticket keeps its place in line), '0' to leave at once if not granted.
-- Returns {token, lease end, ahead, retry after, wake-up text (see finish)}; false for
-- what does not apply.

local ticket, weight, wait = ARGV[6], tonumber(ARGV[7]), ARGV[8] == '1'
load()
local woken = settle(front())
local token = redis.call('HGET', S, '@' .. ticket)
local ends = token and redis.call('ZSCORE', H, token)
if not token then
  queue_up(ticket, weight, wait, woken)
  token = GRANTS[ticket] -- (granted here if at all)
  ends = token and f17(NOW + LEASE)
end
local wake = finish(without(woken, ticket))
if token then return { token, ends, 0, false, wake } end
local ahead = redis.call('ZRANK', W, ticket) or redis.call('ZCARD', W)
local retry = false
if ahead == 0 then
  local seconds = rate_wait(weight)
  if seconds ~= nil then retry = f17(seconds) end
end
return { false, false, ahead, retry, wake }
