"""The retrain worker's decisions, with fakes for training and the registry only (real feedback store, images).

What is under test is orchestration: which data reaches training, which outcome and reason a result carries
(gate passed / refused / held-out undecidable / any failure), and that an answered request never trains twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cxr_triage.events import FeedbackEventV1, TrainingRequestEventV1, TrainingResultEventV1
from cxr_triage.feedback.store import FeedbackStore
from cxr_triage.image_store import LocalImageStore
from tests.factories import feedback_event, png_bytes
from trainer.config import TrainConfig
from trainer.data.manifest import Manifest, Verify, build_manifest
from trainer.data.sources import ExampleSource
from trainer.errors import BadRowsError, TrackingUnavailable
from trainer.gate import GateResult
from trainer.promote import PromotionResult
from trainer.retrain import Challenger, ChampionInfo, Retrainer, train_config
from trainer.retrain_kafka import RequestProcessor
from trainer.settings import TrainerSettings


@dataclass
class FakeSteps:
    champion_info: ChampionInfo | None = None
    passes: bool = True
    fail_with: Exception | None = None
    trained: list[dict[str, Any]] = field(default_factory=list)
    gated_on: list[Manifest] = field(default_factory=list)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def champion(self) -> ChampionInfo | None:
        return self.champion_info

    def train(
        self,
        cfg: TrainConfig,
        *,
        data: Sequence[Path],
        sources: Sequence[ExampleSource],
        tags: dict[str, str],
        params: dict[str, Any],
    ) -> Challenger:
        if self.fail_with is not None:
            raise self.fail_with
        manifest = build_manifest(sources, verify=Verify.DECODE)
        self.trained.append(
            {"cfg": cfg, "data": list(data), "manifest": manifest, "tags": tags, "params": params}
        )
        return Challenger(version=str(7 + len(self.trained)), run_id=f"run-{len(self.trained)}")

    def promote(self, challenger: Challenger, evaluation: Manifest) -> PromotionResult:
        self.gated_on.append(evaluation)
        reasons = () if self.passes else ("sensitivity 0.9000 < target 0.95",)
        evaluation_numbers = {"auroc_macro": 0.81, "auroc_abnormal": 0.8, "sensitivity": 0.9, "specificity": 0.5, "threshold": 0.4}  # fmt: skip
        champion = self.champion_info
        return PromotionResult(
            promoted=self.passes,
            challenger_version=challenger.version,
            champion_version=champion.version if champion else None,
            served_version="3" if self.passes else None,
            gate=GateResult(self.passes, reasons),
            challenger_eval=evaluation_numbers,
            champion_eval={"auroc_macro": 0.79, "sensitivity": float("nan")} if champion else None,
        )

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        self.tags.setdefault(run_id, {}).update(tags)


def _settings(tmp_path: Path, **changes: Any) -> TrainerSettings:
    return TrainerSettings(
        home=tmp_path / "home",
        retrain_min_heldout=changes.pop("retrain_min_heldout", 10),
        retrain_min_heldout_per_class=changes.pop("retrain_min_heldout_per_class", 3),
        initial_model_input_size=96,
        # Explicit, so that a CXR_RETRAIN_PUBLIC_DATA in the environment (make sets one) does not leak in.
        retrain_public_data=changes.pop("retrain_public_data", None),
        **changes,
    )


def _fill(settings: TrainerSettings, n: int, *, all_abnormal: bool = False) -> FeedbackStore:
    images = LocalImageStore(settings.image_store_dir)
    store = FeedbackStore(settings.feedback_db_path)
    for i in range(n):
        uri = images.put(png_bytes(seed=i, size=64), suffix=".png")
        base = feedback_event(f"st{i:03d}", abnormal=all_abnormal or i % 2 == 0).model_dump()
        store.upsert(FeedbackEventV1.model_validate({**base, "image_uri": uri, "sha256": Path(uri).stem}))
    return store


def _request(up_to: int, *, request_id: str = "req-00000001", after: int = 0) -> TrainingRequestEventV1:
    return TrainingRequestEventV1(
        request_id=request_id,
        reason="new_labels",
        champion_version="5",
        labelled_since_champion=up_to - after,
        total_examples=up_to,
        after_seq=after,
        up_to_seq=up_to,
    )


def test_gate_passed_promotes_and_the_result_says_so(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = _fill(settings, 60)
    steps = FakeSteps(champion_info=ChampionInfo("5", 128, "densenet121"))
    result = Retrainer(settings, store, steps).handle(_request(50))

    assert result.outcome == "promoted" and result.reason == "gate passed"
    assert (result.champion_version, result.challenger_version, result.serving_version) == ("5", "8", "8")
    assert (result.after_seq, result.up_to_seq, result.mlflow_run_id) == (0, 50, "run-1")
    assert result.started_at is not None and result.finished_at >= result.started_at
    gate = result.gate
    assert gate["challenger_auroc_macro"] == 0.81 and gate["champion_auroc_macro"] == 0.79
    assert gate["champion_sensitivity"] is None  # NaN becomes null in the event
    assert gate["target_sensitivity"] == settings.target_sensitivity and gate["heldout_n"] > 0

    trained = steps.trained[0]
    # Bounded by the retrain settings; the champion's input size; no public set configured.
    cfg = trained["cfg"]
    assert (cfg.input_size, cfg.epochs, cfg.max_steps_per_epoch, cfg.progress) == (128, 2, 50, False)
    assert trained["data"] == []
    assert trained["tags"]["cxr.request_id"] == "req-00000001"
    assert trained["params"]["request_up_to_seq"] == 50
    # Trained on the window up to seq 50 and on no held-out study; gated on held-out studies only.
    manifest: Manifest = trained["manifest"]
    seqs = {int(e.where.removeprefix("feedback seq ")) for e in manifest.examples}
    assert max(seqs) <= 50
    heldout = steps.gated_on[0]
    assert {e.split for e in heldout.examples} == {"test"}
    assert len(heldout) == gate["heldout_n"]
    assert steps.tags["run-1"] == {
        "cxr.gate": "passed",
        "cxr.gate_reasons": "gate passed",
        "cxr.outcome": "promoted",
    }


def test_gate_refused_rejects_and_keeps_the_champion_serving(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = _fill(settings, 60)
    steps = FakeSteps(champion_info=ChampionInfo("5", None, None), passes=False)
    result = Retrainer(settings, store, steps).handle(_request(60))
    assert result.outcome == "rejected"
    assert result.reason == "gate refused: sensitivity 0.9000 < target 0.95"
    assert (result.challenger_version, result.serving_version) == ("8", "5")
    assert steps.trained[0]["cfg"].input_size == 96  # no size on the champion: the initial model's
    assert steps.tags["run-1"]["cxr.gate"] == "failed"


@pytest.mark.parametrize(
    ("n", "all_abnormal", "why"),
    [(8, False, r"has \d studies \(< 10\)"), (60, True, r"\d+ abnormal and 0 normal studies")],
)
def test_a_held_out_slice_that_cannot_decide_rejects_without_gating(
    tmp_path: Path, n: int, all_abnormal: bool, why: str
) -> None:
    settings = _settings(tmp_path)
    store = _fill(settings, n, all_abnormal=all_abnormal)
    steps = FakeSteps()
    result = Retrainer(settings, store, steps).handle(_request(n))
    assert result.outcome == "rejected" and result.reason.endswith("cannot gate")
    assert re.search(why, result.reason)
    assert steps.gated_on == []  # never promoted blind
    assert result.challenger_version == "8" and result.serving_version is None
    assert steps.tags["run-1"]["cxr.gate"] == "undecided"
    assert "challenger_auroc_macro" not in result.gate and result.gate["heldout_n"] is not None


def test_any_failure_is_a_failed_result_with_a_one_line_reason(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = _fill(settings, 30)
    steps = FakeSteps(fail_with=TrackingUnavailable("no MLflow server answers at http://127.0.0.1:1"))
    result = Retrainer(settings, store, steps).handle(_request(30))
    assert result.outcome == "failed" and result.reason == "no MLflow server answers at http://127.0.0.1:1"
    assert result.challenger_version is None and result.mlflow_run_id is None

    # A feedback image gone from the store fails before training, naming the row by seq, not by study.
    next(settings.image_store_dir.rglob("*.png")).unlink()
    result = Retrainer(settings, store, FakeSteps()).handle(_request(30))
    assert (
        result.outcome == "failed"
        and "feedback seq" in result.reason
        and "image file not found" in result.reason
    )
    assert "\n" not in result.reason and "st0" not in result.reason and "Traceback" not in result.reason
    with pytest.raises(BadRowsError):  # the same problem as the trainer itself reports it
        build_manifest([Retrainer(settings, store, FakeSteps()).sources(_request(30))[0]])


def test_a_public_set_is_trained_on_and_feedback_goes_to_train(tmp_path: Path) -> None:
    public = tmp_path / "public"
    public.mkdir()
    settings = _settings(tmp_path, retrain_public_data=public, retrain_input_size=64)
    store = _fill(settings, 20)
    training, heldout = Retrainer(settings, store, FakeSteps()).sources(_request(20))
    assert {e.split for e in training.examples()} <= {"train", "test"}
    assert heldout.after_seq == 0 and heldout.up_to_seq == 20
    cfg = train_config(settings, ChampionInfo("5", 224, "densenet121"))
    assert cfg.input_size == 64  # a set size wins over the champion's


def test_request_window_setting_trains_on_the_window_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path, retrain_feedback_window="request")
    store = _fill(settings, 40)
    training, heldout = Retrainer(settings, store, FakeSteps()).sources(_request(40, after=25))
    assert (training.after_seq, heldout.after_seq) == (25, 0)


@dataclass
class FakeAnswered:
    ids: set[str] = field(default_factory=set)
    refreshed: int = 0

    def refresh(self) -> None:
        self.refreshed += 1

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.ids

    def add(self, request_id: str) -> None:
        self.ids.add(request_id)


def test_an_answered_request_is_skipped_and_never_trained_twice(tmp_path: Path) -> None:
    published: list[TrainingResultEventV1] = []
    handled: list[str] = []

    def handle(request: TrainingRequestEventV1) -> TrainingResultEventV1:
        handled.append(request.request_id)
        return TrainingResultEventV1(request_id=request.request_id, outcome="rejected", reason="x")

    answered = FakeAnswered(ids={"req-answered"})
    processor = RequestProcessor(handle=handle, answered=answered, publish=published.append)
    # Answered by an earlier run (its result is on the topic): skipped, nothing published.
    assert processor.process(_request(5, request_id="req-answered").to_bytes()) == ("duplicate", None)
    # A new one is handled once; the same request again (a redelivery after a lost commit) is skipped.
    what, result = processor.process(_request(5, request_id="req-new-0001").to_bytes())
    assert what == "rejected" and result is not None
    assert processor.process(_request(5, request_id="req-new-0001").to_bytes()) == ("duplicate", None)
    assert handled == ["req-new-0001"] and [r.request_id for r in published] == ["req-new-0001"]
    assert answered.refreshed == 3  # caught up with the results topic before each decision
    # Not a training request at all: skipped, so it cannot block the queue.
    assert processor.process(json.dumps({"request_id": "r"}).encode()) == ("invalid", None)
    assert handled == ["req-new-0001"]


def test_a_result_is_not_recorded_as_answered_when_publishing_fails(tmp_path: Path) -> None:
    def handle(request: TrainingRequestEventV1) -> TrainingResultEventV1:
        return TrainingResultEventV1(request_id=request.request_id, outcome="promoted")

    def publish(result: TrainingResultEventV1) -> None:
        raise RuntimeError("broker down")

    answered = FakeAnswered()
    processor = RequestProcessor(handle=handle, answered=answered, publish=publish)
    with pytest.raises(RuntimeError):
        processor.process(_request(5).to_bytes())
    assert "req-00000001" not in answered  # uncommitted: handled again after a restart


def test_metrics_endpoint_shows_outcomes_duration_and_busy() -> None:
    import urllib.request

    from deploy.testing import free_ports
    from trainer.retrain_metrics import RetrainMetrics

    (port,) = free_ports(1)
    metrics = RetrainMetrics()
    metrics.serve(host="127.0.0.1", port=port)
    metrics.requests.labels(outcome="duplicate").inc()
    metrics.last_duration.set(80.4)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'cxr_retrain_requests_total{outcome="duplicate"} 1.0' in text
    assert 'cxr_retrain_requests_total{outcome="promoted"} 0.0' in text
    assert "cxr_retrain_last_duration_seconds 80.4" in text and "cxr_retrain_busy 0.0" in text
