"""The worklist rebuilt from Kafka's events: what the worker and the API wrote, written again (sync).

``Projection`` folds the events of ``cxr.studies.v1``, ``cxr.predictions.v1`` and ``cxr.verdicts.v1`` (each
partition in offset order); ``apply`` writes it with the very scripts the services use:

- a study with a prediction: ``upsert_study`` and ``index_scored_study``, as the worker does (the last
  serving prediction of the study, its tier, its arm, its image reference, and its shadow prediction if it had
  one; activation maps are not on any topic: lost). A shadow prediction (role shadow, keyed
  ``topics.shadow_key``) never orders the worklist;
- each verdict, oldest decision first: ``lua/verdict.lua``, as the API does after Kafka's ack (the
  radiologist's latest verdict, the record of its Idempotency-Key, the study read since its first decision).

Every write is idempotent and none undoes a newer one, so applying twice changes nothing, and a worker that
keeps writing meanwhile is safe: a study scored already keeps its first prediction (``upsert.lua``), and one
read already is never filed unread again (``index.lua``, ``upsert.lua``). Leases are not restored: a claim
is a few minutes' reservation, and its study simply waits in its tier again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Final, TypeVar

import redis

from cxr_triage.events import PredictionEventV1, StudyEventV1, VerdictEventV1
from cxr_triage.sla import SlaPolicy
from cxr_triage.worklist.index import index_scored_study
from cxr_triage.worklist.keys import WorklistKeys
from cxr_triage.worklist.study import stored_score, upsert_study
from cxr_triage.worklist.verdicts import record_verdict_sync

BATCH: Final = 500
T = TypeVar("T")


@dataclass
class Projection:
    """The last study event and prediction per study, and every distinct verdict (by verdict id)."""

    studies: dict[str, StudyEventV1] = field(default_factory=dict)
    predictions: dict[str, PredictionEventV1] = field(default_factory=dict)
    shadows: dict[str, PredictionEventV1] = field(default_factory=dict)
    verdicts: dict[str, VerdictEventV1] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"studies": 0, "predictions": 0, "verdicts": 0, "skipped": 0}
    )

    def skip(self) -> None:
        """An event that is not valid JSON of its topic's schema (counted; a dead letter's business)."""
        self.counts["skipped"] += 1

    def add_study(self, event: StudyEventV1) -> None:
        self.counts["studies"] += 1
        self.studies[event.study_id] = event

    def add_prediction(self, event: PredictionEventV1) -> None:
        self.counts["predictions"] += 1
        if event.role == "shadow":
            # Keyed by study and model version, so perhaps in another partition than the serving one. The
            # worker records one shadow per study (its first); a republished one is identical.
            self.shadows.setdefault(event.study_id, event)
            return
        # Serving predictions are keyed by study id, so a study's are in one partition, in order: the last wins.
        self.predictions[event.study_id] = event

    def add_verdict(self, event: VerdictEventV1) -> None:
        self.counts["verdicts"] += 1
        if not event.idempotency_key:
            # Written before verdicts carried their key: its id stands in, so that it is recorded all the same.
            event = event.model_copy(update={"idempotency_key": f"verdict:{event.verdict_id}"})
        # A retry that re-sent the same verdict (same id) is one verdict.
        self.verdicts[event.verdict_id] = event

    def scored(self) -> list[tuple[StudyEventV1, PredictionEventV1]]:
        return [(s, self.predictions[i]) for i, s in self.studies.items() if i in self.predictions]

    @property
    def awaiting_score(self) -> int:
        """Studies with no prediction yet: a worker still has them (uncommitted), so it will write them."""
        return sum(1 for study_id in self.studies if study_id not in self.predictions)

    @property
    def read(self) -> set[str]:
        return {v.study_id for v in self.verdicts.values()}

    def summary(self) -> dict[str, int]:
        read = self.read
        return {
            "studies": self.counts["studies"],
            "predictions": self.counts["predictions"],
            "verdicts": self.counts["verdicts"],
            "distinct_verdicts": len(self.verdicts),
            "unread": sum(1 for i in self.studies if i in self.predictions and i not in read),
            "read": len(read),
            "awaiting_score": self.awaiting_score,
            "skipped": self.counts["skipped"],
        }


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def apply(client: redis.Redis, *, keys: WorklistKeys, policy: SlaPolicy, projection: Projection) -> None:
    """Write ``projection`` into Redis: scored studies (worker's scripts), then verdicts (API's script)."""
    for chunk in _chunks(projection.scored(), BATCH):
        with client.pipeline(transaction=False) as pipe:
            for study, prediction in chunk:
                upsert_study(
                    pipe,
                    keys=keys,
                    study=study,
                    prediction=prediction,
                    tier=prediction.tier or policy.tier_for(prediction.priority),
                    published=True,  # read back from Kafka: a replaying worker need not publish it again
                    shadow=projection.shadows.get(study.study_id),
                )
            stored = [stored_score(reply) for reply in pipe.execute()]
        with client.pipeline(transaction=False) as pipe:
            for (study, _), score in zip(chunk, stored, strict=True):
                index_scored_study(
                    pipe,
                    keys=keys,
                    policy=policy,
                    study_id=study.study_id,
                    priority=score.priority,
                    tier=score.tier,
                    received_at=study.received_at,
                )
            pipe.execute()
    # Oldest decision first, so that each radiologist's latest verdict is written last (the script also
    # refuses to replace a later one, whatever the order).
    ordered = sorted(projection.verdicts.values(), key=lambda v: v.decided_at)
    for chunk_v in _chunks(ordered, BATCH):
        with client.pipeline(transaction=False) as pipe:
            for verdict in chunk_v:
                record_verdict_sync(pipe, keys=keys, event=verdict)
            pipe.execute()
