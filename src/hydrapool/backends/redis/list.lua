-- list.lua: jobs newest first, of state ARGV[1] and channel ARGV[2] ('' for any): looks
-- at most ARGV[5] jobs from the ARGV[4]-th newest, returns up to ARGV[3] that match and
-- how many it looked at (the caller goes on from there while it needs more).
local state, channel, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local start, span = tonumber(ARGV[4]), tonumber(ARGV[5])
local ids = redis.call('ZREVRANGE', B .. ':all', start, start + span - 1)
local out, looked = {}, 0
for _, id in ipairs(ids) do
  looked = looked + 1
  local flat = redis.call('HGETALL', jkey(id))
  if #flat > 0 then
    local job = as_table(flat)
    if (state == '' or job.state == state) and (channel == '' or job.channel == channel) then
      out[#out + 1] = flat
      if #out >= limit then break end
    end
  end
end
return { out, looked, #ids }
