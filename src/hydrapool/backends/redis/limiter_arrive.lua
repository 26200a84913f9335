-- limiter_arrive.lua: newcomers of one key that came together, each placed as
-- limiter_acquire.lua (waiting) would place it, one after the other in the order given:
-- ARGV[6], ARGV[7], ... are ticket, weight pairs. Returns, per ticket in that order,
-- {token, lease end, ahead, retry after} (false for what does not apply), flattened, then
-- the wake-up text of the step (see finish), which names none of these tickets.

load()
local woken = settle(front())
local mine = {}
for i = 6, #ARGV, 2 do
  local ticket = ARGV[i]
  mine[ticket] = true
  if not redis.call('HGET', S, '@' .. ticket) then
    queue_up(ticket, tonumber(ARGV[i + 1]), true, woken)
  end
end
local out = {}
for i = 6, #ARGV, 2 do
  local ticket = ARGV[i]
  local token = redis.call('HGET', S, '@' .. ticket)
  if token then
    out[#out + 1] = token
    out[#out + 1] = redis.call('ZSCORE', H, token)
    out[#out + 1] = 0
    out[#out + 1] = false
  else
    local ahead = redis.call('ZRANK', W, ticket) or redis.call('ZCARD', W)
    local retry = false
    if ahead == 0 then
      local seconds = rate_wait(tonumber(ARGV[i + 1]))
      if seconds ~= nil then retry = f17(seconds) end
    end
    out[#out + 1] = false
    out[#out + 1] = false
    out[#out + 1] = ahead
    out[#out + 1] = retry
  end
end
local others = {}
for _, ticket in ipairs(woken) do
  if not mine[ticket] then others[#others + 1] = ticket end
end
out[#out + 1] = finish(others)
return out
