"""The upload guard reads the declared size from the header alone, DICOM as PNG, before anything is published."""

from __future__ import annotations

import pytest

from priority_queue_api.config import ApiPolicy
from priority_queue_api.errors import PayloadTooLarge
from priority_queue_api.uploads import check_upload, declared_dimensions
from tests.dicom_files import chest_pixels, radiograph, to_bytes
from tests.factories import png_bytes


def test_a_dicom_declaring_30000_by_30000_is_refused_before_it_is_decoded() -> None:
    ds = radiograph(chest_pixels(size=64))
    ds.Rows = ds.Columns = 30000  # the header claims 900 megapixels; the data is 64x64
    bomb = to_bytes(ds)
    assert declared_dimensions(bomb) == (30000, 30000)
    with pytest.raises(PayloadTooLarge, match="declares 30000x30000 pixels"):
        check_upload(bomb, ApiPolicy(max_upload_pixels=4096 * 4096))


def test_sizes_are_read_from_headers_and_unreadable_dicom_is_left_to_the_producer() -> None:
    ds = radiograph(chest_pixels(size=96))
    assert declared_dimensions(to_bytes(ds)) == (96, 96)
    assert declared_dimensions(png_bytes(seed=1, size=80)) == (80, 80)
    whole = to_bytes(ds)
    # A truncated header is not the guard's to judge: the producer path refuses it and dead-letters it.
    check_upload(whole[:200], ApiPolicy())
