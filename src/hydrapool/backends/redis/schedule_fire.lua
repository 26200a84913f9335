-- schedule_fire.lua: if schedule ARGV[1] is still due at ARGV[2], move it to ARGV[3] and
-- insert its job ARGV[4] (JSON, one job) with its events (ARGV[5]: detail; ARGV[6]: '1'
-- to store events; ARGV[7]: stream cap). Another coordinator that fired it first wins.
local key = B .. ':sc:' .. ARGV[1]
local current = redis.call('HGET', key, 'next_run')
if not current or tonumber(current) ~= tonumber(ARGV[2]) then return 0 end
-- insert() checks everything before it writes: a refused job leaves the schedule as it was.
local out, err, ready = insert(cjson.decode(ARGV[4]), ARGV[5])
if err then return redis.error_reply(err) end
if #ready > 0 then wake() end
redis.call('HSET', key, 'next_run', ARGV[3])
redis.call('ZADD', B .. ':scd', tonumber(ARGV[3]), ARGV[1])
local stored = step_done(ARGV[6], ARGV[7])
return { f17(NOW), stored, out }
