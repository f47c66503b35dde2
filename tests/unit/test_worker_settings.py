"""Worker and serving settings from the environment (inference_worker.config)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxr_triage.model.serving import ServingSettings
from cxr_triage.priority import DEFAULT_WEIGHTS
from cxr_triage.settings import Settings
from inference_worker.app import kafka_consumer_config
from inference_worker.config import WorkerSettings


def test_priority_weights_override_the_defaults_by_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_WORKER_PRIORITY_WEIGHTS", '{"Support Devices": 0.0, "Cardiomegaly": 1.0}')
    weights = WorkerSettings().weights
    assert weights["Support Devices"] == 0.0 and weights["Cardiomegaly"] == 1.0
    assert weights["Pneumothorax"] == DEFAULT_WEIGHTS["Pneumothorax"]
    assert set(weights) == set(DEFAULT_WEIGHTS)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"Pneumothorx": 1}', "unknown labels"),
        ('{"No Finding": 1}', "No Finding"),
        ('{"Edema": -1}', "non-negative"),
    ],
)
def test_bad_priority_weights_are_refused(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("CXR_WORKER_PRIORITY_WEIGHTS", value)
    with pytest.raises(ValidationError, match=message):
        WorkerSettings()


def test_serving_defaults_are_the_measured_ones() -> None:
    serving = ServingSettings()
    assert (serving.instance_count, serving.intra_op_threads, serving.inter_op_threads) == (1, 2, 1)
    assert serving.allow_spinning is False and serving.preferred_batch_sizes == (8, 16)


def test_the_consumer_prefetch_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_WORKER_FETCH_QUEUE_KBYTES", "256")
    config = kafka_consumer_config(Settings(worker_max_batch=8), WorkerSettings(), client_id="w")
    assert config["queued.max.messages.kbytes"] == 256 and config["queued.min.messages"] == 100
    assert config["enable.auto.commit"] is False
