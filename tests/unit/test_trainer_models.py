"""Networks, local pretrained weights, fine-tune modes, the masked loss, and the ONNX export parity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import densenet121

from trainer.export_model import export_trained, parity
from trainer.losses import loss_function, masked_asymmetric, masked_bce, masked_focal, positive_weights
from trainer.models import FineTune, ModelError, ModelSpec, build_model, count_parameters, servable


def _legacy_imagenet_file(folder: Path, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A state dict shaped like torchvision's ImageNet DenseNet121 file (old 'norm.1' keys, 1000 classes)."""
    torch.manual_seed(11)
    state = densenet121(weights=None).state_dict()
    legacy = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # the real file has none
        for part in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            if f".{part}." in key and "denselayer" in key:
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[key] = value
    path = folder / name
    torch.save(legacy, path)
    return path, state


def test_densenet_loads_imagenet_weights_from_a_local_file_and_keeps_a_new_head(tmp_path: Path) -> None:
    path, original = _legacy_imagenet_file(tmp_path, "densenet121-imagenet.pth")
    model = build_model(ModelSpec(weights=str(path), input_size=64))
    loaded = model.state_dict()
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(loaded[key], original[key])
    assert torch.equal(loaded["features.conv0.weight"], original["features.conv0.weight"])
    assert loaded["classifier.weight"].shape == (14, 1024)  # the 1000-class head is dropped
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 14)


def test_weights_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="weights file not found"):
        build_model(ModelSpec(weights=str(tmp_path / "absent.pth")))
    path, _ = _legacy_imagenet_file(
        tmp_path, "densenet121-deadbeef.pth"
    )  # hash in the name that does not match
    with pytest.raises(ModelError, match="does not match"):
        build_model(ModelSpec(weights=str(path)))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not a DenseNet121 checkpoint"):
        build_model(ModelSpec(weights=str(tmp_path / "other.pth")))


def test_vit_fine_tune_modes_train_decreasing_fractions() -> None:
    fractions = {}
    for mode in FineTune:
        model = build_model(ModelSpec("vit-tiny", finetune=mode, last_k=1, input_size=32))
        fractions[mode] = count_parameters(model).fraction
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 14)
    assert fractions[FineTune.FULL] == 1.0
    assert fractions[FineTune.LORA] < fractions[FineTune.LAST_K] < fractions[FineTune.FULL]
    assert fractions[FineTune.LORA] < 0.03


def test_lora_merge_keeps_the_function() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("vit-tiny", finetune=FineTune.LORA, input_size=32)).eval()
    with torch.no_grad():  # make the adapters non-trivial (B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
        images = torch.randn(2, 3, 32, 32)
        before = model(images)
        merged = servable(model).eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(images), before, atol=1e-5)


def test_masked_bce_ignores_masked_entries() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    a = masked_bce(logits, torch.tensor([[1.0, 0.0, 0.0]]), mask)
    b = masked_bce(logits, torch.tensor([[1.0, 1.0, 0.0]]), mask)  # only the masked target changed
    assert torch.equal(a, b)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, [0, 2]], torch.tensor([[1.0, 0.0]])
    )
    assert torch.allclose(a, expected)
    assert masked_bce(logits, torch.zeros(1, 3), torch.zeros(1, 3)) == 0  # nothing observed: no loss


def test_positive_weights_balance_observed_labels() -> None:
    targets = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 0], [1, 0]], dtype=np.float32)
    np.testing.assert_allclose(positive_weights(targets, mask), [3.0, 1.0])


@pytest.mark.parametrize("architecture", ["densenet121", "vit-tiny"])
def test_export_matches_pytorch_and_records_metadata(tmp_path: Path, architecture: str) -> None:
    torch.manual_seed(1)
    model = build_model(ModelSpec(architecture, input_size=64)).eval()
    exported = export_trained(
        model,
        tmp_path / "m.onnx",
        input_size=64,
        architecture=architecture,
        metadata={"cxr.threshold": "0.3"},
    )
    assert exported.metadata["cxr.threshold"] == "0.3"
    assert exported.metadata["cxr.architecture"] == architecture
    assert exported.metadata["cxr.cam"] == ("class-activation" if architecture == "densenet121" else "none")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 1, 64, 64), dtype=np.uint8)  # as Triton gets them
    assert parity(model, exported.path, pixels) <= 1e-4


def test_vit_loads_a_local_timm_checkpoint_at_another_input_size(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    source = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False
    )  # ImageNet shape: 1000 classes, 224 px
    torch.save(source.state_dict(), tmp_path / "vit_tiny.pth")
    model = build_model(ModelSpec("vit-tiny", weights=str(tmp_path / "vit_tiny.pth"), input_size=64))
    loaded = model.state_dict()
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], source.state_dict()["blocks.0.attn.qkv.weight"])
    assert loaded["pos_embed"].shape == (1, 1 + (64 // 16) ** 2, 192)  # resampled by timm for 64 px
    assert loaded["head.weight"].shape == (14, 192)


@pytest.mark.parametrize("architecture", ["resnet18", "resnet34", "efficientnet-b0"])
def test_new_cnns_give_14_logits_and_export_with_activation_maps(architecture: str, tmp_path: Path) -> None:
    model = build_model(ModelSpec(architecture=architecture, input_size=64)).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 14)
    exported = export_trained(
        model, tmp_path / "m.onnx", input_size=64, architecture=architecture, metadata={}
    )
    assert exported.metadata["cxr.architecture"] == architecture
    images = np.random.default_rng(1).integers(0, 256, (3, 1, 64, 64), dtype=np.uint8)
    assert parity(model, tmp_path / "m.onnx", images) <= 1e-4


def test_pretrained_weights_are_refused_where_no_loader_exists(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    with pytest.raises(ModelError, match="not resnet18"):
        build_model(ModelSpec(architecture="resnet18", weights=str(weights)))


def test_focal_and_asymmetric_losses_weigh_easy_entries_less_and_respect_the_mask() -> None:
    targets = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2)
    easy, hard = torch.tensor([[4.0, -4.0]]), torch.tensor([[-4.0, 4.0]])
    for loss in (masked_focal, masked_asymmetric):
        ratio_bce = float(masked_bce(hard, targets, mask) / masked_bce(easy, targets, mask))
        assert float(loss(hard, targets, mask) / loss(easy, targets, mask)) > ratio_bce
        # A masked entry changes nothing, whatever its target.
        only_first = torch.tensor([[1.0, 0.0]])
        assert float(loss(hard, targets, only_first)) == float(
            loss(hard, torch.tensor([[1.0, 1.0]]), only_first)
        )
    # ASL's probability shift: a negative below the clip (p < 0.05) gives exactly no loss.
    assert float(masked_asymmetric(torch.tensor([[-4.0]]), torch.zeros(1, 1), torch.ones(1, 1))) == 0.0
    assert loss_function("focal") is masked_focal and loss_function("bce") is masked_bce


def _clahe_like(gray: np.ndarray) -> np.ndarray:
    """A monotone contrast stretch, as contrast enhancement does to the grey levels (order is kept)."""
    return np.round(255 * (gray.astype(np.float64) / 255) ** 0.6).astype(np.uint8)


def test_equalisation_gives_an_image_the_same_input_whatever_monotone_contrast_it_went_through() -> None:
    from cxr_triage.imaging import normalise
    from trainer.models import HistogramEqualize

    gray = np.random.default_rng(2).integers(0, 128, (1, 1, 32, 32), dtype=np.uint8)  # 128 levels
    stretched = (gray.astype(np.uint16) * 2).astype(np.uint8)  # strictly increasing: no two levels merge
    equalize = HistogramEqualize()
    a, b = (equalize(torch.from_numpy(normalise(x))) for x in (gray, stretched))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(torch.from_numpy(normalise(gray)), torch.from_numpy(normalise(stretched)))
    # The output's grey levels are spread over the whole range: the image's own cumulative histogram.
    level = a[0, 0] * 0.229 + 0.485
    assert float(level.max()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(a[:, 0], a[:, 1] * 0.224 / 0.229 + (0.456 - 0.485) / 0.229, atol=1e-4)


def test_an_equalising_model_exports_with_its_equalisation_and_maps(tmp_path: Path) -> None:
    torch.manual_seed(3)
    spec = ModelSpec(architecture="resnet18", input_size=64, intensity="equalize")
    model = build_model(spec).eval()
    exported = export_trained(
        model,
        tmp_path / "m.onnx",
        input_size=64,
        architecture="resnet18",
        metadata={"cxr.intensity": "equalize"},
    )
    assert exported.metadata["cxr.cam"] == "class-activation"
    rng = np.random.default_rng(4)
    images = rng.integers(0, 200, (3, 1, 64, 64), dtype=np.uint8)
    assert parity(model, exported.path, images) <= 1e-4  # the served graph equalises as training did
    from trainer.export_model import onnx_probabilities, session

    served = onnx_probabilities(session(exported.path), images)
    brighter = onnx_probabilities(session(exported.path), _clahe_like(images))
    plain = build_model(ModelSpec(architecture="resnet18", input_size=64)).eval()
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith("features.0.")}  # the equaliser
    plain.load_state_dict({k.replace("features.1.", "features."): v for k, v in trunk.items()})
    export_trained(plain, tmp_path / "p.onnx", input_size=64, architecture="resnet18", metadata={})
    plain_a = onnx_probabilities(session(tmp_path / "p.onnx"), images)
    plain_b = onnx_probabilities(session(tmp_path / "p.onnx"), _clahe_like(images))
    # Contrast processing moves the plain network's scores, far less the equalising one's.
    assert np.abs(brighter - served).max() < np.abs(plain_b - plain_a).max() / 4


def test_equalisation_is_refused_for_a_vit() -> None:
    with pytest.raises(ModelError, match="intensity 'equalize'"):
        build_model(ModelSpec(architecture="vit-tiny", input_size=64, intensity="equalize"))
