-- hand.lua: hand new jobs to idle workers (prepended to enqueue.lua, after take.lua).
--
-- A worker with an inbox registers as idle in its claims (claim.lua): B:idle maps its id
-- to "free slots\tlease\tregistered until\tlease token\tchannels". hand(n) claims, for
-- such workers, up to their free slots (take(), so every limit and the order hold) and
-- pushes the jobs to the worker's inbox list, B:in:<worker>, as one item ("<count>\t<tag>
-- \t<jobs as JSON>"). The worker's reader waits there in BLMOVE, which moves the item to
-- B:got:<worker>, where it stays until a claim of the worker says the worker counted it:
-- the jobs start without a claim round trip, and one on its way is never counted twice
-- or lost (a reader that lost its connection reads B:got again). Each hand-off has a
-- lease token of its own, its tag: the registered token, '.', a counter. A worker that
-- died leaves its inbox to expire; the jobs in it are leased, so the lease sweep frees
-- them. ``ready``: the ids of the jobs the step made ready. Returns whether any of them
-- is left (not handed; a take() may also hand older jobs that became claimable), for
-- which the caller wakes the other workers.
local function hand(ready)
  local n = #ready
  if n == 0 then return false end
  local taken = {}
  local idle = redis.call('HGETALL', B .. ':idle')
  local dry = false -- a take() for every channel found fewer than it asked for
  for i = 1, #idle, 2 do
    if n <= 0 then break end
    local worker = idle[i]
    local free, lease, until_, token, chans =
      string.match(idle[i + 1], '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
    free = tonumber(free)
    if tonumber(until_) <= NOW then
      redis.call('HDEL', B .. ':idle', worker)
    elseif chans ~= '' or not dry then
      local tag = token .. '.' .. redis.call('INCR', B .. ':hn')
      local got = take(free, tonumber(lease), tag, worker, chans)
      if #got < free and chans == '' then dry = true end
      if #got > 0 then
        local inbox = B .. ':in:' .. worker
        redis.call('RPUSH', inbox, #got .. '\t' .. tag .. '\t' .. cjson.encode(got))
        redis.call('PEXPIRE', inbox, string.format('%d', math.ceil((tonumber(lease) + 60) * 1000)))
        if #got < free then
          redis.call('HSET', B .. ':idle', worker,
            table.concat({ free - #got, lease, until_, token, chans }, '\t'))
        else
          redis.call('HDEL', B .. ':idle', worker)
        end
        for _, job in ipairs(got) do taken[job.id] = true end
        n = n - #got
      end
    end
  end
  for _, id in ipairs(ready) do
    if not taken[id] then return true end
  end
  return false
end
