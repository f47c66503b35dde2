"""The reading state of the worklist in Redis: which studies wait (per SLA tier), which are leased, which are read.

Keys (besides the worker's ``{prefix}:study:{id}`` hash, see ``cxr_triage.redis_keys``):

``{prefix}:worklist``        sorted set, every unread study (waiting or leased), score = model priority
``{prefix}:unread:{tier}``   sorted set, studies waiting in ``tier``, score = ``SlaPolicy.index_score``
``{prefix}:claims``          sorted set, leased studies, score = lease expiry (epoch seconds)
``{prefix}:lease:{id}``      hash: radiologist, tier, score (to put the study back), claimed_at, expires_at
``{prefix}:read``            sorted set, studies with a verdict, score = when it was recorded

Each state change is one Lua script, so it is atomic: two radiologists never lease the same study, and a study
is in exactly one of waiting / leased / read. Every script first returns expired leases to their tier.
Like the rest of Redis this is a projection: it can be rebuilt from ``cxr.predictions.v1`` and
``cxr.verdicts.v1``. Scripts build key names from the prefix, so they need a single Redis (not a cluster).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from cxr_triage.redis_keys import RedisKeys
from cxr_triage.sla import TIERS, SlaPolicy, Tier, received_timestamp


@dataclass(frozen=True)
class WorklistKeys(RedisKeys):
    """The projection's keys (``RedisKeys``) plus those of the unread index, claims and reads."""

    def unread(self, tier: Tier) -> str:
        return f"{self.prefix}:unread:{tier.value}"

    @property
    def claims(self) -> str:
        return f"{self.prefix}:claims"

    def lease(self, study_id: str) -> str:
        return f"{self.prefix}:lease:{study_id}"

    @property
    def read(self) -> str:
        return f"{self.prefix}:read"

    def cam(self, study_id: str) -> str:
        return f"{self.prefix}:cam:{study_id}"

    def verdicts(self, study_id: str) -> str:
        return f"{self.prefix}:verdicts:{study_id}"

    def verdict_lock(self, study_id: str, radiologist: str) -> str:
        return f"{self.prefix}:verdict-lock:{study_id}:{radiologist}"


# Shared by every script: ARGV[1] = prefix, ARGV[2] = now; tiers are passed as (name, max_wait_s) pairs.
_PRELUDE = """
local p = ARGV[1]
local now = tonumber(ARGV[2])
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
local function tiers_from(first)
  local tiers = {}
  for i = first, #ARGV, 2 do
    tiers[#tiers + 1] = {name = ARGV[i], tmax = tonumber(ARGV[i + 1])}
  end
  return tiers
end
local function take(id, tier, score, who, lease_s)
  redis.call('ZREM', p .. ':unread:' .. tier, id)
  local expires = now + lease_s
  redis.call('ZADD', p .. ':claims', expires, id)
  redis.call('DEL', p .. ':lease:' .. id)
  redis.call('HSET', p .. ':lease:' .. id, 'radiologist', who, 'tier', tier, 'score', score,
             'claimed_at', ARGV[2], 'expires_at', string.format('%.6f', expires))
  return expires
end
"""

# ARGV: prefix, now, id, tier, score, priority, all tier names...
_INDEX = """
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
"""

# ARGV: prefix, now, radiologist, lease_s, (tier, max_wait_s)...
_CLAIM = """
local who, lease_s = ARGV[3], tonumber(ARGV[4])
reap()
local best_id, best_tier, best_score, best_eff
for _, t in ipairs(tiers_from(5)) do
  local head = redis.call('ZREVRANGE', p .. ':unread:' .. t.name, 0, 0, 'WITHSCORES')
  if head[1] then
    local eff = tonumber(head[2]) + now / t.tmax
    if best_eff == nil or eff > best_eff then
      best_id, best_tier, best_score, best_eff = head[1], t.name, head[2], eff
    end
  end
end
if not best_id then return false end
local expires = take(best_id, best_tier, best_score, who, lease_s)
return {best_id, best_tier, string.format('%.17g', best_eff), string.format('%.6f', expires)}
"""

# ARGV: prefix, now, id, radiologist, force ('1' lets anyone release)
_RELEASE = """
local id, who, force = ARGV[3], ARGV[4], ARGV[5]
reap()
local lease = redis.call('HMGET', p .. ':lease:' .. id, 'radiologist', 'tier', 'score')
if not lease[1] then return {'not_claimed', ''} end
if lease[1] ~= who and force ~= '1' then return {'conflict', lease[1]} end
redis.call('ZADD', p .. ':unread:' .. lease[2], lease[3], id)
redis.call('ZREM', p .. ':claims', id)
redis.call('DEL', p .. ':lease:' .. id)
return {'released', lease[1]}
"""

# ARGV: prefix, now, id, radiologist, lease_s, tier names...
# Before a verdict is published: make sure nobody else holds the study, and lease it to the author if it waits.
_RESERVE = """
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
"""

# ARGV: prefix, now, id, tier names...  The verdict is already durable in Kafka: this always succeeds.
_COMPLETE = """
local id = ARGV[3]
reap()
local holder = redis.call('HGET', p .. ':lease:' .. id, 'radiologist') or ''
for i = 4, #ARGV do redis.call('ZREM', p .. ':unread:' .. ARGV[i], id) end
redis.call('ZREM', p .. ':claims', id)
redis.call('DEL', p .. ':lease:' .. id)
redis.call('ZREM', p .. ':worklist', id)
redis.call('ZADD', p .. ':read', now, id)
return holder
"""

# ARGV: prefix, now, offset, limit, include_waiting, include_leased, min_priority,
#       (tier, max_wait_s, band_low)... of the selected tiers
# Returns {total, {JSON of {id, tier, effective, holder, claimed_at, expires_at, study: {hash}}}...}
_PAGE = """
local offset, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local want_waiting, want_leased, minp = ARGV[5] == '1', ARGV[6] == '1', tonumber(ARGV[7])
local want = offset + limit
reap()
local tiers = {}
for i = 8, #ARGV, 3 do
  tiers[#tiers + 1] = {name = ARGV[i], tmax = tonumber(ARGV[i + 1]), low = tonumber(ARGV[i + 2])}
end
local function priority_ok(id)
  if minp <= 0 then return true end
  local s = redis.call('ZSCORE', p .. ':worklist', id)
  return s and tonumber(s) >= minp
end
local total = 0
local lists = {}
if want_waiting then
  for _, t in ipairs(tiers) do
    local key = p .. ':unread:' .. t.name
    local rows = {}
    if minp <= t.low then
      -- the whole tier is at or above the minimum priority: counting and paging are O(log n + page)
      total = total + redis.call('ZCARD', key)
      local got = redis.call('ZREVRANGE', key, 0, want - 1, 'WITHSCORES')
      for j = 1, #got, 2 do rows[#rows + 1] = {got[j], tonumber(got[j + 1]) + now / t.tmax, t.name} end
    else
      -- the tier straddles the minimum: filter it by priority (bounded by the tier's size)
      local start, chunk = 0, 512
      while true do
        local got = redis.call('ZREVRANGE', key, start, start + chunk - 1, 'WITHSCORES')
        if #got == 0 then break end
        for j = 1, #got, 2 do
          if priority_ok(got[j]) then
            total = total + 1
            if #rows < want then rows[#rows + 1] = {got[j], tonumber(got[j + 1]) + now / t.tmax, t.name} end
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
    if l[1] and tmax_of[l[1]] and priority_ok(id) then
      total = total + 1
      leased[#leased + 1] = {id, tonumber(l[2]) + now / tmax_of[l[1]], l[1]}
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
"""


@dataclass(frozen=True)
class _Script:
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    def run(self, client: redis.Redis, args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            return client.eval(self.source, 0, *args)

    async def arun(self, client: redis.asyncio.Redis, args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            return await client.eval(self.source, 0, *args)


INDEX: Final = _Script(_PRELUDE + _INDEX)
CLAIM: Final = _Script(_PRELUDE + _CLAIM)
RELEASE: Final = _Script(_PRELUDE + _RELEASE)
RESERVE: Final = _Script(_PRELUDE + _RESERVE)
COMPLETE: Final = _Script(_PRELUDE + _COMPLETE)
PAGE: Final = _Script(_PRELUDE + _PAGE)


@dataclass(frozen=True)
class Claim:
    study_id: str
    tier: Tier
    effective_priority: float
    expires_at: float


@dataclass(frozen=True)
class PageRow:
    study_id: str
    status: str  # "unclaimed" | "claimed"
    tier: Tier
    effective_priority: float
    claimed_by: str | None
    claimed_at: float | None
    expires_at: float | None
    study: dict[str, str]


@dataclass(frozen=True)
class Page:
    total: int
    rows: list[PageRow]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _now(now: float | None) -> str:
    return repr(time.time() if now is None else float(now))


def _tier_names() -> list[str]:
    return [tier.value for tier in TIERS]


def index_args(
    keys: WorklistKeys,
    policy: SlaPolicy,
    *,
    study_id: str,
    priority: float,
    received_at: datetime,
    now: float | None = None,
) -> list[Any]:
    tier = policy.tier_for(priority)
    score = policy.index_score(priority=priority, tier=tier, received_ts=received_timestamp(received_at))
    return [keys.prefix, _now(now), study_id, tier.value, repr(score), repr(priority), *_tier_names()]


def index_scored_study(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    study_id: str,
    priority: float,
    received_at: datetime,
    now: float | None = None,
) -> str | None:
    """File a scored study into its tier (idempotent); call after writing its hash.

    Returns ``"waiting"``, ``"claimed"`` (leased: left where it is) or ``"read"`` (already read: unchanged).
    With a pipeline as ``client`` the command is queued (the script is sent with EVAL) and None is returned.
    """
    args = index_args(keys, policy, study_id=study_id, priority=priority, received_at=received_at, now=now)
    if isinstance(client, redis.client.Pipeline):
        client.eval(INDEX.source, 0, *args)
        return None
    return _text(INDEX.run(client, args))


async def aindex_scored_study(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    study_id: str,
    priority: float,
    received_at: datetime,
    now: float | None = None,
) -> str:
    """``index_scored_study`` for asyncio clients."""
    args = index_args(keys, policy, study_id=study_id, priority=priority, received_at=received_at, now=now)
    return _text(await INDEX.arun(client, args))


def _tier_pairs(policy: SlaPolicy) -> list[str]:
    return [v for tier in TIERS for v in (tier.value, repr(policy.max_wait_s(tier)))]


def _claim_from(reply: Any) -> Claim | None:
    if not reply:
        return None
    study_id, tier, effective, expires = (_text(v) for v in reply)
    return Claim(study_id, Tier(tier), float(effective), float(expires))


def claim_next(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    radiologist: str,
    lease_s: float,
    now: float | None = None,
) -> Claim | None:
    """Lease the waiting study of highest effective priority to ``radiologist``; None if none waits."""
    args = [keys.prefix, _now(now), radiologist, repr(float(lease_s)), *_tier_pairs(policy)]
    return _claim_from(CLAIM.run(client, args))


async def aclaim_next(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    radiologist: str,
    lease_s: float,
    now: float | None = None,
) -> Claim | None:
    args = [keys.prefix, _now(now), radiologist, repr(float(lease_s)), *_tier_pairs(policy)]
    return _claim_from(await CLAIM.arun(client, args))


@dataclass(frozen=True)
class Outcome:
    """What a state-changing script found: ``status`` and the lease holder it concerned (or "")."""

    status: str
    holder: str


def _outcome(reply: Any) -> Outcome:
    status, holder = (_text(v) for v in reply)
    return Outcome(status, holder)


def release(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    study_id: str,
    radiologist: str,
    force: bool = False,
    now: float | None = None,
) -> Outcome:
    """Return a leased study to its tier: ``released``, ``not_claimed``, or ``conflict`` (another holder)."""
    args = [keys.prefix, _now(now), study_id, radiologist, "1" if force else "0"]
    return _outcome(RELEASE.run(client, args))


async def arelease(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    study_id: str,
    radiologist: str,
    force: bool = False,
    now: float | None = None,
) -> Outcome:
    args = [keys.prefix, _now(now), study_id, radiologist, "1" if force else "0"]
    return _outcome(await RELEASE.arun(client, args))


def _reserve_args(
    keys: WorklistKeys, study_id: str, radiologist: str, lease_s: float, now: float | None
) -> list[Any]:
    return [keys.prefix, _now(now), study_id, radiologist, repr(float(lease_s)), *_tier_names()]


def reserve(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    study_id: str,
    radiologist: str,
    lease_s: float,
    now: float | None = None,
) -> Outcome:
    """Hold a study for ``radiologist`` while a verdict is published.

    ``reserved`` (it was waiting: now leased to them), ``held`` (already theirs), ``read``, ``unindexed``
    (scored but not in the index), or ``conflict`` (leased to someone else).
    """
    return _outcome(RESERVE.run(client, _reserve_args(keys, study_id, radiologist, lease_s, now)))


async def areserve(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    study_id: str,
    radiologist: str,
    lease_s: float,
    now: float | None = None,
) -> Outcome:
    return _outcome(await RESERVE.arun(client, _reserve_args(keys, study_id, radiologist, lease_s, now)))


def complete(client: redis.Redis, *, keys: WorklistKeys, study_id: str, now: float | None = None) -> str:
    """Mark a study read (remove it from waiting, leases and the worklist); returns the lease holder or ""."""
    return _text(COMPLETE.run(client, [keys.prefix, _now(now), study_id, *_tier_names()]))


async def acomplete(
    client: redis.asyncio.Redis, *, keys: WorklistKeys, study_id: str, now: float | None = None
) -> str:
    return _text(await COMPLETE.arun(client, [keys.prefix, _now(now), study_id, *_tier_names()]))


def _page_args(
    keys: WorklistKeys,
    policy: SlaPolicy,
    *,
    offset: int,
    limit: int,
    tiers: tuple[Tier, ...],
    waiting: bool,
    leased: bool,
    min_priority: float,
    now: float | None,
) -> list[Any]:
    args: list[Any] = [
        keys.prefix,
        _now(now),
        str(offset),
        str(limit),
        "1" if waiting else "0",
        "1" if leased else "0",
        repr(float(min_priority)),
    ]
    for tier in tiers:
        args += [tier.value, repr(policy.max_wait_s(tier)), repr(policy.priority_band(tier)[0])]
    return args


def _page_from(reply: Any) -> Page:
    total, rows = reply
    out = []
    for raw in rows:
        row = json.loads(raw)
        holder = row["holder"]
        out.append(
            PageRow(
                study_id=row["id"],
                status="claimed" if holder else "unclaimed",
                tier=Tier(row["tier"]),
                effective_priority=float(row["effective"]),
                claimed_by=holder or None,
                claimed_at=float(row["claimed_at"]) if row["claimed_at"] else None,
                expires_at=float(row["expires_at"]) if row["expires_at"] else None,
                # cjson writes an empty table as {} but a missing hash could come back as []
                study=row["study"] if isinstance(row["study"], dict) else {},
            )
        )
    return Page(total=int(total), rows=out)


async def aread_page(
    client: redis.asyncio.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    offset: int = 0,
    limit: int = 50,
    tiers: tuple[Tier, ...] = TIERS,
    waiting: bool = True,
    leased: bool = True,
    min_priority: float = 0.0,
    now: float | None = None,
) -> Page:
    """One page of unread studies by effective priority, with each study's hash, in one round trip."""
    args = _page_args(
        keys,
        policy,
        offset=offset,
        limit=limit,
        tiers=tiers,
        waiting=waiting,
        leased=leased,
        min_priority=min_priority,
        now=now,
    )
    return _page_from(await PAGE.arun(client, args))


def read_page(
    client: redis.Redis,
    *,
    keys: WorklistKeys,
    policy: SlaPolicy,
    offset: int = 0,
    limit: int = 50,
    tiers: tuple[Tier, ...] = TIERS,
    waiting: bool = True,
    leased: bool = True,
    min_priority: float = 0.0,
    now: float | None = None,
) -> Page:
    args = _page_args(
        keys,
        policy,
        offset=offset,
        limit=limit,
        tiers=tiers,
        waiting=waiting,
        leased=leased,
        min_priority=min_priority,
        now=now,
    )
    return _page_from(PAGE.run(client, args))
