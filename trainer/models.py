"""The networks: CNNs from torchvision (DenseNet121, ResNet-18/34, EfficientNet-B0) and ViT (timm), each
returning 14 logits, and how much of them trains.

Every CNN exposes ``features`` (the convolutional trunk) and ``classifier`` (the 14-output head after global
average pooling), the layout the ONNX export turns into class activation maps.

Pretrained weights come only from a local file (no hub downloads): torchvision's ImageNet DenseNet121 file
(its legacy ``norm.1``-style keys are renamed as torchvision itself does), a CheXpert checkpoint with a
14-output classifier, or any timm ViT checkpoint (loaded by timm, which resizes position embeddings).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

import torch
from torch import nn
from torchvision.models import densenet121, efficientnet_b0, resnet18, resnet34

from cxr_triage.imaging import IMAGENET_MEAN, IMAGENET_STD
from cxr_triage.labels import NUM_LABELS
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

VIT_NAMES: Final[dict[str, str]] = {
    "vit-tiny": "vit_tiny_patch16_224",
    "vit-base": "vit_base_patch16_224",
    "vit-large": "vit_large_patch16_224",
}
CNNS: Final[tuple[str, ...]] = ("densenet121", "resnet18", "resnet34", "efficientnet-b0")
ARCHITECTURES: Final[tuple[str, ...]] = (*CNNS, *VIT_NAMES)
# torchvision's DenseNet checkpoints predate the ban on '.' in module names ('norm.1' -> 'norm1').
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.(?:pth|pt)$")
Intensity = Literal["none", "equalize"]


class FineTune(StrEnum):
    FULL = "full"
    LAST_K = "last-k"  # only the last k blocks, the final norm and the head train
    LORA = "lora"  # low-rank adapters on attention (peft); the head trains in full


class ModelError(TrainerError, ValueError):
    """A model cannot be built as asked (unknown architecture, bad weights file, missing library)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same network (stored beside every checkpoint)."""

    architecture: str = "densenet121"
    weights: str | None = None  # a local file; None = random initialisation
    finetune: FineTune = FineTune.FULL
    last_k: int = 2
    lora_rank: int = 8
    lora_alpha: int = 16
    input_size: int = 224
    intensity: Intensity = "none"  # "equalize": HistogramEqualize is the network's first layer

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "finetune": self.finetune.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{**data, "finetune": FineTune(data["finetune"])})


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module) -> ParameterCount:
    params = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def _check_hash(path: Path) -> None:
    # torch.hub's convention: a file named name-<sha256 prefix>.pth carries its own checksum.
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(match.group(1)):
        raise ModelError(f"{path.name}: sha256 {digest[:12]}... does not match the name's {match.group(1)}")


def load_densenet_weights(model: nn.Module, path: Path) -> None:
    """Load ImageNet (1000 classes: the head is dropped) or 14-label DenseNet121 weights from ``path``."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    _check_hash(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        match = _LEGACY_DENSE_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    if renamed.get("classifier.weight", torch.empty(0)).shape[:1] != (NUM_LABELS,):
        renamed = {k: v for k, v in renamed.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    # torchvision's file predates BatchNorm's num_batches_tracked counters: those may be missing.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise ModelError(
            f"{path.name} is not a DenseNet121 checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    logger.info("densenet121 weights loaded", extra={"file": path.name, "head_kept": not missing})


def _densenet(spec: ModelSpec) -> nn.Module:
    model = densenet121(weights=None)
    model.classifier = nn.Linear(model.classifier.in_features, NUM_LABELS)
    if spec.weights:
        load_densenet_weights(model, Path(spec.weights))
    return model


class ResNetClassifier(nn.Module):
    """torchvision's ResNet as ``features -> global average pool -> classifier`` (its ``fc``)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        net = (resnet18 if depth == 18 else resnet34)(weights=None)
        self.features = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.classifier = nn.Linear(net.fc.in_features, NUM_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x).mean(dim=(2, 3)))
        return logits


class HistogramEqualize(nn.Module):
    """Global histogram equalisation of each image, as the first layer of the network (so also of the export).

    The MHH source's images were contrast-enhanced before release and every one of them is abnormal, so a
    network can score "abnormal" from the look of the contrast alone. Mapping each image's grey levels through
    its own cumulative histogram gives every image about the same grey-level distribution whatever contrast
    processing it had, at training and at serving time alike. Whether that takes the shortcut away is measured
    (``trainer.shortcut``, docs/experiments.md), not assumed. The input is the ImageNet-normalised grey image
    (``cxr_triage.imaging.normalise``); its 8-bit levels are recovered exactly, equalised, and normalised
    again. No parameters, and every op (scatter-add, cumulative sum, gather) exports to ONNX, so the served
    graph needs no preprocessing outside it.
    """

    mean: torch.Tensor
    std: torch.Tensor
    LEVELS: Final = 256

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(IMAGENET_MEAN.copy()).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.from_numpy(IMAGENET_STD.copy()).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x[:, :1] * self.std[:, :1] + self.mean[:, :1]
        levels = (grey * 255.0).round().clamp(0, self.LEVELS - 1).to(torch.int64).flatten(1)
        counts = x.new_zeros((x.shape[0], self.LEVELS)).scatter_add(
            1, levels, torch.ones_like(levels, dtype=x.dtype)
        )
        cdf = counts.cumsum(1) / levels.shape[1]
        equalized = cdf.gather(1, levels).reshape(grey.shape)
        return (equalized.expand(-1, 3, -1, -1) - self.mean) / self.std


def _with_intensity(model: nn.Module, spec: ModelSpec) -> nn.Module:
    if spec.intensity == "none":
        return model
    features = getattr(model, "features", None)
    if spec.architecture not in CNNS or not isinstance(features, nn.Module):
        raise ModelError(f"intensity {spec.intensity!r} is offered for the CNNs ({', '.join(CNNS)})")
    # Inside ``features``, so the export's class-activation path (features -> classifier) keeps it.
    model.features = nn.Sequential(HistogramEqualize(), features)
    return model


def _cnn(spec: ModelSpec) -> nn.Module:
    if spec.architecture == "densenet121":
        return _densenet(spec)
    if spec.weights:
        raise ModelError(f"pretrained weights are supported for densenet121 and ViT, not {spec.architecture}")
    if spec.architecture.startswith("resnet"):
        return ResNetClassifier(int(spec.architecture.removeprefix("resnet")))
    model = efficientnet_b0(weights=None)
    last = model.classifier[-1]
    assert isinstance(last, nn.Linear)
    model.classifier[-1] = nn.Linear(last.in_features, NUM_LABELS)
    return model


def _vit(spec: ModelSpec) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ModelError("ViT models need timm (pip install timm==1.0.31)") from exc
    name = VIT_NAMES[spec.architecture]
    if spec.input_size % 16:
        raise ModelError(f"ViT input size must be a multiple of the 16-pixel patch, got {spec.input_size}")
    kwargs: dict[str, Any] = {"num_classes": NUM_LABELS, "img_size": spec.input_size}
    if spec.weights:
        if not Path(spec.weights).is_file():
            raise ModelError(f"weights file not found: {spec.weights}")
        # timm's own loader: drops a mismatched head, resamples position embeddings to img_size.
        kwargs |= {"pretrained": True, "pretrained_cfg_overlay": {"file": str(spec.weights)}}
    model: nn.Module = timm.create_model(name, **kwargs)
    return model


def _freeze_all_but_tail(model: nn.Module, k: int) -> None:
    blocks = getattr(model, "blocks", None) or getattr(model, "features", None)
    if blocks is None:
        raise ModelError(f"{type(model).__name__} has no block list for last-k fine-tuning")
    for param in model.parameters():
        param.requires_grad = False
    tail: list[nn.Module] = list(blocks)[-k:] if k > 0 else []
    tail += [
        m
        for name in ("norm", "fc_norm", "head", "classifier")
        if isinstance(m := getattr(model, name, None), nn.Module)
    ]
    for module in tail:
        for param in module.parameters():
            param.requires_grad = True


def _lora(model: nn.Module, spec: ModelSpec) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ModelError("LoRA needs peft (pip install peft==0.21.2)") from exc
    if not spec.architecture.startswith("vit"):
        raise ModelError("LoRA is offered for the ViT models (attention projections 'qkv')")
    config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        target_modules=["qkv"],  # timm ViT fuses q, k and v into one Linear
        lora_dropout=0.0,
        modules_to_save=["head"],  # the 14-label head is new: it must train in full
    )
    peft_model: nn.Module = get_peft_model(model, config)
    return peft_model


def build_model(spec: ModelSpec) -> nn.Module:
    """The network for ``spec``, returning logits [N, 14], with ``requires_grad`` set per fine-tune mode."""
    if spec.architecture not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {spec.architecture!r}; choose from {', '.join(ARCHITECTURES)}"
        )
    model = _cnn(spec) if spec.architecture in CNNS else _vit(spec)
    if spec.finetune is FineTune.LAST_K:
        _freeze_all_but_tail(model, spec.last_k)
    elif spec.finetune is FineTune.LORA:
        model = _lora(model, spec)
    return _with_intensity(model, spec)


def servable(model: nn.Module) -> nn.Module:
    """The plain network to export: LoRA adapters merged into the weights, peft wrappers removed."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model
