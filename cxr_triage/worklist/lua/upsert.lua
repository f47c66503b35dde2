-- Write one scored study: its hash, its worklist entry, its activation maps and its shadow prediction,
-- together. A study is scored once per role: if the hash already holds a prediction, nothing changes and the
-- stored ones are returned, so that the worker republishes exactly them and files the study into the tier
-- stored first. Its arm (which model ordered it) and its shadow prediction are decided by that first write
-- too: a replay under another rollout never adds, replaces or re-arms anything.
-- KEYS: study hash, worklist, maps, read set (a study read already never goes back on the worklist: after Redis
--       was lost, `worklist rebuild` may mark it read before a worker replaying its batch writes its hash),
--       shadow prediction (a string: the shadow prediction's JSON, kept out of the hash that pages read).
-- ARGV: study id, priority, model version, scored_at, probabilities (JSON), tier, maps (bytes or ""),
--       cam_h, cam_w, shadow prediction (JSON or ""), then field/value pairs of the hash.
-- Returns {changed (0/1), model version, scored_at, priority, probabilities, tier, published, arm, threshold,
-- shadow} as stored; published is "1" once Kafka acknowledged the study's predictions (`mark_published`),
-- else ""; arm is "" for a study written before studies kept it; threshold and shadow are "" when none.
local stored = redis.call('HMGET', KEYS[1], 'model_version', 'scored_at', 'priority', 'probabilities', 'tier',
                          'published', 'arm', 'threshold')
if stored[1] and stored[2] and stored[3] and stored[4] then
  if not stored[5] then
    -- written before the hash kept its tier: the first tier given from now on is the one that stays
    redis.call('HSET', KEYS[1], 'tier', ARGV[6])
    stored[5] = ARGV[6]
  end
  return {0, stored[1], stored[2], stored[3], stored[4], stored[5], stored[6] or '', stored[7] or '',
          stored[8] or '', redis.call('GET', KEYS[5]) or ''}
end
redis.call('HSET', KEYS[1], 'priority', ARGV[2], 'model_version', ARGV[3], 'scored_at', ARGV[4],
           'probabilities', ARGV[5], 'tier', ARGV[6], unpack(ARGV, 11))
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], ARGV[7])
  redis.call('HSET', KEYS[1], 'cam_h', ARGV[8], 'cam_w', ARGV[9])
end
if ARGV[10] ~= '' then redis.call('SET', KEYS[5], ARGV[10]) end
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
local written = redis.call('HMGET', KEYS[1], 'published', 'arm', 'threshold')
return {1, ARGV[3], ARGV[4], ARGV[2], ARGV[5], ARGV[6], written[1] or '', written[2] or '', written[3] or '',
        ARGV[10]}
