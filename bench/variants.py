"""Model variants a benchmark can run: the exported FP32 file, or its INT8 (static QDQ) copy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from cxr_triage.model.export import export_untrained
from cxr_triage.model.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_static_qdq

logger = logging.getLogger(__name__)

Variant = Literal["fp32", "int8"]
VARIANTS: Final[tuple[str, ...]] = ("fp32", "int8")


def exported_fp32(folder: Path, *, input_size: int) -> Path:
    """The untrained DenseNet121 exactly as ``cxr-triage model init`` exports it (same seed), into ``folder``."""
    path = folder / f"densenet121-fp32-{input_size}.onnx"
    if not path.is_file():
        export_untrained(path, input_size=input_size)
    return path


def model_for(
    variant: str, fp32_path: Path, folder: Path, *, input_size: int, calibration: Sequence[Path]
) -> Path:
    """``fp32_path`` itself, or an INT8 copy of it in ``folder`` calibrated on ``calibration``."""
    if variant == "fp32":
        return fp32_path
    int8_path = folder / f"{fp32_path.stem}-int8.onnx"
    if int8_path.is_file():  # quantised earlier in this run (same file, same calibration images)
        return int8_path
    quantize_static_qdq(fp32_path, int8_path, calibration[:DEFAULT_CALIBRATION_IMAGES], input_size)
    return int8_path
