"""Fixtures shared by unit and integration tests: sample data location and generated images."""

from __future__ import annotations

from pathlib import Path

import pytest

# The keys issue 3 names as the contract of `cxr-triage bench pipeline --json`.
PIPELINE_JSON_KEYS = frozenset(
    {
        "raw_images_per_s",
        "pipeline_studies_per_s",
        "ratio",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "n",
        "lost",
        "duplicated",
    }
)

PUBLIC_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cxr-public"


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """20 real public radiographs when the shared set is present, else 20 generated ones."""
    images = PUBLIC_DATA / "images"
    if images.is_dir():
        return sorted(images.glob("*.jpg"))[:20]
    from producers.sample_images import write_samples

    return write_samples(tmp_path_factory.mktemp("synthetic"), n=20)
