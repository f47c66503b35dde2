"""DICOM pixel handling through pydicom's handlers: LUTs, windows, bit depths, transfer syntaxes, refusals.

Every file is made from a real sample radiograph (``tests.dicom_files``); a decode is judged by how closely
it matches the radiograph it was made from (Pearson r), bone bright.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from cxr_triage.imaging import ImageRejected, decode_grayscale
from tests.dicom_files import CT_IMAGE, chest_pixels, encoded, radiograph, syntax_of, to_bytes


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return chest_pixels(bits=12)


def test_monochrome2_twelve_bit_decodes_to_the_radiograph(truth: np.ndarray) -> None:
    gray = decode_grayscale(to_bytes(radiograph(truth)))
    assert gray.dtype == np.uint8 and gray.shape == truth.shape
    assert _r(gray, truth) > 0.999 and gray.min() == 0 and gray.max() == 255


def test_sixteen_bit_data_keeps_its_full_range(truth: np.ndarray) -> None:
    sixteen = (truth.astype(np.uint32) * 16 + 15).astype(np.uint16)
    gray = decode_grayscale(to_bytes(radiograph(sixteen, bits_stored=16)))
    assert _r(gray, truth) > 0.999


def test_monochrome1_is_inverted_so_bone_stays_bright(truth: np.ndarray) -> None:
    stored = (4095 - truth).astype(np.uint16)  # MONOCHROME1: the minimum is white
    gray = decode_grayscale(to_bytes(radiograph(stored, photometric="MONOCHROME1")))
    assert _r(gray, truth) > 0.999


def test_rescale_slope_and_intercept_are_applied_before_windowing(truth: np.ndarray) -> None:
    # Stored values are the truth upside down; a negative slope turns them back (a Modality LUT).
    stored = (4095 - truth).astype(np.uint16)
    gray = decode_grayscale(to_bytes(radiograph(stored, RescaleSlope="-1", RescaleIntercept="4095")))
    assert _r(gray, truth) > 0.999


def test_a_window_clips_what_lies_outside_it(truth: np.ndarray) -> None:
    ds = radiograph(truth, WindowCenter="2048", WindowWidth="1024")
    gray = decode_grayscale(to_bytes(ds))
    below, above = truth < 1536, truth >= 2560
    assert below.any() and above.any()
    assert (gray[below] == 0).all() and (gray[above] == 255).all()
    inside = ~below & ~above
    assert _r(gray[inside], truth[inside]) > 0.99


def test_a_voi_lut_sequence_is_applied(truth: np.ndarray) -> None:
    item = Dataset()
    # A LUT that maps stored value v to 4095 - v: a viewer would show the image inverted, and so do we.
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = list(range(4095, -1, -1))
    item["LUTData"].VR = "US"
    ds = radiograph(truth)
    ds.VOILUTSequence = Sequence([item])
    gray = decode_grayscale(to_bytes(ds))
    assert _r(gray, truth) < -0.999


@pytest.mark.parametrize(
    ("syntax", "min_r"),
    [(RLELossless, 0.999), (JPEG2000Lossless, 0.999), (JPEGBaseline8Bit, 0.99), (JPEGLSLossless, 0.999)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_compressed_transfer_syntaxes_decode(truth: np.ndarray, syntax, min_r: float) -> None:  # type: ignore[no-untyped-def]
    if syntax == JPEGLSLossless and shutil.which("dcmcjpls") is None:
        pytest.fail("dcmtk's dcmcjpls is missing: run `make setup` (it installs dcmtk)")
    data = encoded(radiograph(truth), syntax)
    assert syntax_of(data) == syntax
    assert _r(decode_grayscale(data), truth) > min_r


def test_multi_frame_is_refused_with_a_reason(truth: np.ndarray) -> None:
    frames = np.stack([truth, truth])
    ds = radiograph(truth)
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    with pytest.raises(ImageRejected, match=r"multi-frame DICOM \(2 frames\) is not taken") as refused:
        decode_grayscale(to_bytes(ds))
    assert refused.value.kind == "unsupported"


def test_ct_and_missing_pixels_and_truncation_are_refused(truth: np.ndarray) -> None:
    with pytest.raises(ImageRejected, match="'CT' is not a radiograph"):
        decode_grayscale(to_bytes(radiograph(truth, sop_class=CT_IMAGE, modality="CT")))
    ds = radiograph(truth)
    del ds.PixelData
    with pytest.raises(ImageRejected, match="no pixel data"):
        decode_grayscale(to_bytes(ds))
    whole = to_bytes(radiograph(truth))
    with pytest.raises(ImageRejected, match=r"cannot be decoded|unreadable DICOM"):
        decode_grayscale(whole[: len(whole) - 5000])


def test_a_decompression_bomb_is_refused_from_its_header_alone() -> None:
    ds = radiograph(chest_pixels(size=64))
    ds.Rows = ds.Columns = 30000  # the header claims 900 megapixels; the data is 64x64
    with pytest.raises(ImageRejected, match="30000x30000, over the") as refused:
        decode_grayscale(to_bytes(ds))
    assert refused.value.kind == "too_large"
