-- heartbeat.lua: extend by ARGV[1] seconds the leases (ARGV[2..]: id, token pairs) that
-- are still ours and unexpired. Returns {kept ids, ids someone asked to cancel}.
local until_ = NOW + tonumber(ARGV[1])
local kept, cancel = {}, {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local v = redis.call('HMGET', jkey(id), 'state', 'lease', 'lease_expires_at', 'cancel_requested')
  if v[1] == 'running' and v[2] == ARGV[i + 1] and tonumber(v[3]) >= NOW then
    redis.call('HSET', jkey(id), 'lease_expires_at', f17(until_))
    redis.call('ZADD', B .. ':lease', until_, id)
    kept[#kept + 1] = id
    if v[4] then cancel[#cancel + 1] = id end
  end
end
return { kept, cancel }
