-- File a scored study into its tier (idempotent). Returns 'waiting', 'claimed' (leased: left where it is)
-- or 'read' (already read: unchanged).
-- ARGV: prefix, now, id, tier, score, priority, every tier name...
local id, tier, score, priority = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
reap()
if redis.call('ZSCORE', p .. ':read', id) then return 'read' end
redis.call('ZADD', p .. ':worklist', priority, id)
if redis.call('ZSCORE', p .. ':claims', id) then
  -- leased: a re-scoring only changes where the study goes back to if the lease is returned
  redis.call('HSET', p .. ':lease:' .. id, 'tier', tier, 'score', score)
  return 'claimed'
end
for i = 7, #ARGV do
  if ARGV[i] ~= tier then redis.call('ZREM', p .. ':unread:' .. ARGV[i], id) end
end
redis.call('ZADD', p .. ':unread:' .. tier, score, id)
return 'waiting'
