-- Put in front of every index script (not upsert.lua) when it is loaded, see cxr_triage/worklist/scripts.py.
-- ARGV[1] = key prefix, ARGV[2] = now (epoch seconds); each script reads its own arguments from ARGV[3] on.
-- Scripts build key names from the prefix, so they need a single Redis (not a cluster).
local p = ARGV[1]
local now = tonumber(ARGV[2])

-- Expired leases go back to the tier they were taken from (unless the study was read meanwhile).
local function reap()
  local expired = redis.call('ZRANGEBYSCORE', p .. ':claims', '-inf', now)
  for _, id in ipairs(expired) do
    local lease = redis.call('HMGET', p .. ':lease:' .. id, 'tier', 'score')
    if lease[1] and not redis.call('ZSCORE', p .. ':read', id) then
      redis.call('ZADD', p .. ':unread:' .. lease[1], lease[2], id)
    end
    redis.call('ZREM', p .. ':claims', id)
    redis.call('DEL', p .. ':lease:' .. id)
  end
  return #expired
end

-- (tier name, aging time in seconds: SlaPolicy.aging_s) pairs from ARGV[first] on.
local function tiers_from(first)
  local tiers = {}
  for i = first, #ARGV, 2 do
    tiers[#tiers + 1] = {name = ARGV[i], tmax = tonumber(ARGV[i + 1])}
  end
  return tiers
end

-- The effective priority: the definition of the worklist order (sla.py explains why it keeps the SLA).
-- ``score`` is the study's time-invariant index score, priority - received_at / tmax (SlaPolicy.index_score,
-- tmax = SlaPolicy.aging_s), so this is priority + waited / tmax.
local function effective(score, tmax)
  return tonumber(score) + now / tmax
end

-- Lease a waiting study to ``who``: it leaves its tier; the lease remembers where to put it back.
local function take(id, tier, score, who, lease_s)
  redis.call('ZREM', p .. ':unread:' .. tier, id)
  local expires = now + lease_s
  redis.call('ZADD', p .. ':claims', expires, id)
  redis.call('DEL', p .. ':lease:' .. id)
  redis.call('HSET', p .. ':lease:' .. id, 'radiologist', who, 'tier', tier, 'score', score,
             'claimed_at', ARGV[2], 'expires_at', string.format('%.6f', expires))
  return expires
end
