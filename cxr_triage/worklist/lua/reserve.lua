-- Before a verdict is published: make sure nobody else holds the study, and lease it to the author if it waits.
-- Returns {status, holder}: 'reserved', 'held', 'read', 'unindexed' or 'conflict'.
-- ARGV: prefix, now, id, radiologist, lease_s, every tier name...
local id, who, lease_s = ARGV[3], ARGV[4], tonumber(ARGV[5])
reap()
if redis.call('ZSCORE', p .. ':read', id) then return {'read', ''} end
local holder = redis.call('HGET', p .. ':lease:' .. id, 'radiologist')
if holder then
  if holder ~= who then return {'conflict', holder} end
  return {'held', holder}
end
for i = 6, #ARGV do
  local score = redis.call('ZSCORE', p .. ':unread:' .. ARGV[i], id)
  if score then
    take(id, ARGV[i], score, who, lease_s)
    return {'reserved', who}
  end
end
return {'unindexed', ''}
