-- enqueue.lua: insert a batch of jobs (dedup, dependencies, channel max_size) with its
-- events. ARGV: jobs (JSON), detail ('' for none), events ('1' to store), stream cap.
local out, err = insert(cjson.decode(ARGV[1]), ARGV[2] ~= '' and ARGV[2] or nil)
if err then return redis.error_reply(err) end
local stored = step_done(ARGV[3], ARGV[4])
return { f17(NOW), stored, out }
