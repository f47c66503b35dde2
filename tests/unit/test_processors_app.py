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


def test_a_killed_processors_partitions_are_reassigned_within_seconds_not_a_minute(tmp_path: Path) -> None:
    # Faust's default session timeout (60 s) would hold a crashed member's partitions, and so the whole
    # feedback loop, for a minute after a kill -9; the restart test relies on the shorter one.
    app = create_app(ProcessorSettings(home=tmp_path, processors_app_id="app-under-test"))
    assert app.conf.broker_session_timeout <= 10.0
    assert app.conf.broker_heartbeat_interval < app.conf.broker_session_timeout / 2
    # Static membership: the restarted process takes the killed one's place without a rebalance (a Faust
    # rebalance right after a restart left the join stalled in the kill test).
    assert app.conf.consumer_group_instance_id == "app-under-test-0"
