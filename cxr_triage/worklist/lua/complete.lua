-- Mark a study read: off its tier, its lease and the worklist. The verdict is already durable in Kafka, so
-- this always succeeds. Returns the lease holder it had, or ''.
-- ARGV: prefix, now, id, every tier name...
local id = ARGV[3]
reap()
local holder = redis.call('HGET', p .. ':lease:' .. id, 'radiologist') or ''
for i = 4, #ARGV do redis.call('ZREM', p .. ':unread:' .. ARGV[i], id) end
redis.call('ZREM', p .. ':claims', id)
redis.call('DEL', p .. ':lease:' .. id)
redis.call('ZREM', p .. ':worklist', id)
redis.call('ZADD', p .. ':read', now, id)
return holder
