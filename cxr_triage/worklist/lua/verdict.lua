-- Record a verdict Kafka has acknowledged and complete its study, in one step: the radiologist's latest
-- verdict, the idempotency record of its key, the study off its tier, lease and the worklist, and read.
-- The API runs it after the ack; `worklist rebuild` runs it for every verdict on cxr.verdicts.v1.
-- ARGV: prefix, now, id, radiologist, idempotency key, verdict (JSON), decided_at (epoch s), every tier name...
-- Returns the lease holder the study had, or ''.
local id, who, key, verdict, decided = ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
reap()
redis.call('HSET', p .. ':verdict-keys:' .. id .. ':' .. who, key, verdict)
-- the pending event and the note of its delivery (verdicts.py's _DELIVERED_SUFFIX)
redis.call('HDEL', p .. ':verdict-pending:' .. id .. ':' .. who, key, key .. ' kafka')
-- Only a later decision replaces the radiologist's verdict: a rebuild replaying an older one while the API
-- records a newer one must not put the older one back.
local latest = redis.call('HGET', p .. ':verdict-at:' .. id, who)
if not latest or decided >= tonumber(latest) then
  redis.call('HSET', p .. ':verdicts:' .. id, who, verdict)
  redis.call('HSET', p .. ':verdict-at:' .. id, who, ARGV[7])
end
local holder = redis.call('HGET', p .. ':lease:' .. id, 'radiologist') or ''
for i = 8, #ARGV do redis.call('ZREM', p .. ':unread:' .. ARGV[i], id) end
redis.call('ZREM', p .. ':claims', id)
redis.call('DEL', p .. ':lease:' .. id)
redis.call('ZREM', p .. ':worklist', id)
-- read since the first decision on the study, whoever recorded it and in whatever order
local read_at = redis.call('ZSCORE', p .. ':read', id)
if not read_at or decided < tonumber(read_at) then redis.call('ZADD', p .. ':read', ARGV[7], id) end
return holder
