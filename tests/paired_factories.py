"""Feedback examples read by a champion (version 1) and a challenger (version 2), served or in shadow."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from cxr_triage.events import FeedbackEventV1
from stream_processors import join
from tests.processors_factories import T0, prediction, study, verdict


def example(
    index: int,
    *,
    abnormal: bool,
    champion: float,
    challenger: float | None,
    challenger_threshold: float = 0.5,
    arm: str = "champion",
    read_s: float = 120.0,
) -> FeedbackEventV1:
    """Study ``index`` served by version 1 (or 2 on the canary arm), the other version in shadow."""
    sid = f"s{index}"
    served_version, shadow_version = ("2", "1") if arm == "canary" else ("1", "2")
    served_score, shadow_score = (challenger, champion) if arm == "canary" else (champion, challenger)
    assert served_score is not None
    served = prediction(sid, priority=served_score, version=served_version).model_copy(update={"arm": arm})
    if served_version == "2":
        served = served.model_copy(update={"threshold": challenger_threshold})
    shadows = {}
    if shadow_score is not None:
        shadows[shadow_version] = prediction(
            sid, priority=shadow_score, version=shadow_version, scored_at=T0 + timedelta(seconds=3)
        ).model_copy(
            update={"role": "shadow", "threshold": challenger_threshold if shadow_version == "2" else 0.5}
        )
    v = verdict(sid, abnormal=abnormal, decided_at=T0 + timedelta(seconds=read_s))
    return join.feedback_of(study(sid), served, v, shadows)


def cohort(n: int, challenger: str, seed: int = 7) -> list[FeedbackEventV1]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    champion = np.clip(0.5 + 0.25 * np.where(truth, 1, -1) + rng.normal(0, 0.2, n), 0, 1)
    if challenger == "shuffled":
        other = rng.permutation(champion)  # the same scores, no longer about these studies
    elif challenger == "equal":
        other = champion.copy()
    else:  # "better": less noise around the truth
        other = np.clip(0.5 + 0.3 * np.where(truth, 1, -1) + rng.normal(0, 0.1, n), 0, 1)
    return [
        example(i, abnormal=bool(t), champion=float(a), challenger=float(b))
        for i, (t, a, b) in enumerate(zip(truth, champion, other, strict=True))
    ]
