-- limiter_acquire.lua: _limits.acquire for ticket ARGV[6] of weight ARGV[7]; ARGV[8]: '1'
-- to wait (a new ticket keeps its place in line), '0' to leave at once if not granted.
-- Returns {token, lease end, ahead, retry after, wake-up text (see finish)}; false for
-- what does not apply.

-- _limits._rate_wait: seconds until ``weight`` more fits the rate window (nil: the
-- limit holds it back). The oldest grants leave the window first.
local function rate_wait(weight)
  if LIMIT ~= nil and HELD + weight > LIMIT then return nil end
  if RATE == nil then return 0 end
  local excess = RECENT + weight - RATE
  if excess <= 0 then return 0 end
  local start = 0
  while true do
    local page = redis.call('ZRANGE', R, start, start + 99, 'WITHSCORES')
    if #page == 0 then return 0 end
    for i = 1, #page, 2 do
      excess = excess - log_weight(page[i])
      if excess <= 0 then return math.max(0, tonumber(page[i + 1]) + PER - NOW) end
    end
    start = start + 100
  end
end

-- A ticket not holding a grant: renew its place, or join the back of the line.
local function queue_up(ticket, weight, wait, woken)
  if redis.call('ZSCORE', W, ticket) then
    redis.call('ZADD', E, NOW + LEASE, ticket)
    return
  end
  redis.call('ZADD', W, redis.call('HINCRBY', S, 'seq', 1), ticket)
  redis.call('ZADD', E, NOW + LEASE, ticket)
  redis.call('HSET', S, '=' .. ticket, weight)
  promote(woken)
  if not wait and redis.call('ZSCORE', W, ticket) then leave_line(ticket) end
end

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
