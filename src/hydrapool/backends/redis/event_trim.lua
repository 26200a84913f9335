-- event_trim.lua: delete events older than ARGV[1] seconds, except the newest.
local cutoff = NOW - tonumber(ARGV[1])
local key = B .. ':ev'
local removed = 0
while true do
  local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 500)
  if #head <= 1 then break end
  local drop = 0
  for i = 1, #head do
    local fields = head[i][2]
    local at = nil
    for k = 1, #fields, 2 do if fields[k] == 't' then at = tonumber(fields[k + 1]) end end
    if at == nil or at >= cutoff then break end
    drop = i
  end
  if drop == 0 then break end
  if drop == #head and redis.call('XLEN', key) == drop then drop = drop - 1 end
  if drop == 0 then break end
  for i = 1, drop do redis.call('XDEL', key, head[i][1]) end
  removed = removed + drop
  if drop < #head then break end
end
return removed
