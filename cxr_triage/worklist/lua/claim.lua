-- Lease the waiting study of highest effective priority to a radiologist: the best of the tier heads.
-- ARGV: prefix, now, radiologist, lease_s, (tier, aging_s)...
-- Returns false when nothing waits, else {id, tier, effective priority, lease expiry}.
local who, lease_s = ARGV[3], tonumber(ARGV[4])
reap()
local best_id, best_tier, best_score, best_eff
for _, t in ipairs(tiers_from(5)) do
  local head = redis.call('ZREVRANGE', p .. ':unread:' .. t.name, 0, 0, 'WITHSCORES')
  if head[1] then
    local eff = effective(head[2], t.tmax)
    if best_eff == nil or eff > best_eff then
      best_id, best_tier, best_score, best_eff = head[1], t.name, head[2], eff
    end
  end
end
if not best_id then return false end
local expires = take(best_id, best_tier, best_score, who, lease_s)
return {best_id, best_tier, string.format('%.17g', best_eff), string.format('%.6f', expires)}
