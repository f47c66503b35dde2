"""Build the DenseNet121 classifier and export it to ONNX: the file Triton serves.

The graph takes ``image`` float32 [N, 3, S, S] (ImageNet-normalised, see ``cxr_triage.imaging.preprocess``)
and returns ``probabilities`` float32 [N, 14] in ``cxr_triage.labels.LABELS`` order, the sigmoid inside the
graph so that every consumer reads probabilities, never logits.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import onnx
import torch
from torch import nn
from torchvision.models import densenet121

from cxr_triage.labels import LABELS, NUM_LABELS

logger = logging.getLogger(__name__)

INPUT_NAME: Final = "image"
OUTPUT_NAME: Final = "probabilities"
OPSET: Final = 17
ARCHITECTURE: Final = "densenet121"
UNTRAINED: Final = "untrained-random-init"
DEFAULT_SEED: Final = 20240601


class ProbabilityHead(nn.Module):
    """A multi-label backbone with the sigmoid folded in: the exported graph returns probabilities."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.backbone(image))


def build_densenet121(*, seed: int = DEFAULT_SEED) -> nn.Module:
    """DenseNet121 with random weights (no download) and a 14-output classifier, in eval mode."""
    torch.manual_seed(seed)
    backbone = densenet121(weights=None)
    backbone.classifier = nn.Linear(backbone.classifier.in_features, NUM_LABELS)
    return ProbabilityHead(backbone).eval()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: dict[str, str]
    seconds: float


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    input_size: int,
    weights: str,
    extra_metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Write ``model`` to ``path`` as ONNX (opset 17, dynamic batch) with ``cxr.*`` metadata."""
    started = time.perf_counter()
    example = torch.zeros(1, 3, input_size, input_size, dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (dynamo=False); its deprecation notice is noise here.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,  # the dynamo exporter is ~8x slower here and ignores opset 17 (STACK-NOTES)
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    metadata = {
        "cxr.weights": weights,
        "cxr.labels": json.dumps(list(LABELS)),
        "cxr.input_size": str(input_size),
        "cxr.architecture": ARCHITECTURE,
        "cxr.created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra_metadata or {}),
    }
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    seconds = time.perf_counter() - started
    logger.info(
        "exported ONNX model", extra={"input_size": input_size, "weights": weights, "seconds": seconds}
    )
    return ExportResult(path=path, metadata=metadata, seconds=seconds)


def export_untrained(path: Path, *, input_size: int, seed: int = DEFAULT_SEED) -> ExportResult:
    """Export a randomly initialised DenseNet121, labelled ``cxr.weights = untrained-random-init``."""
    return export_onnx(
        build_densenet121(seed=seed),
        path,
        input_size=input_size,
        weights=UNTRAINED,
        extra_metadata={"cxr.seed": str(seed)},
    )


def read_metadata(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}
