-- event_since.lua: the newest event number stored before time ARGV[1] (0 if none), by a
-- binary search over the stream (its ids are 0-<seq>, consecutive after the trimmed head).
local function entry_time(seq)
  local e = redis.call('XRANGE', B .. ':ev', '0-' .. seq, '+', 'COUNT', 1)
  if #e == 0 then return nil, nil end
  local id = e[1][1]
  local fields = e[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' then return tonumber(string.sub(id, 3)), tonumber(fields[i + 1]) end
  end
  return nil, nil
end
local when = tonumber(ARGV[1])
local first, first_time = entry_time(0)
if first == nil or first_time >= when then return 0 end
local last = tonumber(redis.call('GET', B .. ':evn') or '0')
local lo, hi = first, last -- lo: known before `when`
while lo < hi do
  local mid = math.floor((lo + hi + 1) / 2)
  local seq, at = entry_time(mid)
  if seq ~= nil and at < when then lo = seq else hi = mid - 1 end
end
return lo
