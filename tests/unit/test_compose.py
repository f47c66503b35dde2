"""compose.yaml: the Compose Specification's schema, `docker-compose config`, and the stack's wiring.

No engine is needed: the schema comes from the compose-go module (pinned, cached), Debian's docker-compose 1.29
parses and resolves the file without a daemon, and promtool checks the Prometheus configuration.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from cxr_triage.settings import Settings
from deploy import compose_check
from deploy.compose_check import InterpolationError, interpolate, interpolate_text
from stream_processors.config import ProcessorSettings
from trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "compose.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules"
OUR_IMAGE = "cxr-triage:latest"
# Variables the file requires (`${VAR:?...}`): a dummy value for the checks, never a real secret.
ENV = {"GRAFANA_ADMIN_PASSWORD": "not-a-secret"}
DOCKER_COMPOSE = "/usr/bin/docker-compose"
PROMTOOL = "/usr/bin/promtool"

# The settings class each of our commands loads (default: the shared Settings).
SETTINGS_OF: dict[str, type[BaseSettings]] = {
    "processors": ProcessorSettings,
    "retrain-worker": TrainerSettings,
    "rollout-worker": TrainerSettings,
}
# The setting holding the port where each long-running command of ours serves /metrics.
METRICS_PORT_OF = {
    "worker": "worker_metrics_port",
    "api": "api_port",
    "processors": "processors_port",
    "retrain-worker": "retrain_metrics_port",
    "rollout-worker": "rollout_metrics_port",
    "dicom-gateway": "gateway_metrics_port",
}
# Third-party services and the command-line option that sets their metrics port.
METRICS_OPTION_OF = {"triton": "--metrics-port", "ray-head": "--metrics-export-port"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(compose_check.load(COMPOSE), ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def ours(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    return ((name, s) for name, s in services.items() if s.get("image") == OUR_IMAGE)


def long_running(service: dict[str, Any]) -> bool:
    return service.get("restart") != "no"


def cxr_command(service: dict[str, Any]) -> str | None:
    """The `cxr-triage` subcommand a service of ours runs (None: something else, e.g. a deploy module)."""
    entrypoint, command = service.get("entrypoint"), service.get("command") or []
    if entrypoint is None:  # the image's entrypoint: cxr-triage
        return str(command[0]) if command else None
    if entrypoint == ["/bin/sh", "-c"]:
        found = re.search(r"\bcxr-triage\s+([\w-]+)", " ".join(command))
        return found.group(1) if found else None
    return None


def settings_for(name: str, service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> BaseSettings:
    """The service's settings as its process would load them from its environment (and nothing else)."""
    cls = SETTINGS_OF.get(cxr_command(service) or "", Settings)
    with monkeypatch.context() as patch:
        for key in [key for key in os.environ if key.startswith("CXR_")]:
            patch.delenv(key)
        for key, value in service.get("environment", {}).items():
            patch.setenv(key, str(value))
        return cls(_env_file=None)


# --- the Compose Specification's schema ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return compose_check.schema()


def test_schema_is_the_pinned_compose_spec(spec: dict[str, Any]) -> None:
    assert spec["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert spec["additionalProperties"] is False  # unknown top-level keys are refused, not ignored


def test_compose_file_matches_the_compose_spec(spec: dict[str, Any], compose: dict[str, Any]) -> None:
    assert compose_check.schema_errors(compose, spec) == []


def test_schema_rejects_a_broken_file(spec: dict[str, Any], compose: dict[str, Any]) -> None:
    # The validation is not vacuous: an unknown key in a service, a wrong type and an unknown top-level key.
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    broken["services"]["worker"]["ports"] = {"8000": 8000}
    broken["servics"] = {}
    errors = compose_check.schema_errors(broken, spec)
    assert any(e.startswith("services/api:") and "helthcheck" in e for e in errors), errors
    assert any(e.startswith("services/worker/ports:") for e in errors), errors
    assert any(e.startswith("<root>:") and "servics" in e for e in errors), errors


def test_grafana_password_has_no_default() -> None:
    with pytest.raises(InterpolationError, match="GRAFANA_ADMIN_PASSWORD"):
        compose_check.validate(COMPOSE, {})
    with pytest.raises(InterpolationError, match="GRAFANA_ADMIN_PASSWORD"):
        compose_check.validate(COMPOSE, {"GRAFANA_ADMIN_PASSWORD": ""})
    assert compose_check.validate(COMPOSE, ENV) == []


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("$$(cat f)", {}, "$(cat f)"),
        ("${A}-$A", {"A": "x"}, "x-x"),
        ("${A:-d}|${A-d}", {"A": ""}, "d|"),
        ("${A:-d}|${A-d}", {}, "d|d"),
        ("${A:+y}|${A+y}", {"A": ""}, "|y"),
        ("${A:?m}", {"A": "v"}, "v"),
    ],
)
def test_interpolation_follows_compose(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate_text(text, env) == expected


def test_interpolation_refuses_what_compose_refuses() -> None:
    with pytest.raises(InterpolationError, match="m"):
        interpolate_text("${A?m}", {})
    with pytest.raises(InterpolationError, match="invalid"):
        interpolate_text("${A", {})


# --- docker-compose 1.29 ------------------------------------------------------------------------------------


def docker_compose(text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKER_COMPOSE, "--project-directory", str(ROOT), "-f", "-", "config"],
        input=text,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def docker_compose_available() -> None:
    # Installed by `make setup` (Debian's docker-compose): missing is a broken setup, not a reason to skip.
    assert shutil.which(DOCKER_COMPOSE), f"{DOCKER_COMPOSE} is missing: run `make setup`"


def test_docker_compose_config(docker_compose_available: None, services: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    # docker-compose 1.29 predates the Compose Specification's top-level `name` (Compose v2): it refuses that
    # key, and only that one.
    whole = docker_compose(text, ENV)
    assert whole.returncode != 0
    assert "'name' does not match any of the regexes: '^x-'" in whole.stderr, whole.stderr
    assert whole.stderr.count("does not match") == 1, whole.stderr
    # Without it, everything else (depends_on conditions incl. service_completed_successfully, the GPU
    # reservation, merge keys, interpolation) parses and resolves.
    lines = text.splitlines(keepends=True)
    assert lines.count("name: cxr-triage\n") == 1
    resolved = docker_compose("".join(line for line in lines if line != "name: cxr-triage\n"), ENV)
    assert resolved.returncode == 0, resolved.stderr
    config = yaml.safe_load(resolved.stdout)
    assert set(config["services"]) == set(services)
    gpu = config["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert config["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "not-a-secret"
    # And it refuses to resolve the file without the Grafana password.
    missing = docker_compose("".join(line for line in lines if line != "name: cxr-triage\n"), {})
    assert missing.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD" in missing.stderr, missing.stderr


# --- wiring -------------------------------------------------------------------------------------------------


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        if image == OUR_IMAGE:
            assert "build" in service, f"{name}: our image is built from deploy/Dockerfile"
            assert service["build"]["dockerfile"] == "deploy/Dockerfile"
            continue
        tag = image.rpartition("/")[2].partition(":")[2]
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def test_ray_head_matches_the_ray_and_python_of_our_image(services: dict[str, dict[str, Any]]) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"ray\[train\]==([\d.]+)"', pyproject)
    assert found
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    python = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.MULTILINE)
    assert python
    assert services["ray-head"]["image"].startswith(
        f"rayproject/ray:{found.group(1)}-py{python.group(1)}{python.group(2)}"
    )


def test_depends_on_names_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            dep = services[dependency]
            if long_running(dep):
                assert rule["condition"] == "service_healthy", f"{name} -> {dependency}"
                assert "healthcheck" in dep, f"{name} waits for {dependency}, which has no healthcheck"
            else:
                assert rule["condition"] == "service_completed_successfully", f"{name} -> {dependency}"


def test_one_shot_steps_are_awaited(services: dict[str, dict[str, Any]]) -> None:
    waited = {dep for s in services.values() for dep in s.get("depends_on", {})}
    for name, service in services.items():
        if not long_running(service):
            assert name in waited, f"one-shot {name} is awaited by nothing"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if long_running(service):
            assert service.get("restart") == "unless-stopped", name
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_one_private_network(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert list(compose["networks"]) == ["cxr"]
    for name, service in services.items():
        assert "network_mode" not in service, name
        assert service.get("networks") == ["cxr"], name


def test_published_ports_bind_loopback(services: dict[str, dict[str, Any]]) -> None:
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
            published[name] = port
    assert set(published) == {"api", "dicom-gateway", "mlflow", "ray-head", "prometheus", "grafana"}


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    used = {
        v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if not v.startswith(("./", "/"))
    }
    assert used == set(compose["volumes"])


def test_grafana_is_provisioned_and_closed(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    raw = compose_check.load(COMPOSE)["services"]["grafana"]["environment"]
    assert raw["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"


def test_cxr_env_names_existing_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in ours(services):
        cls = SETTINGS_OF.get(cxr_command(service) or "", Settings)
        prefix = cls.model_config.get("env_prefix", "")
        known = {f"{prefix}{field}".upper() for field in cls.model_fields}
        given = {key for key in service.get("environment", {}) if key.startswith("CXR_")}
        assert given <= known, f"{name}: no such setting {sorted(given - known)}"
        settings_for(name, service, monkeypatch)  # and the values validate


def test_peers_are_addressed_by_service_name(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in ours(services):
        settings = settings_for(name, service, monkeypatch)
        assert isinstance(settings, Settings)
        assert settings.home == Path("/data")
        assert settings.bind_host == "0.0.0.0"
        assert settings.kafka_address.host in services
        assert settings.redis_address.host in services
        assert settings.triton_grpc_address.host in services
        assert settings.triton_http_address.host in services
        assert settings.mlflow_address.host in services
    trainer = settings_for("retrain-worker", services["retrain-worker"], monkeypatch)
    assert isinstance(trainer, TrainerSettings)
    assert trainer.ray_address.partition(":")[0] == "ray-head"


def prometheus_targets() -> set[str]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }


def test_prometheus_scrapes_every_service(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = prometheus_targets()
    expected = set()
    for name, service in ours(services):
        command = cxr_command(service)
        if not long_running(service) or command is None:
            continue  # one-shot steps; the MLflow server (python -m mlflow) serves no /metrics
        assert command in METRICS_PORT_OF, f"{name}: where does `cxr-triage {command}` serve /metrics?"
        port = getattr(settings_for(name, service, monkeypatch), METRICS_PORT_OF[command])
        # Its healthcheck asks the same port.
        assert f"http://127.0.0.1:{port}/" in " ".join(service["healthcheck"]["test"]), name
        expected.add(f"{name}:{port}")
    for name, option in METRICS_OPTION_OF.items():
        found = re.search(rf"{option}=(\d+)", " ".join(services[name]["command"]))
        assert found, f"{name} sets no {option}"
        expected.add(f"{name}:{found.group(1)}")
    assert expected <= targets, f"not scraped: {sorted(expected - targets)}"
    for target in targets - {"localhost:9090"}:
        assert target.partition(":")[0] in services, f"{target} is no service"


def test_prometheus_loads_the_mounted_rules(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in services["prometheus"]["volumes"]


def promtool(config: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which(PROMTOOL), f"{PROMTOOL} is missing: run `make setup`"
    return subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_the_config_with_its_rules(tmp_path: Path) -> None:
    # As written the rule glob names the container's path, which matches nothing here (promtool accepts an
    # empty glob): check it as it is, then with the glob pointed at the folder compose mounts there, so the
    # rule files are loaded and checked too.
    as_written = promtool(PROMETHEUS)
    assert as_written.returncode == 0, as_written.stdout + as_written.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    config["rule_files"] = [str(RULES / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = promtool(local)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = sorted(RULES.glob("*.yml"))
    for rule in rules:
        assert f"SUCCESS: {rule}" in checked.stdout or rule.name in checked.stdout, checked.stdout


def test_ray_token_is_generated_once_and_group_readable(tmp_path: Path) -> None:
    from deploy.ray_auth import ensure_token

    settings = Settings(home=tmp_path, _env_file=None)
    path = ensure_token(settings)
    token = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert ensure_token(settings) == path and path.read_text() == token
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.parent.stat().st_mode & 0o777 == 0o750
    # The path compose gives the Ray processes (the volume is /data in our image, /cxr in the Ray head's).
    compose = compose_check.load(COMPOSE)["services"]
    relative = path.relative_to(tmp_path)
    assert compose["retrain-worker"]["environment"]["RAY_AUTH_TOKEN_PATH"] == f"/data/{relative}"
    assert compose["ray-head"]["environment"]["RAY_AUTH_TOKEN_PATH"] == f"/cxr/{relative}"
    assert "cxr-data:/cxr:ro" in compose["ray-head"]["volumes"]


def test_prometheus_jobs_match_the_local_stack() -> None:
    # Alerts and dashboards serve both stacks: the containers' config keeps the local config's job names.
    def jobs(path: Path) -> set[str]:
        return {job["job_name"] for job in yaml.safe_load(path.read_text())["scrape_configs"]}

    assert jobs(PROMETHEUS.with_name("prometheus.yml")) <= jobs(PROMETHEUS)
