-- claim.lua: claim up to ARGV[1] due jobs for worker ARGV[4] under lease token ARGV[3]
-- for ARGV[2] seconds (see take.lua). ARGV[5]: channels (JSON list) or ''; ARGV[6]: '1'
-- to store events; ARGV[7]: stream cap.
-- ARGV[8]: '' or, for a worker with an inbox (hand.lua), how long (seconds) this claim
-- registers it as idle with the slots it left free; ARGV[9]: the tags of the hand-offs
-- the worker counts as running since its last claim ('\t' between them). Hand-offs it
-- did not count yet, waiting in its inbox or taken by its reader (B:got:<worker>) and
-- maybe on their way, count against ARGV[1]: the worker never gets more than its slots.
-- ARGV[10]: how many of ARGV[1] are places to hold jobs (a prefetching worker's): they
-- are not registered, so hand-offs go to free slots only, never to a busy worker.
local worker, ttl = ARGV[4], ARGV[8]
local slots = tonumber(ARGV[1])
if ttl ~= '' then
  local acked = {}
  for tag in string.gmatch(ARGV[9], '[^\t]+') do acked[tag] = true end
  for _, item in ipairs(redis.call('LRANGE', B .. ':in:' .. worker, 0, -1)) do
    slots = slots - (tonumber(string.match(item, '^(%d+)\t')) or 0)
  end
  local got = B .. ':got:' .. worker
  local held, keep = redis.call('LRANGE', got, 0, -1), {}
  for _, item in ipairs(held) do
    local n, tag = string.match(item, '^(%d+)\t([^\t]*)\t')
    if n and not acked[tag] then
      keep[#keep + 1] = item
      slots = slots - tonumber(n)
    end
  end
  if #keep < #held then
    redis.call('DEL', got)
    if #keep > 0 then redis.call('RPUSH', got, unpack(keep)) end
  end
  if #keep > 0 then redis.call('PEXPIRE', got, string.format('%d', math.ceil((tonumber(ARGV[2]) + 60) * 1000))) end
end
local out = {}
if slots > 0 then out = take(slots, tonumber(ARGV[2]), ARGV[3], worker, ARGV[5]) end
if ttl ~= '' then
  local free = slots - #out - (tonumber(ARGV[10]) or 0)
  if free > 0 then
    redis.call('HSET', B .. ':idle', worker, table.concat({ free, ARGV[2],
      f17(NOW + tonumber(ttl)), ARGV[3], ARGV[5] }, '\t'))
  else
    redis.call('HDEL', B .. ':idle', worker)
  end
end
local stored = step_done(ARGV[6], ARGV[7])
if #out == 0 then return { stored, '[]' } end
return { stored, cjson.encode(out) }
