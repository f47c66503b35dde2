"""The worker loop in Ray Train's local mode (no cluster): seeded runs repeat, a resumed run continues exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_triage.labels import LABELS
from trainer.checkpoints import MODEL_FILE, load_state
from trainer.config import TrainConfig
from trainer.settings import TrainerSettings
from trainer.train import fit, load_split_data


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 small images of 16 patients with random 1/0/blank labels (enough for a 2-step epoch)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Frontal/Lateral", *LABELS, "patient_id"])
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(
                root / f"images/{i}.png"
            )
            labels = rng.choice(["1", "0", ""], size=len(LABELS))
            labels[0] = "1" if i % 3 == 0 else "0"  # both classes of No Finding in every split
            writer.writerow([f"images/{i}.png", "Frontal", *labels, f"p{i}"])
    return root


def _settings(tmp_path: Path) -> TrainerSettings:
    return TrainerSettings(home=tmp_path, mlflow_tracking_uri="unused://", val_fraction=0.3)


def _config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "input_size": 32, "batch_size": 4, "max_steps_per_epoch": 2, "epochs": 2, "num_workers": 0,
        "val_batch_size": 8, "progress": False, "lr": 1e-3,
    }  # fmt: skip
    return TrainConfig.model_validate({**base, **overrides})


def _run(
    data: Path, home: Path, name: str, resume_from: Path | None = None
) -> tuple[Path, list[dict[str, float]]]:
    settings = _settings(home)
    train, val = load_split_data([data], settings)
    return fit(
        _config(),
        train=train,
        val=val,
        settings=settings,
        name=name,
        tracking_info=None,
        resume_from=resume_from,
    )


KEYS = ("train_loss", "val_loss", "val_auroc_macro")


def test_seeded_runs_repeat_and_report_speed_and_memory(data: Path, tmp_path: Path) -> None:
    _, first = _run(data, tmp_path, "a")
    _, second = _run(data, tmp_path, "b")
    assert len(first) == 2
    assert [[e[k] for k in KEYS] for e in first] == [[e[k] for k in KEYS] for e in second]
    assert first[0]["train_loss"] != first[1]["train_loss"]  # it trained
    for entry in first:
        assert entry["images_per_second"] > 0 and entry["epoch_seconds"] > 0 and entry["peak_memory_mb"] > 0


def test_resumed_run_continues_exactly(data: Path, tmp_path: Path) -> None:
    final, straight = _run(data, tmp_path, "straight")
    first_epoch = final.parent / "epoch-0001"
    assert load_state(first_epoch).epoch == 1

    resumed_final, resumed = _run(data, tmp_path, "resumed", resume_from=first_epoch)
    assert len(resumed) == 2 and resumed[0] == straight[0]  # the first epoch comes from the checkpoint
    assert [resumed[1][k] for k in KEYS] == [straight[1][k] for k in KEYS]
    a = torch.load(final / MODEL_FILE, weights_only=True)
    b = torch.load(resumed_final / MODEL_FILE, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_local_mode_keeps_only_the_last_two_checkpoints(data: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    train, val = load_split_data([data], settings)
    final, _ = fit(
        _config(epochs=4), train=train, val=val, settings=settings, name="kept", tracking_info=None,
        resume_from=None,
    )  # fmt: skip
    assert sorted(p.name for p in final.parent.iterdir()) == ["epoch-0003", "epoch-0004"]
    assert final.name == "epoch-0004"


def test_time_budget_stops_before_an_epoch_that_would_overrun(data: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    train, val = load_split_data([data], settings)
    config = _config(epochs=5, max_minutes=1e-4)  # less than one epoch: stop after the first
    _, history = fit(
        config, train=train, val=val, settings=settings, name="budget", tracking_info=None, resume_from=None
    )
    assert len(history) == 1


def test_gradient_accumulation_and_bf16_autocast(data: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    train, val = load_split_data([data], settings)
    config = _config(epochs=1, grad_accum=2, max_steps_per_epoch=3, amp="bf16")
    final, history = fit(
        config, train=train, val=val, settings=settings, name="accum", tracking_info=None, resume_from=None
    )
    assert load_state(final).step == 2  # 3 micro-batches, an optimizer step every 2 and at the epoch's end
    assert all(np.isfinite(history[0][k]) for k in KEYS if k in history[0])


def _fit(config: TrainConfig, data: Path, home: Path, name: str) -> tuple[Path, list[dict[str, float]]]:
    settings = _settings(home)
    train, val = load_split_data([data], settings)
    return fit(
        config, train=train, val=val, settings=settings, name=name, tracking_info=None, resume_from=None
    )


def test_warmup_losses_and_augmentations_train_the_new_architectures(data: Path, tmp_path: Path) -> None:
    for architecture, loss in (("resnet18", "asymmetric"), ("efficientnet-b0", "focal")):
        config = _config(
            architecture=architecture, loss=loss, warmup_epochs=1.0, crop_min_area=0.6, equalize_p=1.0
        )
        _, history = _fit(config, data, tmp_path, architecture)
        assert history[0]["train_loss"] != history[1]["train_loss"] and np.isfinite(history[1]["val_loss"])
        # Warm-up: the first epoch's 2 steps climb from 1% to the full rate (without warm-up the cosine would
        # be halfway down, at 5e-4, by then); the second epoch's cosine decays it to 0.
        assert history[0]["lr"] == pytest.approx(1e-3) and history[1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_ema_weights_are_validated_and_checkpointed_while_training_is_unchanged(
    data: Path, tmp_path: Path
) -> None:
    plain_final, plain = _fit(_config(architecture="resnet18"), data, tmp_path, "plain")
    ema_final, ema = _fit(_config(architecture="resnet18", ema_decay=0.5), data, tmp_path, "ema")
    assert [e["train_loss"] for e in ema] == [e["train_loss"] for e in plain]  # same steps taken
    assert ema[1]["val_loss"] != plain[1]["val_loss"]  # but another model is evaluated...
    a = torch.load(plain_final / MODEL_FILE, weights_only=True)
    b = torch.load(ema_final / MODEL_FILE, weights_only=True)
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])  # ... and kept
    # BatchNorm statistics are copied from the trained model, not left at their initial values.
    assert torch.equal(a["features.1.running_mean"], b["features.1.running_mean"])


def test_test_time_augmentation_averages_zoomed_views(data: Path, tmp_path: Path) -> None:
    from trainer.data.dataset import CXRDataset
    from trainer.data.policies import UncertaintyPolicy
    from trainer.models import ModelSpec, build_model
    from trainer.predict import predict, predict_tta

    settings = _settings(tmp_path)
    _, val = load_split_data([data], settings)
    dataset = CXRDataset(val, size=32, policy=UncertaintyPolicy.IGNORE)
    torch.manual_seed(0)
    model = build_model(ModelSpec(architecture="resnet18", input_size=32)).eval()
    cpu = torch.device("cpu")
    plain, _ = predict(model, dataset, batch_size=4, device=cpu)
    np.testing.assert_allclose(
        predict_tta(model, dataset, batch_size=4, device=cpu, zooms=(1.0,)), plain, atol=1e-6
    )
    zoomed = predict_tta(model, dataset, batch_size=4, device=cpu, zooms=(0.5,))
    both = predict_tta(model, dataset, batch_size=4, device=cpu, zooms=(1.0, 0.5))
    assert not np.allclose(zoomed, plain)
    np.testing.assert_allclose(both, (plain + zoomed) / 2, atol=1e-6)
