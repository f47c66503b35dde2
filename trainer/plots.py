"""ROC-curve PNGs (matplotlib, no display): one per label with both classes, and abnormal vs normal."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display, also inside Ray workers

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from cxr_triage.labels import LABELS
from trainer.metrics import Report, abnormal_score


def _curve(ax: plt.Axes, truth: np.ndarray, score: np.ndarray, title: str, auc: float) -> None:
    known = ~np.isnan(truth)
    fpr, tpr, _ = roc_curve(truth[known], score[known])
    ax.plot(fpr, tpr, lw=1.5)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set_title(f"{title} (AUROC {auc:.3f})", fontsize=8)
    ax.set_xlabel("1 - specificity", fontsize=7)
    ax.set_ylabel("sensitivity", fontsize=7)
    ax.tick_params(labelsize=6)


def roc_pngs(
    probabilities: np.ndarray, truth: np.ndarray, abnormal: np.ndarray, result: Report, folder: Path
) -> list[Path]:
    """Write ``roc_abnormal.png`` (with the operating point) and ``roc_labels.png``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if not math.isnan(result.auroc_abnormal):
        fig, ax = plt.subplots(figsize=(4, 4))
        _curve(ax, abnormal, abnormal_score(probabilities), "abnormal vs normal", result.auroc_abnormal)
        op = result.operating
        if not math.isnan(op.sensitivity) and not math.isnan(op.specificity):
            ax.plot(
                [1 - op.specificity],
                [op.sensitivity],
                "o",
                color="red",
                label=f"threshold {op.threshold:.3f}",
            )
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(folder / "roc_abnormal.png", dpi=100)
        plt.close(fig)
        written.append(folder / "roc_abnormal.png")
    labels = [label for label in LABELS if label in result.auroc_per_label]
    if labels:
        cols = 4
        rows = math.ceil(len(labels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for ax, label in zip(axes.flat, labels, strict=False):
            index = LABELS.index(label)
            _curve(ax, truth[:, index], probabilities[:, index], label, result.auroc_per_label[label])
        for ax in list(axes.flat)[len(labels) :]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(folder / "roc_labels.png", dpi=90)
        plt.close(fig)
        written.append(folder / "roc_labels.png")
    return written
