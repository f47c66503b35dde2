"""What `up` writes and runs: Kafka's server.properties, Triton's command line and environment, selection."""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import pytest

from cxr_triage.settings import Settings
from deploy import kafka_broker, triton_server
from deploy.components import UnknownComponentError, build_components, select, settings_env


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(home=tmp_path / "home", **overrides)  # type: ignore[arg-type]


def _properties(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_server_properties_bind_loopback_and_follow_the_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_port=29092, kafka_controller_port=29093, kafka_partitions=3)
    props = _properties(kafka_broker.render_server_properties(settings))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:29093"
    assert props["log.dirs"] == str(settings.home / "kafka" / "data")
    assert props["num.partitions"] == "3"
    assert props["auto.create.topics.enable"] == "false"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert props[key] == "1"


def test_cluster_id_looks_like_kafkas() -> None:
    ids = {kafka_broker.new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid) and not cid.startswith("-")


def test_triton_env_puts_this_interpreters_libpython_first(tmp_path: Path) -> None:
    libs = tmp_path / "nvidia_pytriton.libs"
    env = triton_server.server_env({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"}, libs_dir=libs)
    assert env["LD_LIBRARY_PATH"].split(":") == [str(sysconfig.get_config_var("LIBDIR")), str(libs), "/opt/x"]
    assert env["PATH"].split(":")[0] == str(Path(sys.prefix) / "bin")
    assert env["PATH"].endswith("/usr/bin")


def test_triton_env_without_a_previous_library_path(tmp_path: Path) -> None:
    env = triton_server.server_env({"PATH": "/bin"}, libs_dir=tmp_path)
    assert env["LD_LIBRARY_PATH"] == f"{sysconfig.get_config_var('LIBDIR')}:{tmp_path}"


def test_triton_command_line_binds_loopback_and_polls_the_repository(tmp_path: Path) -> None:
    settings = _settings(tmp_path, triton_http_port=1, triton_grpc_port=2, triton_metrics_port=3)
    dist = tmp_path / "dist"
    argv = triton_server.server_args(settings, dist=dist)
    assert argv[0] == str(dist / "bin" / "tritonserver")
    args = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    assert args["model-repository"] == str(settings.model_repository)
    assert args["backend-directory"] == str(dist / "backends")
    assert args["cache-directory"] == str(dist / "caches")
    assert (args["http-address"], args["http-port"]) == ("127.0.0.1", "1")
    assert (args["grpc-address"], args["grpc-port"]) == ("127.0.0.1", "2")
    assert (args["metrics-address"], args["metrics-port"]) == ("127.0.0.1", "3")
    assert args["model-control-mode"] == "poll"
    assert args["strict-readiness"] == "false"


def _fake_pytriton(root: Path) -> Path:
    server = root / "pytriton" / "tritonserver"
    (server / "bin").mkdir(parents=True)
    (server / "bin" / "tritonserver").write_text("binary")
    (server / "backends" / "python").mkdir(parents=True)
    (server / "caches" / "local").mkdir(parents=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for v in (version, "3.8"):
        stub_dir = server / "python_backend_stubs" / v
        stub_dir.mkdir(parents=True)
        (stub_dir / "triton_python_backend_stub").write_text(f"stub {v}")
    return root / "pytriton"


def test_triton_dist_is_copied_once_with_only_this_pythons_stub(tmp_path: Path) -> None:
    source = _fake_pytriton(tmp_path / "site")
    target = tmp_path / "home" / "triton" / "dist"
    triton_server.ensure_dist(target, source_root=source)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (target / "backends" / "python" / "triton_python_backend_stub").read_text() == f"stub {version}"
    assert not (target / "python_backend_stubs").exists()
    assert (target / "bin" / "tritonserver").is_file()
    marker = target / triton_server.VERSION_FILE
    before = marker.stat().st_mtime_ns
    (target / "bin" / "tritonserver").write_text("kept")
    triton_server.ensure_dist(target, source_root=source)
    assert marker.stat().st_mtime_ns == before
    assert (target / "bin" / "tritonserver").read_text() == "kept", "a second call must not copy again"


def test_components_come_in_start_order_with_one_per_worker(tmp_path: Path) -> None:
    settings = _settings(tmp_path, worker_count=2, worker_metrics_port=9200)
    components = build_components(settings, settings_env(settings, {}))
    assert [c.name for c in components] == [
        "kafka",
        "redis",
        "mlflow",
        "triton",
        "worker-0",
        "worker-1",
        "api",
    ]
    assert [c.port for c in components if c.kind == "worker"] == [9200, 9201]


def test_only_selects_by_kind_or_name(tmp_path: Path) -> None:
    settings = _settings(tmp_path, worker_count=2)
    components = build_components(settings, {})
    assert [c.name for c in select(components, "")] == [c.name for c in components]
    assert [c.name for c in select(components, "triton, kafka")] == ["kafka", "triton"]
    assert [c.name for c in select(components, "worker")] == ["worker-0", "worker-1"]
    assert [c.name for c in select(components, "worker-1,redis")] == ["redis", "worker-1"]
    with pytest.raises(UnknownComponentError, match="zookeeper"):
        select(components, "kafka,zookeeper")


def test_children_get_every_effective_setting_with_an_absolute_home(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_port=12345)
    env = settings_env(settings, {"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env["CXR_HOME"] == str(settings.home) and Path(env["CXR_HOME"]).is_absolute()
    assert env["CXR_KAFKA_PORT"] == "12345"
    assert (
        Settings.model_validate({k[4:].lower(): v for k, v in env.items() if k.startswith("CXR_")})
        == settings
    )
