"""Export a 14-finding classifier to ONNX: the file Triton serves, with class activation maps beside the scores.

The graph takes ``image`` uint8 [N, 1, S, S]: the stored greyscale pixels resized to the model's own S. Scaling,
ImageNet normalisation and the expansion to three channels happen inside the graph (``GrayscaleInput``, the
twin of ``cxr_triage.imaging.normalise``), so a study crosses gRPC (and, on a GPU, PCIe) as S*S bytes instead of
12*S*S, and no caller has to know the model's preprocessing. S and the model's thresholds are in its metadata
(``cxr_triage.model.contract``). It returns

- ``probabilities`` float32 [N, 14] in ``cxr_triage.labels.LABELS`` order (sigmoid inside the graph, so every
  consumer reads probabilities, never logits);
- ``cams`` float32 [N, 14, h, w], h = w = S / 32: class activation maps (Zhou et al., 2016). For a network
  that ends in ``features -> ReLU -> global average pool -> Linear classifier`` (torchvision's DenseNet121),
  ``cams[n, k] = W[k] . relu(features(x))[n] + b[k]`` at every location, so the spatial mean of a map equals
  that finding's logit. The maps are raw (not normalised): the worker scales each one to [0, 1] before it
  stores it. A model without that structure (a ViT, say) gets maps of zeros, which the worker reads as "no
  maps" and does not store.

The CAM costs one 1x1 convolution of the last feature maps (14 x 1024 x 7 x 7 multiply-adds at 224 px):
negligible next to the network; docs/serving.md has the measurement.
"""

from __future__ import annotations

import copy
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
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet121

from cxr_triage.imaging import IMAGENET_MEAN, IMAGENET_STD
from cxr_triage.labels import LABELS, NUM_LABELS
from cxr_triage.model.contract import INPUT_FORMAT, INPUT_FORMAT_KEY, INPUT_SIZE_KEY

logger = logging.getLogger(__name__)

INPUT_NAME: Final = "image"
OUTPUT_NAME: Final = "probabilities"
CAM_OUTPUT_NAME: Final = "cams"
OPSET: Final = 17
CAM_STRIDE: Final = 32  # DenseNet121 (and most ImageNet CNNs) downsample by 32 before the classifier
ARCHITECTURE: Final = "densenet121"
UNTRAINED: Final = "untrained-random-init"
DEFAULT_SEED: Final = 20240601
CAM_CLASS_ACTIVATION: Final = "class-activation"
CAM_NONE: Final = "none"
_CAM_CHECK_TOLERANCE: Final = 1e-4


class GrayscaleInput(nn.Module):
    """uint8 [N, 1, S, S] -> float [N, 3, S, S] ImageNet-normalised: ``cxr_triage.imaging.normalise`` in the graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(IMAGENET_MEAN.copy()).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.from_numpy(IMAGENET_STD.copy()).reshape(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        scaled = pixels.to(torch.float32) / 255.0
        return (scaled.expand(-1, 3, -1, -1) - self.mean) / self.std


class ServedGraph(nn.Module):
    """What is exported: the stored pixels in, the graph's normalisation, then probabilities and maps."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.input = GrayscaleInput()
        self.graph = graph

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result: tuple[torch.Tensor, torch.Tensor] = self.graph(self.input(pixels))
        return result


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


class ClassActivationGraph(nn.Module):
    """``features -> ReLU`` shared by the scores (pool, classifier, sigmoid) and the maps (1x1 classifier)."""

    def __init__(self, features: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = F.relu(self.features(image))
        logits = self.classifier(maps.mean(dim=(2, 3)))
        weight = self.classifier.weight[:, :, None, None]
        cams = F.conv2d(maps, weight, self.classifier.bias)
        return torch.sigmoid(logits), cams


class ZeroMapGraph(nn.Module):
    """Any logits model: its own forward for the scores, and all-zero maps (it has no CAM path)."""

    def __init__(self, model: nn.Module, cam_side: int) -> None:
        super().__init__()
        self.model = model
        self.cam_side = cam_side

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        # Shaped from the logits so the batch axis stays dynamic in the exported graph.
        cams = torch.zeros_like(logits)[:, :, None, None] * image.new_zeros(
            1, 1, self.cam_side, self.cam_side
        )
        return torch.sigmoid(logits), cams


def _linear_classifier(module: nn.Module | None) -> nn.Linear | None:
    """The classifier as one Linear layer (a Sequential of dropout/identity then a Linear counts too)."""
    if isinstance(module, nn.Sequential) and len(module) > 0:
        *head, last = list(module)
        if all(isinstance(layer, nn.Dropout | nn.Identity) for layer in head):
            module = last
    if isinstance(module, nn.Linear) and module.out_features == NUM_LABELS:
        return module
    return None


def _logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    logits = model(image)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(image), NUM_LABELS):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape [N, {NUM_LABELS}], got {shape}")
    return logits


def export_graph(model: nn.Module, *, input_size: int) -> tuple[nn.Module, str]:
    """The module to export and how it makes maps (``class-activation`` or ``none``).

    ``model`` returns logits [N, 14] (a ``ProbabilityHead`` is unwrapped to its backbone). The CAM path is
    used only if it reproduces the model's own scores on a test input, so a model whose ``features`` and
    ``classifier`` are wired differently is still exported correctly, without maps.
    """
    if isinstance(model, ProbabilityHead):
        model = model.backbone
    probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.sigmoid(_logits(model, probe))
        features = getattr(model, "features", None)
        classifier = _linear_classifier(getattr(model, "classifier", None))
        if isinstance(features, nn.Module) and classifier is not None:
            graph = ClassActivationGraph(features, classifier).eval()
            probabilities, cams = graph(probe)
            error = float((probabilities - expected).abs().max())
            if error <= _CAM_CHECK_TOLERANCE and cams.shape[1] == NUM_LABELS:
                return graph, CAM_CLASS_ACTIVATION
            logger.warning(
                "features + classifier do not reproduce the model's scores; exporting without maps",
                extra={"max_abs_error": error},
            )
    return ZeroMapGraph(model, max(1, input_size // CAM_STRIDE)).eval(), CAM_NONE


def export_model(model: nn.Module, path: Path, *, input_size: int, metadata: dict[str, str]) -> Path:
    """Write a 14-logit classifier to ``path`` as ONNX (opset 17, uint8 pixels in, dynamic batch) with metadata.

    ``metadata`` (e.g. ``cxr.weights``, a training run id) is stored in the file's metadata properties;
    the facts of the graph itself (labels, input size, architecture, maps, creation time) are added.
    The caller's module is not modified: a CPU copy in eval mode is exported.
    """
    started = time.perf_counter()
    source = copy.deepcopy(model).cpu().eval()
    graph, cam_kind = export_graph(source, input_size=input_size)
    served = ServedGraph(graph).eval()
    example = torch.zeros(1, 1, input_size, input_size, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (dynamo=False); its deprecation notice is noise here.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            served,
            (example,),
            str(path),
            dynamo=False,  # the dynamo exporter is ~8x slower here and ignores opset 17 (STACK-NOTES)
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, CAM_OUTPUT_NAME],
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, OUTPUT_NAME, CAM_OUTPUT_NAME)},
            do_constant_folding=True,
        )
    inner = source.backbone if isinstance(source, ProbabilityHead) else source
    props = {
        "cxr.architecture": type(inner).__name__.lower(),
        **metadata,
        "cxr.labels": json.dumps(list(LABELS)),
        INPUT_SIZE_KEY: str(input_size),
        INPUT_FORMAT_KEY: INPUT_FORMAT,
        "cxr.cam": cam_kind,
        "cxr.created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    logger.info(
        "exported ONNX model",
        extra={"input_size": input_size, "cam": cam_kind, "seconds": round(time.perf_counter() - started, 2)},
    )
    return path


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
    """``export_model`` with ``cxr.weights`` set, reporting the metadata written and the time taken."""
    started = time.perf_counter()
    export_model(
        model, path, input_size=input_size, metadata={"cxr.weights": weights, **(extra_metadata or {})}
    )
    return ExportResult(path=path, metadata=read_metadata(path), seconds=time.perf_counter() - started)


def export_untrained(path: Path, *, input_size: int, seed: int = DEFAULT_SEED) -> ExportResult:
    """Export a randomly initialised DenseNet121, labelled ``cxr.weights = untrained-random-init``."""
    return export_onnx(
        build_densenet121(seed=seed),
        path,
        input_size=input_size,
        weights=UNTRAINED,
        extra_metadata={"cxr.seed": str(seed), "cxr.architecture": ARCHITECTURE},
    )


def read_metadata(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}
