"""deploy/k8s, checked offline: each kustomization builds, every document matches its kind's schema (Kubernetes'
own kinds strictly, custom resources against their operators' pinned CRDs, unknown fields refused), and the
pieces are wired to one another and to the settings' values.

Integration: the CRD schemas come from the Go module proxy and from Strimzi's generator on Maven Central
(``deploy.k8s_schemas``, cached after the first run).
"""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cxr_triage import topics
from cxr_triage.settings import Settings, parse_url_address
from deploy.k8s_schemas import CrdVersion, all_crd_versions, crd_json_schema
from trainer import rayjob

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBECTL = "kubectl"
# Kubernetes' own kinds are checked against this release's strict schemas (kubernetes-validate's bundle).
KUBE_VERSION = "1.33"
OVERLAYS = ("base", *sorted(f"overlays/{p.name}" for p in (K8S / "overlays").iterdir() if p.is_dir()))
# The one Secret the operator creates before applying (deploy/k8s/README.md): no password lives in the repo.
EXTERNAL_SECRETS = {"cxr-secrets": {"redis-password", "pseudonym-key"}}


@cache
def built(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


@cache
def crds() -> dict[tuple[str, str], CrdVersion]:
    return all_crd_versions()


@cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(crd_json_schema(crds()[(api_version, kind)].schema))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Why ``doc`` does not match its kind's schema (empty: it does); a kind with no schema is an error."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in crds():
        errors = _crd_validator(*key).iter_errors(doc)
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[1]} {key[0]}"]
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str, name_prefix: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"want one {kind} named {name_prefix}*, found {[name_of(d) for d in found]}"
    return found[0]


def pod_templates(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, pod template) of every workload, the Ray cluster's head and worker groups included."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield name_of(doc), doc["spec"]["template"]
        elif doc["kind"] == "RayCluster":
            yield f"{name_of(doc)}/head", doc["spec"]["headGroupSpec"]["template"]
            for group in doc["spec"].get("workerGroupSpecs", []):
                yield f"{name_of(doc)}/{group['groupName']}", group["template"]


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def config_data(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "cxr-config-")["data"]
    return data


def settings_of(docs: tuple[dict[str, Any], ...], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod of ours reads: the ConfigMap's CXR_* values over the defaults, nothing else."""
    for name in [n for n in os.environ if n.startswith("CXR_")]:
        monkeypatch.delenv(name)
    for key, value in config_data(docs).items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


# --- schemas -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_matches_its_schema(overlay: str) -> None:
    docs = built(overlay)
    assert docs, f"{overlay} builds nothing"
    problems = {name_of(doc): errors for doc in docs if (errors := schema_errors(doc))}
    assert not problems, yaml.safe_dump(problems, width=200)


def test_the_rendered_rayjob_matches_kuberays_schema() -> None:
    manifest = rayjob.render_rayjob("retrain-20250101T000000-abcdef")
    assert schema_errors(manifest) == []
    cluster = one(built("base"), "RayCluster", "")
    assert manifest["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert manifest["metadata"]["namespace"] == one(built("base"), "Namespace", "")["metadata"]["name"]


def _first(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    return copy.deepcopy(of_kind(docs, kind)[0])


def test_an_unknown_field_in_a_custom_resource_is_refused() -> None:
    topic = _first(built("base"), "KafkaTopic")
    topic["spec"]["retention"] = "forever"  # not a KafkaTopic field: retention belongs under config
    assert any("retention" in error for error in schema_errors(topic))
    scaled = _first(built("base"), "ScaledObject")
    scaled["spec"]["maxReplicas"] = 6  # KEDA spells it maxReplicaCount
    assert any("maxReplicas" in error for error in schema_errors(scaled))


def test_a_custom_resource_keeps_the_fields_its_crd_leaves_open() -> None:
    topic = _first(built("base"), "KafkaTopic")
    topic["spec"]["config"]["max.message.bytes"] = "1048588"  # config is x-kubernetes-preserve-unknown-fields
    assert schema_errors(topic) == []


def test_a_wrong_type_or_unknown_field_in_a_kubernetes_kind_is_refused() -> None:
    deployment = _first(built("base"), "Deployment")
    deployment["spec"]["replicas"] = "two"
    assert schema_errors(deployment)
    deployment = _first(built("base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    assert schema_errors(deployment)


def test_a_kind_without_a_schema_is_refused() -> None:
    odd = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert schema_errors(odd) == ["no schema for Widget example.org/v1"]


# --- wiring --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_and_volumes_reference_what_the_build_has(overlay: str) -> None:
    docs = built(overlay)
    config_maps = {d["metadata"]["name"]: set(d.get("data", {})) for d in of_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) for d in of_kind(docs, "Secret")}
    secrets.update(EXTERNAL_SECRETS)
    claims = {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}
    missing: list[str] = []
    for owner, template in pod_templates(docs):
        for container in containers(template):
            for source in container.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
                    missing.append(f"{owner}: ConfigMap {source['configMapRef']['name']}")
            for var in container.get("env", []):
                for ref_kind, known in (("configMapKeyRef", config_maps), ("secretKeyRef", secrets)):
                    ref = var.get("valueFrom", {}).get(ref_kind)
                    if ref and ref["key"] not in known.get(ref["name"], set()):
                        missing.append(f"{owner}: {ref_kind} {ref['name']}/{ref['key']}")
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                missing.append(f"{owner}: ConfigMap volume {volume['configMap']['name']}")
            if (
                "persistentVolumeClaim" in volume
                and volume["persistentVolumeClaim"]["claimName"] not in claims
            ):
                missing.append(f"{owner}: PVC {volume['persistentVolumeClaim']['claimName']}")
    assert not missing


def test_the_external_secret_is_documented() -> None:
    readme = (K8S / "README.md").read_text()
    for name, keys in EXTERNAL_SECRETS.items():
        assert f"create secret generic {name}" in readme
        for key in keys:
            assert f"--from-literal={key}=" in readme


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_selects_pods_of_a_workload(overlay: str) -> None:
    docs = built(overlay)
    templates = dict(pod_templates(docs))
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        owners = [o for o, t in templates.items() if selector.items() <= t["metadata"]["labels"].items()]
        assert owners, f"{name_of(service)} selects no pods ({selector})"
        ports = {p["name"] for o in owners for c in containers(templates[o]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in ports, (
                f"{name_of(service)}: no container port {target}"
            )


def _service_port(docs: tuple[dict[str, Any], ...], host: str, port: int) -> None:
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    assert host in services, f"no Service {host}"
    assert port in {p["port"] for p in services[host]["spec"]["ports"]}, f"Service {host} has no port {port}"


def test_the_peer_addresses_are_the_clusters_services(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = built("base")
    settings = settings_of(docs, monkeypatch)
    for address in (
        settings.redis_address,
        settings.triton_grpc_address,
        settings.triton_http_address,
        settings.mlflow_address,
    ):
        _service_port(docs, address.host, address.port)
    # Strimzi names the bootstrap Service after the Kafka resource and serves the listener's port there.
    kafka = one(docs, "Kafka", "")
    plain = {listener["port"] for listener in kafka["spec"]["kafka"]["listeners"] if not listener["tls"]}
    assert settings.kafka_address.host == f"{kafka['metadata']['name']}-kafka-bootstrap"
    assert settings.kafka_address.port in plain


def test_our_servers_listen_where_the_probes_and_scrapes_look(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = built("base")
    settings = settings_of(docs, monkeypatch)
    assert settings.bind_host == "0.0.0.0"  # reachable from outside the container
    wanted = {
        "cxr-worker": settings.worker_metrics_port,
        "cxr-api": settings.api_port,
        "cxr-processors": settings.processors_port,
        "cxr-retrain-worker": settings.retrain_metrics_port,
        "cxr-rollout-worker": settings.rollout_metrics_port,
        "cxr-dicom-gateway": settings.gateway_metrics_port,
    }
    for name, port in wanted.items():
        template = one(docs, "Deployment", name)["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["image"].startswith("cxr-triage"), name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        probe = container["livenessProbe"]["httpGet"]
        assert ports[probe["port"]] == port, name
        assert probe["path"] == ("/healthz" if name == "cxr-api" else "/metrics"), name
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port), name
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, name
    gateway = one(docs, "Deployment", "cxr-dicom-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert settings.dicom_port in {p["containerPort"] for p in gateway["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_scaled_object_scales_the_workers_on_their_lag(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = built(overlay)
    settings = settings_of(docs, monkeypatch)
    scaled = one(docs, "ScaledObject", "")
    worker = one(docs, "Deployment", "cxr-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert "replicas" not in worker["spec"]  # KEDA owns the count
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["worker", "run"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == settings.worker_group
    assert meta["topic"] == topics.STUDIES
    assert meta["bootstrapServers"] == settings.kafka_bootstrap_servers
    assert int(meta["lagThreshold"]) >= 1
    studies = next(t for t in of_kind(docs, "KafkaTopic") if t["spec"]["topicName"] == topics.STUDIES)
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= studies["spec"]["partitions"]


def test_the_kafka_topics_are_the_topics_of_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = built("base")
    settings = settings_of(docs, monkeypatch)
    kafka = one(docs, "Kafka", "")
    made = of_kind(docs, "KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in made) == sorted(topics.ALL)
    for topic in made:
        name = topic["spec"]["topicName"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["spec"]["config"] == topics.CONFIGS[name], name
        assert topic["spec"]["partitions"] == settings.kafka_partitions, name
    # KRaft with node pools, and no topic the operator did not declare.
    assert kafka["metadata"]["annotations"] == {
        "strimzi.io/kraft": "enabled",
        "strimzi.io/node-pools": "enabled",
    }
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    pools = of_kind(docs, "KafkaNodePool")
    assert {role for pool in pools for role in pool["spec"]["roles"]} == {"controller", "broker"}
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"] for p in pools)


def test_triton_serves_from_the_model_volume_on_a_gpu() -> None:
    docs = built("base")
    template = one(docs, "Deployment", "triton")["spec"]["template"]
    triton = next(c for c in template["spec"]["containers"] if c["name"] == "triton")
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert "--model-repository=/models" in triton["args"]
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == "cxr-models"
    # The init container seeds that same volume where `model init` writes it ($CXR_HOME/model_repository).
    (init,) = template["spec"]["initContainers"]
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert init_mounts["/data/model_repository"] == mounts["/models"]
    assert "cxr-triage model init" in init["args"][0]


def test_redis_persists_with_the_repos_config() -> None:
    docs = built("base")
    redis = one(docs, "StatefulSet", "redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    config = one(docs, "ConfigMap", "redis-config-")["data"]["redis.conf"]
    assert config == (ROOT / "deploy" / "redis" / "redis.conf").read_text()
    assert "appendonly yes" in config.splitlines()


def test_training_runs_on_the_ray_cluster() -> None:
    docs = built("base")
    cluster = one(docs, "RayCluster", "")
    assert cluster["metadata"]["name"] == rayjob.DEFAULT_CLUSTER
    retrain = one(docs, "Deployment", "cxr-retrain-worker")["spec"]["template"]["spec"]["containers"][0]
    env = {var["name"]: var.get("value") for var in retrain["env"]}
    address = parse_url_address(env["CXR_RAY_ADDRESS"].replace("ray://", "http://"))
    assert address.host == f"{cluster['metadata']['name']}-head-svc"  # KubeRay's head Service
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert address.port in {p["containerPort"] for p in head["ports"]}
