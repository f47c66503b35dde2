"""One training request -> one result: train a challenger on public + feedback data, gate it on held-out feedback.

The steps that need Ray, MLflow and Triton sit behind ``RetrainSteps`` (``trainer.retrain_steps`` is the real
one), so what this module decides (which data, which bounds, which outcome and why) is tested without them.

Outcomes (``TrainingResultEventV1.outcome``):

* ``promoted``: the challenger passed the gate on the held-out feedback slice and Triton serves it;
* ``rejected``: the gate refused it, or the held-out slice cannot decide (too few studies, or too few of one
  class): a challenger is never promoted blind; it stays registered as ``challenger``;
* ``failed``: anything went wrong (bad data, no MLflow, a training error); the reason is one line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cxr_triage.events import TrainingRequestEventV1, TrainingResultEventV1, utcnow
from cxr_triage.feedback.store import FeedbackStore
from trainer.config import TrainConfig
from trainer.data.feedback import FeedbackSource, held_out_manifest
from trainer.data.manifest import Manifest
from trainer.data.sources import ExampleSource
from trainer.data.splits import Split
from trainer.promote import PromotionResult
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

MAX_REASON = 500


@dataclass(frozen=True)
class ChampionInfo:
    version: str
    input_size: int | None
    architecture: str | None


@dataclass(frozen=True)
class Challenger:
    version: str
    run_id: str


class RetrainSteps(Protocol):
    def champion(self) -> ChampionInfo | None:
        """The registry's champion now, or None."""
        ...

    def train(
        self,
        cfg: TrainConfig,
        *,
        data: Sequence[Path],
        sources: Sequence[ExampleSource],
        tags: dict[str, str],
        params: dict[str, Any],
    ) -> Challenger:
        """Train, export, register as ``challenger`` (as ``cxr-triage train`` does)."""
        ...

    def promote(self, challenger: Challenger, evaluation: Manifest) -> PromotionResult:
        """Gate ``challenger`` against the champion on ``evaluation``; serve it and make it champion if it passes."""
        ...

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None: ...


def train_config(settings: TrainerSettings, champion: ChampionInfo | None) -> TrainConfig:
    """Bounded by the ``retrain_*`` settings; the champion's input size and architecture unless set."""
    input_size = settings.retrain_input_size or (
        champion.input_size if champion and champion.input_size else settings.initial_model_input_size
    )
    return TrainConfig(
        architecture=(champion.architecture if champion and champion.architecture else None)
        or settings.retrain_architecture,
        input_size=input_size,
        epochs=settings.retrain_epochs,
        max_steps_per_epoch=settings.retrain_max_steps,
        batch_size=settings.retrain_batch_size,
        num_workers=settings.retrain_workers,
        lr=settings.retrain_lr,
        max_minutes=settings.retrain_max_minutes,
        progress=False,  # a service logs lines; bars are for terminals
    )


def undecidable(heldout: Manifest, *, min_n: int, min_per_class: int) -> str | None:
    """Why the held-out slice cannot gate a challenger, or None when it can."""
    abnormal = heldout.abnormal()
    n_abnormal, n_normal = int((abnormal == 1).sum()), int((abnormal == 0).sum())
    if len(heldout) < min_n:
        return f"held-out feedback slice has {len(heldout)} studies (< {min_n}): cannot gate"
    if n_abnormal < min_per_class or n_normal < min_per_class:
        return (
            f"held-out feedback slice has {n_abnormal} abnormal and {n_normal} normal studies "
            f"(need >= {min_per_class} of each): cannot gate"
        )
    return None


def one_line(exc: BaseException) -> str:
    """The exception as one line for an event: no traceback, no multi-line lists of rows."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else round(number, 6)


def gate_numbers(
    heldout: Manifest, settings: TrainerSettings, result: PromotionResult | None
) -> dict[str, float | None]:
    abnormal = heldout.abnormal()
    numbers: dict[str, float | None] = {
        "heldout_n": float(len(heldout)),
        "heldout_abnormal": float((abnormal == 1).sum()),
        "heldout_normal": float((abnormal == 0).sum()),
        "target_sensitivity": settings.target_sensitivity,
        "margin": settings.gate_margin,
    }
    if result is not None:
        for who, evaluation in (("challenger", result.challenger_eval), ("champion", result.champion_eval)):
            for key in ("auroc_macro", "auroc_abnormal", "sensitivity", "specificity", "threshold"):
                numbers[f"{who}_{key}"] = _number(evaluation.get(key)) if evaluation else None
    return numbers


@dataclass
class Retrainer:
    settings: TrainerSettings
    store: FeedbackStore
    steps: RetrainSteps

    def sources(self, request: TrainingRequestEventV1) -> tuple[FeedbackSource, FeedbackSource]:
        """(training source, held-out source): the gate sees every held-out study up to the window's end."""
        s = self.settings
        common: dict[str, Any] = {
            "store": self.store,
            "image_root": s.image_store_dir,
            "heldout_fraction": s.retrain_heldout_fraction,
            "seed": s.split_seed,
            "up_to_seq": request.up_to_seq,
        }
        after = request.after_seq if s.retrain_feedback_window == "request" else 0
        # With a public set its validation split chooses the threshold and all training feedback is trained
        # on; without one, training feedback is split by study like any source and its val part chooses.
        training_split = Split.TRAIN.value if s.retrain_public_data else None
        return (
            FeedbackSource(after_seq=after, training_split=training_split, **common),
            FeedbackSource(after_seq=0, **common),
        )

    def handle(self, request: TrainingRequestEventV1) -> TrainingResultEventV1:
        started = utcnow()
        training, heldout_source = self.sources(request)
        base: dict[str, Any] = {
            "request_id": request.request_id,
            "after_seq": training.after_seq,
            "up_to_seq": request.up_to_seq,
            "started_at": started,
        }
        champion: ChampionInfo | None = None
        challenger: Challenger | None = None
        try:
            champion = self.steps.champion()
            base["champion_version"] = champion.version if champion else None
            cfg = train_config(self.settings, champion)
            logger.info(
                "training a challenger",
                extra={"request_id": request.request_id, "reason": request.reason, "input_size": cfg.input_size,
                       "architecture": cfg.architecture, "up_to_seq": request.up_to_seq},
            )  # fmt: skip
            challenger = self.steps.train(
                cfg,
                data=[self.settings.retrain_public_data] if self.settings.retrain_public_data else [],
                sources=[training],
                tags=self._run_tags(request),
                params=self._run_params(request, training),
            )
            heldout = held_out_manifest(heldout_source.examples())
            return self._decide(request, challenger, heldout, base)
        except Exception as exc:  # every failure becomes a "failed" result; the log keeps the traceback
            logger.exception("retraining failed", extra={"request_id": request.request_id})
            result = TrainingResultEventV1(
                **base,
                outcome="failed",
                reason=one_line(exc),
                challenger_version=challenger.version if challenger else None,
                serving_version=champion.version if champion else None,
                mlflow_run_id=challenger.run_id if challenger else None,
            )
            if challenger is not None:
                self._tag_quietly(challenger.run_id, {"cxr.outcome": "failed"})
            return result

    def _decide(
        self,
        request: TrainingRequestEventV1,
        challenger: Challenger,
        heldout: Manifest,
        base: dict[str, Any],
    ) -> TrainingResultEventV1:
        s = self.settings
        champion_version = base.get("champion_version")
        why_not = undecidable(
            heldout, min_n=s.retrain_min_heldout, min_per_class=s.retrain_min_heldout_per_class
        )
        if why_not is not None:
            self.steps.tag_run(
                challenger.run_id,
                {"cxr.gate": "undecided", "cxr.gate_reasons": why_not, "cxr.outcome": "rejected"},
            )
            logger.warning(
                "held-out slice cannot gate", extra={"request_id": request.request_id, "why": why_not}
            )
            return TrainingResultEventV1(
                **base, outcome="rejected", reason=why_not, challenger_version=challenger.version,
                serving_version=champion_version, gate=gate_numbers(heldout, s, None),
                mlflow_run_id=challenger.run_id,
            )  # fmt: skip
        promotion = self.steps.promote(challenger, heldout)
        outcome = "promoted" if promotion.promoted else "rejected"
        reason = "gate passed" if promotion.promoted else "gate refused: " + "; ".join(promotion.gate.reasons)
        self.steps.tag_run(
            challenger.run_id,
            {"cxr.gate": "passed" if promotion.promoted else "failed", "cxr.gate_reasons": reason,
             "cxr.outcome": outcome},
        )  # fmt: skip
        logger.info(
            "gate decided",
            extra={"request_id": request.request_id, "outcome": outcome, "challenger": challenger.version},
        )
        return TrainingResultEventV1(
            **base, outcome=outcome, reason=reason, challenger_version=challenger.version,
            serving_version=challenger.version if promotion.promoted else champion_version,
            gate=gate_numbers(heldout, s, promotion), mlflow_run_id=challenger.run_id,
        )  # fmt: skip

    def _run_tags(self, request: TrainingRequestEventV1) -> dict[str, str]:
        return {
            "cxr.request_id": request.request_id,
            "cxr.retrain_reason": request.reason,
            "cxr.retrain_detail": request.detail[:500] or "-",
            "cxr.champion_version": request.champion_version or "-",
        }

    def _run_params(self, request: TrainingRequestEventV1, training: FeedbackSource) -> dict[str, Any]:
        s = self.settings
        return {
            "request_id": request.request_id,
            "request_reason": request.reason,
            "request_after_seq": request.after_seq,
            "request_up_to_seq": request.up_to_seq,
            "feedback_after_seq": training.after_seq,
            "feedback_up_to_seq": request.up_to_seq,
            "heldout_fraction": s.retrain_heldout_fraction,
            "public_data": str(s.retrain_public_data or ""),
        }

    def _tag_quietly(self, run_id: str, tags: dict[str, str]) -> None:
        try:
            self.steps.tag_run(run_id, tags)
        except Exception:  # the result matters more than a tag; MLflow may be what failed
            logger.warning("could not tag the run", extra={"run_id": run_id})


def finished(result: TrainingResultEventV1) -> float:
    """Seconds from start to finish of a result (0 when it carries no start)."""
    start: datetime | None = result.started_at
    return (result.finished_at - start).total_seconds() if start else 0.0
