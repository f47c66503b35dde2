"""The rollout state (cxr_triage.model.rollout) and the challenger's folder (cxr_triage.model.challenger)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cxr_triage.model.challenger import (
    ROLLOUT_FILE,
    challenger_dir,
    rollout_state,
    start_rollout,
    stop_rollout,
)
from cxr_triage.model.export import export_model
from cxr_triage.model.repository import (
    CONFIG_FILE,
    NAMED_CONFIG,
    ONNXRUNTIME_CONFIG_FILE,
    VersionNotFound,
    add_version,
    model_dir,
    serve_version,
)
from cxr_triage.model.rollout import (
    NONE,
    RolloutError,
    RolloutState,
    challenger_name,
    in_fraction,
    study_bucket,
)
from cxr_triage.settings import Settings
from tests.unit.test_model_repo import SmallCnn, small_model


def test_the_study_hash_is_stable_and_its_fraction_within_three_points() -> None:
    # Study ids are pseudonymous content hashes (hex) in the stack; any id pattern must work the same.
    ids = [hashlib.sha256(f"study-{i}".encode()).hexdigest()[:40] for i in range(500)]
    # A pinned number: a change of the hash would move live studies between arms (the first 8 bytes of
    # SHA-256("S-00000-0") are 0xcc120694508d576e, / 2**64).
    assert study_bucket("S-00000-0") == pytest.approx(0.7971500503631906, abs=1e-12)
    assert [study_bucket(i) for i in ids] == [study_bucket(i) for i in list(ids)]
    assert all(0.0 <= study_bucket(i) < 1.0 for i in ids)
    for fraction in (0.05, 0.1, 0.25, 0.5, 0.9):
        share = sum(in_fraction(i, fraction) for i in ids) / len(ids)
        assert abs(share - fraction) <= 0.03, (fraction, share)
    # raising the fraction only adds studies: none leaves the canary arm
    small = {i for i in ids if in_fraction(i, 0.1)}
    assert small <= {i for i in ids if in_fraction(i, 0.3)}
    assert all(in_fraction(i, 1.0) for i in ids)


def test_state_from_config_parameters_and_back() -> None:
    state = RolloutState(mode="canary", challenger_version="3", champion_version="2", fraction=0.25)
    assert RolloutState.from_mapping(state.parameters()) == state
    assert RolloutState.from_mapping({"cxr.input_size": "64"}) is NONE  # the champion's config: no rollout
    assert not NONE.active and NONE.arm("S-1") == "champion" and not NONE.scores_with_challenger("S-1")
    shadow = RolloutState(mode="shadow", challenger_version="3", fraction=0.5)
    ids = [f"S-{i}" for i in range(200)]
    assert all(shadow.arm(i) == "champion" for i in ids)  # a shadow never orders
    assert {shadow.scores_with_challenger(i) for i in ids} == {True, False}
    assert all(state.scores_with_challenger(i) for i in ids)  # canary: both arms paired on every study
    assert [state.arm(i) == "canary" for i in ids] == [in_fraction(i, 0.25) for i in ids]
    for bad in (
        {"cxr.rollout.mode": "blue-green", "cxr.rollout.challenger": "3"},
        {"cxr.rollout.mode": "canary", "cxr.rollout.challenger": "3", "cxr.rollout.fraction": "0"},
        {"cxr.rollout.mode": "canary", "cxr.rollout.challenger": "3", "cxr.rollout.fraction": "1.5"},
        {"cxr.rollout.mode": "canary", "cxr.rollout.challenger": "3", "cxr.rollout.fraction": "half"},
        {"cxr.rollout.mode": "shadow"},
    ):
        with pytest.raises(RolloutError):
            RolloutState.from_mapping(bad)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path / "home", model_name="cxr_test")
    add_version(settings, small_model(tmp_path, seed=1), metadata={})
    with_threshold = export_model(
        SmallCnn(2), tmp_path / "v2.onnx", input_size=96, metadata={"cxr.threshold": "0.4"}
    )
    add_version(settings, with_threshold, metadata={})
    add_version(settings, small_model(tmp_path, seed=3), metadata={})
    serve_version(settings, 1)
    return settings


def test_shadow_writes_a_second_triton_model_beside_the_champion(settings: Settings) -> None:
    champion_config = (model_dir(settings) / CONFIG_FILE).read_text()
    state = start_rollout(settings, 2, mode="shadow", fraction=0.5)
    assert state == RolloutState(mode="shadow", challenger_version="2", champion_version="1", fraction=0.5)
    folder = challenger_dir(settings)
    assert folder.name == challenger_name("cxr_test") == "cxr_test_challenger"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["2", CONFIG_FILE, ONNXRUNTIME_CONFIG_FILE, ROLLOUT_FILE]
    )
    copied = folder / "2" / "model.onnx"
    assert copied.read_bytes() == (model_dir(settings) / "2" / "model.onnx").read_bytes()
    assert copied.stat().st_ino == (model_dir(settings) / "2" / "model.onnx").stat().st_ino  # a hard link
    config = (folder / CONFIG_FILE).read_text()
    assert 'name: "cxr_test_challenger"' in config
    assert "dims: [ 1, 96, 96 ]" in config  # its own input size
    assert "version_policy: { specific: { versions: [ 2 ] } }" in config
    for key, value in state.parameters().items():
        assert f'key: "{key}"\n  value: {{ string_value: "{value}" }}' in config
    assert 'key: "cxr.threshold"\n  value: { string_value: "0.4" }' in config  # the version's own contract
    assert (model_dir(settings) / CONFIG_FILE).read_text() == champion_config  # the champion is untouched
    assert rollout_state(settings) == state
    # nothing staged is left behind beside the repository
    assert sorted(p.name for p in settings.home.iterdir()) == ["model_repository"]


def test_canary_replaces_the_shadow_and_stop_removes_the_challenger(settings: Settings) -> None:
    start_rollout(settings, 2, mode="shadow", fraction=1.0)
    state = start_rollout(settings, 3, mode="canary", fraction=0.2)
    folder = challenger_dir(settings)
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["3"]  # version 2 left
    assert "dims: [ 1, 64, 64 ]" in (folder / CONFIG_FILE).read_text()
    assert json.loads((folder / ROLLOUT_FILE).read_text())["cxr.rollout.mode"] == "canary"
    assert rollout_state(settings) == state
    assert stop_rollout(settings) == state
    assert not folder.exists() and rollout_state(settings) is NONE
    assert stop_rollout(settings) is NONE  # stopping twice is harmless
    assert sorted(p.name for p in settings.home.iterdir()) == ["model_repository"]
    assert (model_dir(settings) / "3" / "model.onnx").is_file()  # the registry keeps the version


def test_a_rollout_refuses_the_champion_an_unknown_version_and_bad_fractions(settings: Settings) -> None:
    with pytest.raises(RolloutError, match="champion"):
        start_rollout(settings, 1, mode="shadow", fraction=1.0)
    with pytest.raises(VersionNotFound):
        start_rollout(settings, 9, mode="canary", fraction=0.1)
    with pytest.raises(RolloutError):
        start_rollout(settings, 2, mode="canary", fraction=0.0)
    assert not challenger_dir(settings).exists()


def test_compose_named_config_is_written_for_the_challenger_too(settings: Settings) -> None:
    (model_dir(settings) / NAMED_CONFIG).parent.mkdir()
    serve_version(settings, 1)
    start_rollout(settings, 3, mode="shadow", fraction=1.0)
    named = challenger_dir(settings) / NAMED_CONFIG
    assert named.read_text() == (challenger_dir(settings) / ONNXRUNTIME_CONFIG_FILE).read_text()
    assert 'platform: "onnxruntime_onnx"' in named.read_text()
