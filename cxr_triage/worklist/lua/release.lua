-- Return a leased study to its tier. Returns {status, holder}: 'released', 'not_claimed' or 'conflict'.
-- ARGV: prefix, now, id, radiologist, force ('1' lets anyone release)
local id, who, force = ARGV[3], ARGV[4], ARGV[5]
reap()
local lease = redis.call('HMGET', p .. ':lease:' .. id, 'radiologist', 'tier', 'score')
if not lease[1] then return {'not_claimed', ''} end
if lease[1] ~= who and force ~= '1' then return {'conflict', lease[1]} end
redis.call('ZADD', p .. ':unread:' .. lease[2], lease[3], id)
redis.call('ZREM', p .. ':claims', id)
redis.call('DEL', p .. ':lease:' .. id)
return {'released', lease[1]}
