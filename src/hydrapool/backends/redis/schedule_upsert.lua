-- schedule_upsert.lua: create or replace schedule ARGV[1] (its "channel\0name" id) with
-- the fields ARGV[2..] (pairs). Declaring the same spec again keeps its next run.
local id = ARGV[1]
local key = B .. ':sc:' .. id
local fields = {}
for i = 2, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end
local old = redis.call('HMGET', key, 'spec', 'next_run', 'created_at')
fields.created_at = old[3] or f17(NOW)
if old[1] and old[1] == fields.spec then fields.next_run = old[2] end
redis.call('DEL', key)
local flat = {}
for k, v in pairs(fields) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', key, unpack(flat))
redis.call('ZADD', B .. ':scd', tonumber(fields.next_run), id)
return 1
