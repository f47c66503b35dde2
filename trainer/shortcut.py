"""How well an image's look alone tells its source: the MHH shortcut, measured without training a network.

Every MHH study is abnormal, and MHH's images were contrast-enhanced before release, so a network can score
"abnormal" from the contrast processing instead of the disease. The probe compares abnormal studies only
(disease cannot explain what it finds) and asks a logistic regression to tell the all-abnormal source from the
others, on two kinds of feature:

- ``grey levels``: the 32-bin histogram of the image's grey levels (global contrast processing);
- ``local contrast``: the histogram of the grey-level standard deviation in 8 x 8-pixel blocks and of the
  gradient magnitude (the local signature of CLAHE-like enhancement).

Each is measured on the pixels a served model receives (resized to ``size``) and after the trainer's
``HistogramEqualize`` layer, the same module the ``--intensity equalize`` recipe trains and serves with. The
score is the patient-grouped cross-validated AUROC: 0.5 means the source cannot be told from those features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr_triage.imaging import IMAGENET_MEAN, IMAGENET_STD, decode_grayscale, normalise, resize_gray
from trainer.data.manifest import Manifest
from trainer.models import HistogramEqualize

GREY_BINS: Final = 32
LOCAL_BINS: Final = 16
BLOCK: Final = 8


@dataclass(frozen=True)
class ProbeResult:
    source: str
    n_source: int
    n_other: int
    auroc: dict[str, dict[str, float]]  # {view: {feature: cross-validated AUROC}}


def equalised(pixels: np.ndarray) -> np.ndarray:
    """[N, 1, S, S] uint8 -> the same pixels after ``HistogramEqualize``, as grey levels in [0, 1]."""
    with torch.no_grad():
        out = HistogramEqualize()(torch.from_numpy(normalise(pixels))).numpy()
    return np.asarray(out[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], dtype=np.float64)


def features(grey: np.ndarray) -> dict[str, np.ndarray]:
    """[N, S, S] grey levels in [0, 1] -> {feature kind: [N, d]} (histograms, each row summing to 1)."""
    n, side, _ = grey.shape
    cells = side // BLOCK
    blocks = grey[:, : cells * BLOCK, : cells * BLOCK].reshape(n, cells, BLOCK, cells, BLOCK)
    local_sd = blocks.std(axis=(2, 4)).reshape(n, -1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    gradient = np.hypot(gx, gy).reshape(n, -1)

    def hist(values: np.ndarray, bins: int, top: float) -> np.ndarray:
        edges = np.linspace(0.0, top, bins + 1)
        counts = np.stack([np.histogram(np.clip(row, 0, top), bins=edges)[0] for row in values])
        return counts / counts.sum(axis=1, keepdims=True)

    return {
        "grey levels": hist(grey.reshape(n, -1), GREY_BINS, 1.0),
        "local contrast": np.hstack([hist(local_sd, LOCAL_BINS, 0.25), hist(gradient, LOCAL_BINS, 0.25)]),
    }


def _cv_auroc(x: np.ndarray, y: np.ndarray, groups: Sequence[str], *, seed: int) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, groups=groups, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def probe(manifest: Manifest, *, size: int = 128, seed: int = 0) -> ProbeResult:
    """The cross-validated AUROC of telling the all-abnormal source from the others among abnormal studies."""
    abnormal = manifest.abnormal() == 1
    sources = np.array(manifest.sources())
    shares = {s: float(abnormal[sources == s].mean()) for s in set(sources)}
    target = max(sorted(shares), key=lambda s: shares[s])
    rows = np.flatnonzero(abnormal)
    if len(shares) < 2 or len(set(sources[rows])) < 2:
        raise ValueError("the probe needs abnormal studies from at least two sources")
    examples = [manifest.examples[i] for i in rows]
    pixels = np.stack([resize_gray(decode_grayscale(e.path.read_bytes()), size) for e in examples])
    y = (sources[rows] == target).astype(int)
    groups = [e.patient_id for e in examples]
    views = {"as served": pixels[:, 0].astype(np.float64) / 255.0, "equalised": equalised(pixels)}
    auroc = {
        view: {kind: _cv_auroc(x, y, groups, seed=seed) for kind, x in features(grey).items()}
        for view, grey in views.items()
    }
    return ProbeResult(target, int(y.sum()), int(len(y) - y.sum()), auroc)
