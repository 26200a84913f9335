-- limiter_cancel.lua: _limits.cancel: ticket ARGV[6] leaves the line, or gives back the
-- grant it was promoted to meanwhile; settle. Returns the wake-up text.
local ticket = ARGV[6]
load()
local first = front()
leave_line(ticket)
local token = redis.call('HGET', S, '@' .. ticket)
if token then unhold(token) end
return finish(without(settle(first), ticket))
