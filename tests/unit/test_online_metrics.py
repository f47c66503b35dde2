"""Online metrics on hand-checkable windows: every expected number below can be recounted on paper."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from cxr_triage.events import FeedbackEventV1, MetricsEventV1
from cxr_triage.labels import LABELS, NO_FINDING
from cxr_triage.sla import Tier
from stream_processors.online_metrics import compute_metrics, latest_per_reader

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MODEL, VERSION = "cxr-densenet", "7"


def example(
    study: str,
    *,
    findings: Iterable[str] = (),
    priority: float,
    finding_probs: dict[str, float] | None = None,
    threshold: float | None = 0.5,
    tier: Tier | None = Tier.ROUTINE,
    read_s: float = 60.0,
    radiologist: str = "dr-a",
    uncertain: tuple[str, ...] = (),
    version: str = VERSION,
    model: str = MODEL,
    decided_offset_s: float = 0.0,
    kind: str = "verdict",
) -> FeedbackEventV1:
    """One example; no findings means the radiologist ticked No Finding (a normal study)."""
    positive = set(findings) or {NO_FINDING}
    labels = {label: int(label in positive) for label in LABELS}
    probs = {label: 0.1 for label in LABELS}
    probs[NO_FINDING] = 1.0 - priority  # the normal score mirrors the abnormal one
    probs.update(finding_probs or {})
    received = T0
    return FeedbackEventV1.model_validate(
        {
            "study_id": study,
            "radiologist": radiologist,
            "verdict_id": f"v-{study}-{radiologist}-{decided_offset_s}",
            "kind": kind,
            "image_uri": f"file:///images/{study}.png",
            "sha256": hashlib.sha256(study.encode()).hexdigest(),
            "content_type": "image/png",
            "labels": labels,
            "uncertain": uncertain,
            "model_name": model,
            "model_version": version,
            "probabilities": probs,
            "priority": priority,
            "tier": tier,
            "threshold": threshold,
            "received_at": received,
            "scored_at": received + timedelta(seconds=2),
            "decided_at": received + timedelta(seconds=read_s + decided_offset_s),
        }
    )


def window_of_five() -> list[FeedbackEventV1]:
    """Three abnormal (a, b, e) and two normal (c, d) reads; threshold 0.5 calls a, c and e abnormal."""
    return [
        example("a", findings=["Cardiomegaly"], priority=0.9, finding_probs={"Cardiomegaly": 0.8},
                tier=Tier.CRITICAL, read_s=60),
        example("b", findings=["Edema"], priority=0.4, finding_probs={"Cardiomegaly": 0.3, "Edema": 0.35},
                tier=Tier.URGENT, read_s=300),
        example("c", priority=0.6, finding_probs={"Cardiomegaly": 0.2}, tier=Tier.ROUTINE, read_s=600),
        example("d", priority=0.1, finding_probs={"Cardiomegaly": 0.1}, tier=None, read_s=30),
        example("e", findings=["Cardiomegaly"], priority=0.7, finding_probs={"Cardiomegaly": 0.25},
                tier=Tier.CRITICAL, read_s=120),
    ]  # fmt: skip


def metrics(examples: list[FeedbackEventV1]) -> MetricsEventV1:
    return compute_metrics(examples, model_name=MODEL, model_version=VERSION, window="sliding")


def test_hand_checked_window() -> None:
    m = metrics(window_of_five())
    assert (m.model_name, m.model_version, m.window) == (MODEL, VERSION, "sliding")
    assert (m.examples, m.abnormal) == (5, 3)
    # Abnormal pairs (a .9, b .4, e .7) x normal (c .6, d .1): b loses to c only -> 5 of 6 pairs ordered.
    assert m.auroc_abnormal == pytest.approx(5 / 6)
    # Cardiomegaly: positives a .8, e .25 vs b .3, c .2, d .1 -> e loses to b only -> 5/6. No Finding
    # mirrors the priority -> 5/6. Edema: b .35 alone above the others' .1 -> 1. Every other finding has
    # one class only -> absent, not 0.5.
    assert m.auroc_per_finding == pytest.approx({"No Finding": 5 / 6, "Cardiomegaly": 5 / 6, "Edema": 1.0})
    assert m.threshold == 0.5
    # Called abnormal: a, c, e. Abnormal a, e caught, b missed -> 2/3; normal d cleared, c not -> 1/2.
    assert m.sensitivity == pytest.approx(2 / 3)
    assert m.specificity == pytest.approx(1 / 2)
    assert m.agreement_rate == pytest.approx(3 / 5)  # a, d, e
    assert m.time_to_read_s == {"critical": 90.0, "routine": 600.0, "unknown": 30.0, "urgent": 300.0}


def test_uncertain_finding_left_out_of_that_findings_auroc_only() -> None:
    examples = window_of_five()
    examples[4] = example("e", findings=["Cardiomegaly"], priority=0.7,
                          finding_probs={"Cardiomegaly": 0.25}, uncertain=("Cardiomegaly",))  # fmt: skip
    m = metrics(examples)
    # Without e, the one Cardiomegaly positive (a .8) outranks every negative.
    assert m.auroc_per_finding["Cardiomegaly"] == pytest.approx(1.0)
    assert m.auroc_abnormal == pytest.approx(5 / 6)  # e still counts for abnormal-vs-normal
    assert m.examples == 5


def test_one_class_only_leaves_auroc_and_rates_undefined_but_agreement_measured() -> None:
    abnormal_only = [e for e in window_of_five() if e.abnormal]
    m = metrics(abnormal_only)
    assert (m.examples, m.abnormal) == (3, 3)
    assert m.auroc_abnormal is None
    assert m.sensitivity is None and m.specificity is None
    assert m.agreement_rate == pytest.approx(2 / 3)  # a and e called abnormal, b not


def test_without_a_threshold_no_operating_point_is_invented() -> None:
    examples = [e.model_copy(update={"threshold": None}) for e in window_of_five()]
    m = metrics(examples)
    assert m.threshold is None
    assert m.sensitivity is None and m.specificity is None and m.agreement_rate is None
    assert m.auroc_abnormal == pytest.approx(5 / 6)


def test_score_equal_to_threshold_is_called_abnormal() -> None:
    m = metrics([example("x", findings=["Edema"], priority=0.5), example("y", priority=0.2)])
    assert (m.sensitivity, m.specificity, m.agreement_rate) == (1.0, 1.0, 1.0)


def test_empty_window_reports_nothing_measured() -> None:
    m = compute_metrics([], model_name=MODEL, model_version=VERSION, window="since_promotion")
    assert (m.examples, m.abnormal, m.window) == (0, 0, "since_promotion")
    assert m.auroc_abnormal is None and m.threshold is None and m.agreement_rate is None
    assert m.auroc_per_finding == {} and m.time_to_read_s == {}


def test_other_versions_and_models_do_not_count() -> None:
    strangers = [
        example("f", priority=0.99, version="6"),
        example("g", findings=["Edema"], priority=0.01, model="other-model"),
    ]
    mixed, alone = metrics(window_of_five() + strangers), metrics(window_of_five())
    assert mixed == alone.model_copy(update={"computed_at": mixed.computed_at})


def test_amendment_replaces_the_readers_earlier_verdict_and_other_readers_count() -> None:
    first = example("c", priority=0.6)  # read normal ...
    amended = example("c", findings=["Pneumothorax"], priority=0.6, decided_offset_s=30, kind="amendment")
    second_reader = example("c", priority=0.6, radiologist="dr-b")
    m = metrics([amended, first, second_reader])  # arrival order must not matter
    assert (m.examples, m.abnormal) == (2, 1)
    kept = {(e.radiologist, e.kind) for e in latest_per_reader([first, amended, second_reader])}
    assert kept == {("dr-a", "amendment"), ("dr-b", "verdict")}


def test_metrics_event_round_trips_as_json() -> None:
    m = metrics(window_of_five())
    assert MetricsEventV1.from_bytes(m.to_bytes()) == m
