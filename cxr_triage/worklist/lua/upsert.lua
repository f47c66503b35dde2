-- Write one scored study: its hash, its worklist entry, its activation maps, its shadow prediction and its
-- images' readings, together. A study is scored once per role and an image is read once: if the hash already
-- holds a prediction, only images it does not know yet (a late image of the study) are added, and the
-- study's values change only if such an image is more urgent than the study was, while it waits (a read study
-- is never put back). The stored values are returned, so that the worker republishes exactly them and files
-- the study into the tier stored. The study's arm and shadow prediction are decided by its first write: a
-- replay under another rollout never adds, replaces or re-arms anything.
-- KEYS: study hash, worklist, maps, read set (a study read already never goes back on the worklist: after Redis
--       was lost, `worklist rebuild` may mark it read before a worker replaying its batch writes its hash),
--       shadow prediction (a string: the shadow prediction's JSON, kept out of the hash that pages read),
--       images (a hash: image id -> the image's reading as JSON), then each image's maps, in ARGV's order.
-- ARGV: study id, priority, model version, scored_at, probabilities (JSON), tier, maps (bytes or ""),
--       cam_h, cam_w, shadow prediction (JSON or ""), the image these values are of, the number of images n,
--       then per image: image id, priority, tier, model version, scored_at, probabilities (the reading's, ""
--       for an image not read), the image's JSON, its maps (bytes or ""); then field/value pairs of the hash.
-- Returns {changed (0 nothing new / 1 first write / 2 a new image added), model version, scored_at, priority,
-- probabilities, tier, published, arm, threshold, shadow, image id, images (the stored JSONs)} as stored;
-- published is "1" once Kafka acknowledged the study's latest prediction (`mark_published`), else ""; arm is
-- "" for a study written before studies kept it; threshold, shadow and image id are "" when none.
local n = tonumber(ARGV[12])
local stride = 8
local fields_at = 13 + stride * n

-- Each image: added if new, or if it was stored without a reading and this write has one. Returns the most
-- urgent image added with a reading (its ARGV offset) or nil.
local function add_images()
  local best, best_priority = nil, -1
  for i = 0, n - 1 do
    local at = 13 + stride * i
    local id, read = ARGV[at], ARGV[at + 5] ~= ''
    local known = redis.call('HGET', KEYS[6], id)
    local take = not known
    if known and read then
      local old = cjson.decode(known)
      take = old.priority == nil or old.priority == cjson.null
    end
    if take then
      redis.call('HSET', KEYS[6], id, ARGV[at + 6])
      if ARGV[at + 7] ~= '' then redis.call('SET', KEYS[7 + i], ARGV[at + 7]) end
      if read then
        local p = tonumber(ARGV[at + 1])
        if p > best_priority then best, best_priority = at, p end
      end
    end
  end
  return best
end

local stored = redis.call('HMGET', KEYS[1], 'model_version', 'scored_at', 'priority', 'probabilities', 'tier',
                          'published', 'arm', 'threshold', 'image_id')
if stored[1] and stored[2] and stored[3] and stored[4] then
  if not stored[5] then
    -- written before the hash kept its tier: the first tier given from now on is the one that stays
    redis.call('HSET', KEYS[1], 'tier', ARGV[6])
    stored[5] = ARGV[6]
  end
  local before = redis.call('HLEN', KEYS[6])
  local best = add_images()
  local changed = 0
  if redis.call('HLEN', KEYS[6]) ~= before or best then
    changed = 2
    redis.call('HDEL', KEYS[1], 'published')  -- the study's new prediction is not in Kafka yet
    stored[6] = false
    local waiting = not redis.call('ZSCORE', KEYS[4], ARGV[1])
    if best and waiting and tonumber(ARGV[best + 1]) > tonumber(stored[3]) then
      stored[1], stored[2], stored[3] = ARGV[best + 3], ARGV[best + 4], ARGV[best + 1]
      stored[4], stored[9] = ARGV[best + 5], ARGV[best]
      if ARGV[best + 2] ~= '' then stored[5] = ARGV[best + 2] end
      redis.call('HSET', KEYS[1], 'priority', stored[3], 'model_version', stored[1], 'scored_at', stored[2],
                 'probabilities', stored[4], 'tier', stored[5], 'image_id', stored[9])
      local maps = KEYS[7 + (best - 13) / stride]
      if maps and redis.call('EXISTS', maps) == 1 then
        redis.call('COPY', maps, KEYS[3], 'REPLACE')
        redis.call('HSET', KEYS[1], 'cam_h', ARGV[8], 'cam_w', ARGV[9])
      else
        redis.call('DEL', KEYS[3])
        redis.call('HDEL', KEYS[1], 'cam_h', 'cam_w')
      end
      if redis.call('ZSCORE', KEYS[2], ARGV[1]) then redis.call('ZADD', KEYS[2], stored[3], ARGV[1]) end
    end
  end
  return {changed, stored[1], stored[2], stored[3], stored[4], stored[5], stored[6] or '', stored[7] or '',
          stored[8] or '', redis.call('GET', KEYS[5]) or '', stored[9] or '', redis.call('HVALS', KEYS[6])}
end
redis.call('HSET', KEYS[1], 'priority', ARGV[2], 'model_version', ARGV[3], 'scored_at', ARGV[4],
           'probabilities', ARGV[5], 'tier', ARGV[6], unpack(ARGV, fields_at))
if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'image_id', ARGV[11]) end
redis.call('DEL', KEYS[6])
add_images()
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], ARGV[7])
  redis.call('HSET', KEYS[1], 'cam_h', ARGV[8], 'cam_w', ARGV[9])
end
if ARGV[10] ~= '' then redis.call('SET', KEYS[5], ARGV[10]) end
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
local written = redis.call('HMGET', KEYS[1], 'published', 'arm', 'threshold')
return {1, ARGV[3], ARGV[4], ARGV[2], ARGV[5], ARGV[6], written[1] or '', written[2] or '', written[3] or '',
        ARGV[10], ARGV[11], redis.call('HVALS', KEYS[6])}
