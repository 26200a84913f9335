-- limiter.lua: what every Limiter step starts with (instead of common.lua: these steps
-- touch no queue). The steps mirror backends/_limits.py, with the server's clock.
--
-- One limiter key's state, every key under the limiter's hash tag "{prefix:L/name}":
--   KEYS[1] state hash:  fence (the last token), seq (the last arrival), held (weight
--                        held), recent (weight in the rate log), and per entry
--                        '#<token>' = '<weight> <ticket>' (a holder),
--                        '@<ticket>' = <token> (the holder a ticket became),
--                        '=<ticket>' = <weight> (a waiter).
--   KEYS[2] holders:     zset token -> lease end.
--   KEYS[3] line:        zset ticket -> arrival number (first come first).
--   KEYS[4] places:      zset ticket -> end of the waiter's place.
--   KEYS[5] rate log:    zset '<token> <weight>' -> grant time (only with a rate).
-- The running sums (held, recent) keep each step O(entries touched): nothing is summed.
-- ARGV[1]: the limiter's wake channel; ARGV[2]: limit or ''; ARGV[3], ARGV[4]: the
-- rate's weight and seconds, or ''; ARGV[5]: the lease in seconds. A step's own
-- arguments follow from ARGV[6]. Floats travel as "%.17g" text.
local S, H, W, E, R = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local WAKE = ARGV[1]
local LIMIT, RATE, PER = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local LEASE = tonumber(ARGV[5])
local t = redis.call('TIME')
local NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function f17(x) return string.format('%.17g', x) end

-- Tickets this step promoted -> their token (the wake-up carries the grant).
local GRANTS = {}

-- The running sums and counters, read once per step and written back once if changed.
local HELD, RECENT, FENCE = 0, 0, 0
local LOADED = {}
local function load()
  local v = redis.call('HMGET', S, 'held', 'recent', 'fence')
  HELD, RECENT, FENCE = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  LOADED = { HELD, RECENT, FENCE }
end
local function save()
  if HELD ~= LOADED[1] or RECENT ~= LOADED[2] or FENCE ~= LOADED[3] then
    redis.call('HSET', S, 'held', HELD, 'recent', RECENT, 'fence', string.format('%d', FENCE))
  end
end

-- Lists can be long (a crowd whose places ended together): commands take them in chunks,
-- under Lua's limit on unpack.
local function each_chunk(list, fn)
  for i = 1, #list, 500 do fn(unpack(list, i, math.min(i + 499, #list))) end
end

local function front() return redis.call('ZRANGE', W, 0, 0)[1] end

local function without(list, ticket)
  local out = {}
  for _, x in ipairs(list) do
    if x ~= ticket then out[#out + 1] = x end
  end
  return out
end

-- A holder's entries leave the state hash (its zset member is the caller's to remove).
local function forget_holder(token)
  local info = redis.call('HGET', S, '#' .. token)
  if not info then return end
  local sp = string.find(info, ' ', 1, true)
  HELD = HELD - tonumber(string.sub(info, 1, sp - 1))
  redis.call('HDEL', S, '#' .. token, '@' .. string.sub(info, sp + 1))
end

local function unhold(token)
  forget_holder(token)
  redis.call('ZREM', H, token)
end

local function leave_line(ticket)
  redis.call('ZREM', W, ticket)
  redis.call('ZREM', E, ticket)
  redis.call('HDEL', S, '=' .. ticket)
end

local function log_weight(member)
  return tonumber(string.sub(member, string.find(member, ' ', 1, true) + 1))
end

-- _limits._drop_ended: holders and places whose lease ended (at or before NOW), and
-- grants that left the rate window (the whole log when there is no rate).
local function drop_holders()
  local gone = redis.call('ZRANGEBYSCORE', H, '-inf', NOW)
  if #gone == 0 then return end
  for _, token in ipairs(gone) do forget_holder(token) end
  redis.call('ZREMRANGEBYSCORE', H, '-inf', NOW)
end
local function drop_places()
  local gone = redis.call('ZRANGEBYSCORE', E, '-inf', NOW)
  if #gone == 0 then return end
  local fields = {}
  for i, ticket in ipairs(gone) do fields[i] = '=' .. ticket end
  each_chunk(gone, function(...) redis.call('ZREM', W, ...) end)
  each_chunk(fields, function(...) redis.call('HDEL', S, ...) end)
  redis.call('ZREMRANGEBYSCORE', E, '-inf', NOW)
end
local function drop_log()
  if RATE == nil then
    if RECENT ~= 0 then
      redis.call('DEL', R)
      RECENT = 0
    end
    return
  end
  local horizon = NOW - PER
  local gone = redis.call('ZRANGEBYSCORE', R, '-inf', horizon)
  if #gone == 0 then return end
  for _, member in ipairs(gone) do RECENT = RECENT - log_weight(member) end
  redis.call('ZREMRANGEBYSCORE', R, '-inf', horizon)
end
local function drop_ended()
  drop_holders()
  drop_places()
  drop_log()
end

local function fits(weight)
  if LIMIT ~= nil and HELD + weight > LIMIT then return false end
  return RATE == nil or RECENT + weight <= RATE
end

-- _limits._promote: the first waiter becomes a holder while it fits; appends to woken.
local function promote(woken)
  while true do
    local ticket = front()
    if not ticket then return end
    local weight = tonumber(redis.call('HGET', S, '=' .. ticket))
    if not fits(weight) then return end
    redis.call('ZREM', W, ticket)
    redis.call('ZREM', E, ticket)
    FENCE = FENCE + 1
    local token = string.format('%d', FENCE)
    redis.call('ZADD', H, NOW + LEASE, token)
    redis.call('HDEL', S, '=' .. ticket)
    redis.call('HSET', S, '#' .. token, weight .. ' ' .. ticket, '@' .. ticket, token)
    HELD = HELD + weight
    GRANTS[ticket] = token
    if RATE ~= nil then
      redis.call('ZADD', R, NOW, token .. ' ' .. weight)
      RECENT = RECENT + weight
    end
    woken[#woken + 1] = ticket
  end
end

-- _limits.settle: drop what ended, promote; the tickets to wake (``first``: the first
-- waiter when the step began).
local function settle(first)
  drop_ended()
  local woken = {}
  promote(woken)
  local head = front()
  if head and head ~= first then woken[#woken + 1] = head end
  return woken
end

-- Every step that changed something ends here: the sums are written, and the tickets to
-- wake are announced to every process following the limiter, as "<lease end> <ticket>
-- <token> ..." (token 0: the ticket is first in line now, not granted), so a waiter
-- promoted here learns its grant without another step. Returns that text ('' if none).
local function finish(woken)
  save()
  if #woken == 0 then return '' end
  local parts = { f17(NOW + LEASE) }
  for _, ticket in ipairs(woken) do
    parts[#parts + 1] = ticket
    parts[#parts + 1] = GRANTS[ticket] or '0'
  end
  local wake = table.concat(parts, ' ')
  redis.call('PUBLISH', WAKE, wake)
  return wake
end

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
