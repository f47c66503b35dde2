"""Challengers of known quality on the public set, for the online-evaluation tests: ONNX models under the
served contract (uint8 pixels in, 14 probabilities and maps out, threshold in the metadata).

Each is a logistic regression on the image pooled to 16x16, fitted on the public set with scikit-learn. Its
scores are in-sample, so its AUROC there is an upper bound, not a claim about a model: what matters to the
tests is only that the "better" one ranks the set's studies clearly better than the untrained champion, the
"worse" one (the same weights negated) clearly worse, and the "broken" one calls nothing abnormal.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from cxr_triage.imaging import decode_grayscale, resize_gray
from cxr_triage.labels import LABELS, NO_FINDING
from cxr_triage.model.export import GrayscaleInput, export_model

DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cxr-public"
SIDE = 64
POOLED = 16
_ABSENT = -20.0  # the findings' logits: sigmoid(-20) ~ 2e-9, so the priority is 1 - p(No Finding)


class PooledLogistic(nn.Module):
    """logit z = w . pool16(image) + b; p(No Finding) = sigmoid(-z), every finding ~0: priority = sigmoid(z)."""

    def __init__(self, weight: np.ndarray, bias: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(POOLED)
        self.linear = nn.Linear(POOLED * POOLED, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)).reshape(1, -1))
            self.linear.bias.fill_(float(bias))

    def pooled(self, image: torch.Tensor) -> torch.Tensor:
        return self.pool(image[:, :1]).flatten(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        z = self.linear(self.pooled(image))
        absent = z * 0.0 + _ABSENT
        return torch.cat([-z if label == NO_FINDING else absent for label in LABELS], dim=1)


@dataclass(frozen=True)
class PublicStudy:
    path: Path
    abnormal: bool
    labels: dict[str, int]  # the set's CheXpert labels as a radiologist files them: 1 / 0
    uncertain: tuple[str, ...]  # those the set marks -1

    def verdict(self) -> dict[str, object]:
        """The body of ``POST /studies/{id}/verdict`` that files the set's own reading of the study."""
        return {"labels": self.labels, "uncertain": list(self.uncertain)}


def _study(row: dict[str, str]) -> PublicStudy:
    values = {label: float((row[label] or "0").strip()) for label in LABELS}
    study = PublicStudy(
        path=DATASET / row["Path"],
        abnormal=row["abnormal"] == "1",
        labels={label: int(v == 1.0) for label, v in values.items()},
        uncertain=tuple(label for label, v in values.items() if v == -1.0),
    )
    # The set's "abnormal" is what a verdict's labels say (normal only when No Finding is ticked).
    assert study.abnormal == (study.labels[NO_FINDING] == 0), row["Path"]
    return study


def public_studies() -> list[PublicStudy]:
    labels_csv = DATASET / "labels.csv"
    assert labels_csv.exists(), f"the public sample set is missing: {DATASET} (see ../shared/datasets)"
    with labels_csv.open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["Path"])
    return [_study(row) for row in rows]


def _pixels(paths: list[Path]) -> torch.Tensor:
    """What the worker sends Triton: the decoded image resized to the model's side, uint8 [N, 1, S, S]."""
    return torch.from_numpy(np.stack([resize_gray(decode_grayscale(p.read_bytes()), SIDE) for p in paths]))


@dataclass(frozen=True)
class FittedChallengers:
    better: Path
    worse: Path
    broken: Path
    in_sample_auroc: float


def _export(model: nn.Module, path: Path, *, threshold: float, kind: str) -> Path:
    metadata = {
        "cxr.weights": f"test-pooled-logistic-{kind}",
        "cxr.threshold": f"{threshold:.6f}",
        "cxr.tier.urgent": f"{threshold:.6f}",
        "cxr.tier.critical": f"{max(threshold, 0.9):.6f}",
    }
    return export_model(model, path, input_size=SIDE, metadata=metadata)


def fit_challengers(studies: list[PublicStudy], folder: Path) -> FittedChallengers:
    """Fit on ``studies``; export the better, worse (negated) and broken (constant) challengers to ``folder``."""
    truth = np.array([s.abnormal for s in studies], dtype=np.int64)
    probe = PooledLogistic(np.zeros(POOLED * POOLED), 0.0)
    with torch.no_grad():
        features = probe.pooled(GrayscaleInput()(_pixels([s.path for s in studies]))).numpy()
    fitted = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000).fit(features, truth)
    weight, bias = fitted.coef_[0], float(fitted.intercept_[0])
    scores = fitted.predict_proba(features)[:, 1]

    def at_sensitivity(values: np.ndarray, target: float = 0.9) -> float:
        return float(np.quantile(values[truth == 1], 1.0 - target))

    folder.mkdir(parents=True, exist_ok=True)
    return FittedChallengers(
        better=_export(
            PooledLogistic(weight, bias),
            folder / "better.onnx",
            threshold=at_sensitivity(scores),
            kind="better",
        ),
        worse=_export(
            PooledLogistic(-weight, -bias),
            folder / "worse.onnx",
            threshold=at_sensitivity(1.0 - scores),
            kind="worse",
        ),
        broken=_export(
            PooledLogistic(np.zeros_like(weight), _ABSENT),
            folder / "broken.onnx",
            threshold=0.5,
            kind="broken",
        ),
        in_sample_auroc=float(roc_auc_score(truth, scores)),
    )
