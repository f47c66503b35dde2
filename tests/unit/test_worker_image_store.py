"""The content-addressed local image store (cxr_triage.image_store)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cxr_triage.image_store import ImageNotFound, ImageURIRefused, LocalImageStore, open_image_store
from cxr_triage.settings import Settings


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "images")
    data = b"\x89PNG fake image bytes"
    sha = hashlib.sha256(data).hexdigest()
    uri = store.put(data, suffix=".png")
    assert uri == store.put(data, suffix=".png")
    path = tmp_path / "images" / sha[:2] / sha[2:4] / f"{sha}.png"
    assert uri == path.as_uri()
    assert path.read_bytes() == data
    assert store.get(uri) == data
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_put_refuses_odd_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        LocalImageStore(tmp_path).put(b"x", suffix="/../../etc")


def test_missing_image_is_not_found(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    missing = (tmp_path / "ab" / "cd" / ("ab" * 32 + ".png")).as_uri()
    with pytest.raises(ImageNotFound) as info:
        store.get(missing)
    assert isinstance(info.value, LookupError)
    assert str(tmp_path) not in str(info.value)  # never echo a path


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file://{root}/../outside.png",
        "file://{root}/%2e%2e/outside.png",
        "http://example.org/{root}/x.png",
        "file://otherhost{root}/x.png",
        "{root}/x.png",
    ],
)
def test_uris_outside_the_store_are_refused(tmp_path: Path, uri: str) -> None:
    root = tmp_path / "images"
    (tmp_path / "outside.png").write_bytes(b"secret")
    store = LocalImageStore(root)
    with pytest.raises(ImageURIRefused):
        store.get(uri.format(root=root))


def test_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ImageURIRefused):
        LocalImageStore(root).get((root / "link.png").as_uri())


def test_open_image_store_uses_settings(tmp_path: Path) -> None:
    store = open_image_store(Settings(home=tmp_path))
    assert isinstance(store, LocalImageStore)
    assert store.root == (tmp_path / "images").resolve()
