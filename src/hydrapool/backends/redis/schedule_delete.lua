-- schedule_delete.lua: remove schedule ARGV[1] ("channel\0name"); 1 if it existed.
redis.call('ZREM', B .. ':scd', ARGV[1])
return redis.call('DEL', B .. ':sc:' .. ARGV[1])
