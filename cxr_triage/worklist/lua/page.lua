-- One page of unread studies by effective priority, with each study's hash, in one round trip.
-- ARGV: prefix, now, offset, limit, include_waiting, include_leased, min_priority,
--       finding ('' for any), min_probability (of that finding), (tier, aging_s)... of the selected tiers
-- Returns {total, {JSON of {id, tier, effective, holder, claimed_at, expires_at, study: {hash}}}...}
local offset, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local want_waiting, want_leased, minp = ARGV[5] == '1', ARGV[6] == '1', tonumber(ARGV[7])
local finding, minprob = ARGV[8], tonumber(ARGV[9])
local want = offset + limit
reap()
local tiers = tiers_from(10)
local function priority_ok(id)
  if minp <= 0 then return true end
  local s = redis.call('ZSCORE', p .. ':worklist', id)
  return s and tonumber(s) >= minp
end
-- The model's probability of one finding, from the study's hash (written by another service: a hash that
-- cannot be read as JSON does not match rather than failing the page).
local function finding_ok(id)
  if finding == '' then return true end
  local raw = redis.call('HGET', p .. ':study:' .. id, 'probabilities')
  if not raw then return false end
  local ok, probs = pcall(cjson.decode, raw)
  if not ok or type(probs) ~= 'table' then return false end
  local v = tonumber(probs[finding])
  return v ~= nil and v >= minprob
end
local function wanted(id) return priority_ok(id) and finding_ok(id) end
local filtered = minp > 0 or finding ~= ''
local total = 0
local lists = {}
if want_waiting then
  for _, t in ipairs(tiers) do
    local key = p .. ':unread:' .. t.name
    local rows = {}
    if not filtered then
      -- no filter: counting and paging are O(log n + page)
      total = total + redis.call('ZCARD', key)
      local got = redis.call('ZREVRANGE', key, 0, want - 1, 'WITHSCORES')
      for j = 1, #got, 2 do rows[#rows + 1] = {got[j], effective(got[j + 1], t.tmax), t.name} end
    else
      -- Filtered by model priority or a finding, study by study (bounded by the tier's size): the tier
      -- thresholds come from the model that scored each study, so a tier's priority range is not known here.
      local start, chunk = 0, 512
      while true do
        local got = redis.call('ZREVRANGE', key, start, start + chunk - 1, 'WITHSCORES')
        if #got == 0 then break end
        for j = 1, #got, 2 do
          if wanted(got[j]) then
            total = total + 1
            if #rows < want then rows[#rows + 1] = {got[j], effective(got[j + 1], t.tmax), t.name} end
          end
        end
        start = start + chunk
      end
    end
    lists[#lists + 1] = rows
  end
end
local leased = {}
if want_leased then
  local tmax_of = {}
  for _, t in ipairs(tiers) do tmax_of[t.name] = t.tmax end
  for _, id in ipairs(redis.call('ZRANGE', p .. ':claims', 0, -1)) do
    local l = redis.call('HMGET', p .. ':lease:' .. id, 'tier', 'score')
    if l[1] and tmax_of[l[1]] and wanted(id) then
      total = total + 1
      leased[#leased + 1] = {id, effective(l[2], tmax_of[l[1]]), l[1]}
    end
  end
  table.sort(leased, function(a, b) return a[2] > b[2] end)
  lists[#lists + 1] = leased
end
-- k-way merge of lists that are each sorted by effective priority, highest first
local heads, page, n = {}, {}, 0
for k = 1, #lists do heads[k] = 1 end
while n < want do
  local best_k, best
  for k = 1, #lists do
    local row = lists[k][heads[k]]
    if row and (best == nil or row[2] > best[2]) then best_k, best = k, row end
  end
  if not best then break end
  heads[best_k] = heads[best_k] + 1
  n = n + 1
  if n > offset then
    local id = best[1]
    local lease = redis.call('HMGET', p .. ':lease:' .. id, 'radiologist', 'claimed_at', 'expires_at')
    local flat = redis.call('HGETALL', p .. ':study:' .. id)
    local study = {}
    for j = 1, #flat, 2 do study[flat[j]] = flat[j + 1] end
    -- one JSON document per row: far cheaper for the client to parse than nested multi-bulk replies
    page[#page + 1] = cjson.encode({id = id, tier = best[3], effective = string.format('%.17g', best[2]),
                                    holder = lease[1] or '', claimed_at = lease[2] or '',
                                    expires_at = lease[3] or '', study = study})
  end
end
return {total, page}
