"""What `up` writes and runs: Kafka's server.properties, Triton's command line and environment, selection."""

from __future__ import annotations

import re
import stat
import sys
import sysconfig
from pathlib import Path

import pytest

from cxr_triage.fileio import create_once
from cxr_triage.settings import Settings
from deploy import kafka_broker, redis_server, triton_server
from deploy.components import UnknownComponentError, build_components, select, settings_env


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(home=tmp_path / "home", **overrides)  # type: ignore[arg-type]


def _properties(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_server_properties_bind_loopback_and_follow_the_settings(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, kafka_bootstrap_servers="127.0.0.1:29092", kafka_controller_port=29093, kafka_partitions=3
    )
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


def test_broker_listens_where_configured_and_advertises_the_first_bootstrap_server(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        kafka_bootstrap_servers="kafka.internal:9092,other:9092",
        kafka_listen_host="0.0.0.0",
        kafka_controller_port=9093,
    )
    props = _properties(kafka_broker.render_server_properties(settings))
    assert props["listeners"] == "PLAINTEXT://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://kafka.internal:9092"
    assert props["controller.quorum.voters"].endswith("@127.0.0.1:9093"), "the controller stays on loopback"
    (kafka,) = select(build_components(settings, {}), "kafka")
    assert (kafka.host, kafka.port) == ("127.0.0.1", 9092), "a wildcard listener is checked on loopback"


def test_ipv6_addresses_are_bracketed(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_bootstrap_servers="[::1]:29092", kafka_listen_host="::1")
    props = _properties(kafka_broker.render_server_properties(settings))
    assert props["listeners"].startswith("PLAINTEXT://[::1]:29092,")
    assert props["advertised.listeners"] == "PLAINTEXT://[::1]:29092"


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
    settings = _settings(
        tmp_path, triton_http_url="http://127.0.0.1:1", triton_grpc_url="127.0.0.1:2", triton_metrics_port=3
    )
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
        "processors",
        "retrain",
        "rollout",
        "gateway",
    ]
    assert [c.port for c in components if c.kind == "worker"] == [9200, 9201]
    # The peers start together, then our own processes, which connect to them at start-up.
    assert {c.name for c in components if c.stage == 0} == {"kafka", "redis", "mlflow", "triton"}


def test_the_gateway_is_listed_with_its_dicom_port_and_ae_title(tmp_path: Path) -> None:
    settings = _settings(tmp_path, dicom_port=11999, dicom_ae_title="PACS_GW", gateway_metrics_port=9333)
    (gateway,) = [c for c in build_components(settings, {}) if c.name == "gateway"]
    assert (gateway.port, gateway.ports, dict(gateway.details)) == (
        11999,
        (11999, 9333),
        {"ae_title": "PACS_GW", "metrics_port": "9333"},
    )
    assert "gateway" not in [c.name for c in build_components(_settings(tmp_path, gateway_enabled=False), {})]


def test_the_feedback_loop_processes_can_be_left_out(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, processors_enabled=False, retrain_worker_enabled=False, rollout_worker_enabled=False
    )
    names = [c.name for c in build_components(settings, {})]
    assert not {"processors", "retrain", "rollout"} & set(names)
    settings = _settings(tmp_path, processors_port=9300, retrain_metrics_port=9301)
    by_name = {c.name: c for c in build_components(settings, {})}
    assert (by_name["processors"].port, by_name["retrain"].port) == (9300, 9301)
    assert by_name["retrain"].prepare().argv[-1] == "retrain-worker"
    assert by_name["rollout"].prepare().argv[-1] == "rollout-worker"
    assert by_name["processors"].prepare().argv[-2:] == ["processors", "run"]


def test_only_selects_by_kind_or_name(tmp_path: Path) -> None:
    settings = _settings(tmp_path, worker_count=2)
    components = build_components(settings, {})
    assert [c.name for c in select(components, "")] == [c.name for c in components]
    assert [c.name for c in select(components, "triton, kafka")] == ["kafka", "triton"]
    assert [c.name for c in select(components, "worker")] == ["worker-0", "worker-1"]
    assert [c.name for c in select(components, "worker-1,redis")] == ["redis", "worker-1"]
    with pytest.raises(UnknownComponentError, match="zookeeper"):
        select(components, "kafka,zookeeper")


def _from_env(env: dict[str, str]) -> Settings:
    return Settings.model_validate({k[4:].lower(): v for k, v in env.items() if k.startswith("CXR_")})


def test_children_get_every_effective_setting_with_an_absolute_home(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_bootstrap_servers="127.0.0.1:12345")
    env = settings_env(settings, {"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env["CXR_HOME"] == str(settings.home) and Path(env["CXR_HOME"]).is_absolute()
    assert env["CXR_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:12345"
    assert "CXR_REDIS_PASSWORD" not in env, "unset stays unset (children read the state folder's)"
    assert _from_env(env) == settings


def test_children_get_a_configured_password_itself_not_its_mask(tmp_path: Path) -> None:
    settings = _settings(tmp_path, redis_password="s3cret")
    env = settings_env(settings, {})
    assert env["CXR_REDIS_PASSWORD"] == "s3cret"
    assert _from_env(env) == settings


def test_local_services_listen_at_their_peer_addresses(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        redis_url="redis://127.0.0.2:26379/0",
        mlflow_tracking_uri="http://127.0.0.3:25000",
        triton_http_url="http://127.0.0.4:28000",
        triton_grpc_url="127.0.0.4:28001",
        bind_host="0.0.0.0",
        api_port=28080,
        worker_count=1,
    )
    found = {c.name: (c.host, c.port) for c in build_components(settings, {})}
    assert found["redis"] == ("127.0.0.2", 26379)
    assert found["mlflow"] == ("127.0.0.3", 25000)
    assert found["triton"] == ("127.0.0.4", 28000)
    assert found["api"] == ("127.0.0.1", 28080), "our own servers bind CXR_BIND_HOST, probed on loopback"
    assert found["worker-0"] == ("127.0.0.1", settings.worker_metrics_port)


def test_redis_config_holds_the_password_and_the_command_line_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_server, "redis_binary", lambda: "/usr/bin/redis-server")
    settings = _settings(tmp_path, redis_url="redis://127.0.0.1:26379/0", redis_password='p w"\\')
    launch = redis_server.prepare(settings)
    config = redis_server.config_file(settings)
    assert launch.argv == ["/usr/bin/redis-server", str(config)]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    lines = config.read_text().splitlines()
    assert "bind 127.0.0.1" in lines and "port 26379" in lines and "appendonly yes" in lines
    assert 'requirepass "p w\\"\\\\"' in lines
    assert not settings.redis_password_file.exists(), (
        "a configured password is not written to the state folder"
    )


def test_up_generates_the_redis_password_once_private_to_the_owner(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.redis_auth() is None
    first = redis_server.ensure_password(settings)
    path = settings.redis_password_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first.get_secret_value()) >= 32
    assert redis_server.ensure_password(settings) == first, "a second up reuses the password"
    assert redis_server.ensure_password(_settings(tmp_path)) == first
    assert _settings(tmp_path).redis_auth() == first, "every client reads it from the state folder"
    assert not create_once(path, b"another\n", mode=0o600), "a concurrent second writer loses"
    assert redis_server.ensure_password(settings) == first
    assert [p.name for p in path.parent.iterdir()] == ["redis.password"], "no temporary file is left"
