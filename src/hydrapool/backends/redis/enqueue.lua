-- enqueue.lua: insert a batch of jobs (dedup, dependencies, channel max_size) with its
-- events, hand what became ready to idle workers (hand.lua) and wake the others for the
-- rest. ARGV: jobs (JSON), detail ('' for none), events ('1' to store), stream cap.
-- The count returned with the stored events is the insert's alone (the core made those;
-- the hand-offs' events follow them).
local out, err, ready = insert(cjson.decode(ARGV[1]), ARGV[2] ~= '' and ARGV[2] or nil)
if err then return redis.error_reply(err) end
local mine = #EVENTS
if hand(ready) then wake() end
local stored = step_done(ARGV[3], ARGV[4])
stored[3] = mine
return { f17(NOW), stored, out }
