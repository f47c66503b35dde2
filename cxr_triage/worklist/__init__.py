"""The reading state of the worklist in Redis: which studies wait (per SLA tier), which are leased, which are read.

Keys (``keys.WorklistKeys``; besides the worker's ``{prefix}:study:{id}`` hash, see ``cxr_triage.redis_keys``):

``{prefix}:worklist``        sorted set, every unread study (waiting or leased), score = model priority
``{prefix}:unread:{tier}``   sorted set, studies waiting in ``tier``, score = ``SlaPolicy.index_score``
``{prefix}:claims``          sorted set, leased studies, score = lease expiry (epoch seconds)
``{prefix}:lease:{id}``      hash: radiologist, tier, score (to put the study back), claimed_at, expires_at
``{prefix}:read``            sorted set, studies with a verdict, score = its first verdict's decided_at
``{prefix}:verdicts:{id}``   hash: radiologist -> their latest verdict (``VerdictEventV1`` JSON)
``{prefix}:verdict-at:{id}`` hash: radiologist -> that verdict's decided_at (epoch s; only a later one replaces it)
``{prefix}:verdict-keys:{id}:{radiologist}``     hash: Idempotency-Key -> the verdict recorded under it
``{prefix}:verdict-pending:{id}:{radiologist}``  hash: Idempotency-Key -> a verdict sent to Kafka, not yet
                             recorded (a retry re-sends exactly it); expires after a day
``{prefix}:shadow:{id}``     string: the study's shadow prediction (``PredictionEventV1`` JSON, role shadow),
                             written with its hash by the worker during a shadow or canary rollout

Each state change is one Lua script (``lua/*.lua``), so it is atomic: two radiologists never lease the same
study, and a study is in exactly one of waiting / leased / read. Every index script first returns expired
leases to their tier. The scripts define the effective priority (``lua/prelude.lua``); Python calls them.
Like the rest of Redis this is a projection: ``rebuild`` restores it from ``cxr.studies.v1``,
``cxr.predictions.v1`` and ``cxr.verdicts.v1`` (all but leases, pending verdicts and activation maps).

One wrapper per script, in the mode of the service that runs it: the worker (sync client) writes studies
(``study.upsert_study``) and files them (``index.index_scored_study``); the API (asyncio client) claims,
releases, reserves and completes them (``claims``), records verdicts (``verdicts``) and reads pages
(``page``); ``rebuild`` (sync) writes what the worker and the API wrote, from the topics' events.
"""
