"""The rendering cache's cap: least recently used renderings go first, down to 90 % of the cap."""

from __future__ import annotations

import os
from pathlib import Path

from priority_queue_api.images import DerivedCache


def _filled(root: Path, count: int, size: int) -> tuple[DerivedCache, list[Path]]:
    cache = DerivedCache(root)
    paths = []
    for n in range(count):
        path = cache.path_for("gray", f"digest-{n}", "full")
        cache.write(path, bytes([n]) * size)
        os.utime(path, (1000.0 + n, 1000.0 + n))  # written in order, one second apart
        paths.append(path)
    return cache, paths


def test_under_the_cap_nothing_goes(tmp_path: Path) -> None:
    cache, paths = _filled(tmp_path, 4, 100)
    trimmed = cache.trim(400)
    assert (trimmed.kept_bytes, trimmed.kept_files, trimmed.removed_files) == (400, 4, 0)
    assert all(p.exists() for p in paths)


def test_over_the_cap_the_oldest_go_down_to_ninety_percent(tmp_path: Path) -> None:
    cache, paths = _filled(tmp_path, 10, 100)
    trimmed = cache.trim(500)  # 1000 bytes against a cap of 500: down to at most 450
    assert (trimmed.kept_bytes, trimmed.kept_files, trimmed.removed_files) == (400, 4, 6)
    assert [p.exists() for p in paths] == [False] * 6 + [True] * 4


def test_a_read_makes_a_rendering_recent(tmp_path: Path) -> None:
    cache, paths = _filled(tmp_path, 3, 100)
    assert cache.read(paths[0]) == bytes([0]) * 100  # viewed again now: the newest
    cache.trim(250)
    assert [p.exists() for p in paths] == [True, False, True]
    assert cache.read(paths[1]) is None  # trimmed: rendered again on the next view


def test_files_other_than_renderings_are_left_alone(tmp_path: Path) -> None:
    cache, paths = _filled(tmp_path, 2, 100)
    stray = tmp_path / "README"
    stray.write_text("not a rendering")
    assert cache.trim(50).removed_files == 2
    assert stray.exists() and not any(p.exists() for p in paths)
