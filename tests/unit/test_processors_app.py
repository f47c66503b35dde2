"""The processors' app is built under the state home: Faust's data folder never lands in the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_processors.app import create_app
from stream_processors.config import ProcessorSettings


def test_faust_data_folder_is_under_the_home_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    home = tmp_path / "home"
    app = create_app(ProcessorSettings(home=home, processors_app_id="app-under-test"))
    assert Path(app.conf.datadir) == home / "processors" / "app-under-test"
    assert Path(app.conf.tabledir).is_relative_to(home)
    app._create_directories()  # what the worker does on its first start (Faust makes only the last level)
    assert (home / "processors" / "app-under-test").is_dir()
    assert list(cwd.iterdir()) == []
