-- Mark a scored study's prediction as acknowledged by Kafka, if the study hash exists (never create one).
-- KEYS: study hash.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'published', '1')
  return 1
end
return 0
