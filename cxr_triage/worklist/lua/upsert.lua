-- Write one scored study: its hash, its worklist entry and its activation maps, together. A study is scored
-- once: if the hash already holds a prediction, nothing changes and the stored one is returned, so that the
-- worker republishes exactly it and files the study into the tier stored first.
-- KEYS: study hash, worklist, maps, read set (a study read already never goes back on the worklist: after Redis
--       was lost, `worklist rebuild` may mark it read before a worker replaying its batch writes its hash).
-- ARGV: study id, priority, model version, scored_at, probabilities (JSON), tier, maps (bytes or ""),
--       cam_h, cam_w, then field/value pairs of the hash.
-- Returns {changed (0/1), model version, scored_at, priority, probabilities, tier, published} as stored;
-- published is "1" once Kafka acknowledged the study's prediction (`mark_published`), else "".
local stored = redis.call('HMGET', KEYS[1], 'model_version', 'scored_at', 'priority', 'probabilities', 'tier',
                          'published')
if stored[1] and stored[2] and stored[3] and stored[4] then
  if not stored[5] then
    -- written before the hash kept its tier: the first tier given from now on is the one that stays
    redis.call('HSET', KEYS[1], 'tier', ARGV[6])
    stored[5] = ARGV[6]
  end
  return {0, stored[1], stored[2], stored[3], stored[4], stored[5], stored[6] or ''}
end
redis.call('HSET', KEYS[1], 'priority', ARGV[2], 'model_version', ARGV[3], 'scored_at', ARGV[4],
           'probabilities', ARGV[5], 'tier', ARGV[6], unpack(ARGV, 10))
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], ARGV[7])
  redis.call('HSET', KEYS[1], 'cam_h', ARGV[8], 'cam_w', ARGV[9])
end
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
return {1, ARGV[3], ARGV[4], ARGV[2], ARGV[5], ARGV[6], redis.call('HGET', KEYS[1], 'published') or ''}
