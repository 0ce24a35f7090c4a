"""deploy/k8s, validated offline: every manifest against the Kubernetes API's own schemas
(``kubernetes-validate``, strict: unknown fields fail), cert-manager's Certificate by the
validator generated from cert-manager's CRD (npm's ``@kubernetes-models/cert-manager``, which
``scripts/bootstrap.sh test`` installs in ``.venv/npm``; run with node), and what the
issue asks of them: three replicas rolled without losing one, spread over nodes, a liveness
probe that checks nothing, readiness on /health/ready, seed 003's autoscaling, a disruption
budget, config and secrets apart, a headless Service for the model servers, and ECDSA P-256.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.plugins.processes import Gateway

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release still commonly run, and the newest the package knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
NODE_MODULES = Path(sys.prefix) / "npm" / "node_modules"  # bootstrap.sh's npm install
VALIDATE_CERTIFICATE = """
const { Certificate } = require("@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate");
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  try { new Certificate(JSON.parse(input)).validate(); }
  catch (error) { console.error(error.message || String(error)); process.exit(1); }
});
"""


def _load() -> dict[str, dict[str, Any]]:
    """Every resource kustomization.yaml lists, by kind and name."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk  # nothing left out, nothing missing
    resources: dict[str, dict[str, Any]] = {}
    for name in listed:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            resources[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return resources


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return _load()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(
    manifests: dict[str, dict[str, Any]], version: str
) -> None:
    checked = 0
    for doc in manifests.values():
        if doc["apiVersion"].startswith("cert-manager.io/"):
            continue  # a CRD's kind: not in Kubernetes' schemas (below)
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked == len(manifests) - 1


def test_the_validator_refuses_an_unknown_field(manifests: dict[str, dict[str, Any]]) -> None:
    deployment = yaml.safe_load(yaml.safe_dump(manifests["Deployment/swarmgate"]))
    deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailabel"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def _validate_certificate(doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node and (NODE_MODULES / "@kubernetes-models" / "cert-manager").is_dir(), (
        "node and @kubernetes-models/cert-manager are missing: run scripts/bootstrap.sh test"
    )
    return subprocess.run(
        [node, "-e", VALIDATE_CERTIFICATE],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        timeout=60,
    )


def test_the_certificate_is_valid_for_cert_manager_and_ecdsa_p256(
    manifests: dict[str, dict[str, Any]],
) -> None:
    doc = manifests["Certificate/swarmgate"]
    assert doc["apiVersion"] == "cert-manager.io/v1"
    done = _validate_certificate(doc)
    assert done.returncode == 0, done.stderr
    wrong = json.loads(json.dumps(doc))
    wrong["spec"]["privateKey"]["algorithm"] = "ECDSA-P256"  # not one of the CRD's values
    del wrong["spec"]["secretName"]  # required
    refused = _validate_certificate(wrong)
    assert refused.returncode == 1
    assert "algorithm" in refused.stderr and "secretName" in refused.stderr
    # The CRD's schema leaves unknown fields to the API server (which prunes them): the ones
    # that matter are checked here.
    spec = doc["spec"]
    key = spec["privateKey"]
    assert (key["algorithm"], key["size"], key["rotationPolicy"]) == ("ECDSA", 256, "Always")
    assert set(spec) <= {
        "secretName",
        "dnsNames",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
    }
    assert set(spec["issuerRef"]) <= {"name", "kind", "group"}
    # The Ingress serves the Secret it renews.
    (tls,) = manifests["Ingress/swarmgate"]["spec"]["tls"]
    assert tls["secretName"] == spec["secretName"]
    assert tls["hosts"] == spec["dnsNames"]


def _pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = manifests["Deployment/swarmgate"]["spec"]["template"]
    return pod


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_gateway_rolls_without_losing_a_replica_and_spreads_over_nodes(
    manifests: dict[str, dict[str, Any]],
) -> None:
    spec = manifests["Deployment/swarmgate"]["spec"]
    labels = _pod(manifests)["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert _selects(spec["selector"]["matchLabels"], labels)
    (term,) = _pod(manifests)["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    assert _selects(
        manifests["PodDisruptionBudget/swarmgate"]["spec"]["selector"]["matchLabels"], labels
    )
    assert _selects(manifests["Service/swarmgate"]["spec"]["selector"], labels)


def test_probes_liveness_checks_nothing_readiness_is_health_ready(
    manifests: dict[str, dict[str, Any]],
) -> None:
    (container,) = _pod(manifests)["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    # The pod's user is the image's.
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    uid = _pod(manifests)["spec"]["securityContext"]["runAsUser"]
    assert f"USER {uid}:" in dockerfile


def test_autoscaling_is_seed_003s_3_to_20_at_70_percent_cpu(
    manifests: dict[str, dict[str, Any]],
) -> None:
    hpa = manifests["HorizontalPodAutoscaler/swarmgate"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": manifests["Deployment/swarmgate"]["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20)
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    (container,) = _pod(manifests)["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]  # utilization is of the request


def test_the_model_servers_service_is_headless(manifests: dict[str, dict[str, Any]]) -> None:
    service = manifests["Service/model-servers"]
    assert service["spec"]["clusterIP"] == "None"
    config = manifests["ConfigMap/swarmgate-config"]["data"]["swarmgate.yaml"]
    assert service["metadata"]["name"] in config  # the config says how it is found


def test_the_configmap_is_a_valid_config_and_the_secret_holds_the_secrets(
    manifests: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    pod = _pod(manifests)["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    configmap = manifests["ConfigMap/swarmgate-config"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    key = os.path.relpath(env["SWARMGATE_CONFIG"], mount["mountPath"])
    text = configmap["data"][key]
    assert "secret" not in yaml.safe_load(text).get("auth", {})  # secrets are not config
    secret = manifests["Secret/swarmgate-secrets"]
    (source,) = container["envFrom"]
    assert source["secretRef"]["name"] == secret["metadata"]["name"]
    secret_env = secret["stringData"]
    assert {"SWARMGATE_ADMIN_KEY", "SWARMGATE_AUTH__SECRET", "SWARMGATE_STORE__URL"} <= set(
        secret_env
    )
    (tmp_path / key).write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "swarmgate.cli", "check-config", str(tmp_path / key)],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SWARMGATE_")},
            **secret_env,
        },
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_pod_would_start_with_the_configmap_and_the_secret(
    manifests: dict[str, dict[str, Any]], gateway_factory: Callable[..., Gateway]
) -> None:
    """``swarmgate serve`` with the ConfigMap's file and the Secret's variables (its store and
    Redis, cluster addresses, left out: the factory's SQLite file), answering the probes."""
    config = yaml.safe_load(manifests["ConfigMap/swarmgate-config"]["data"]["swarmgate.yaml"])
    secret = manifests["Secret/swarmgate-secrets"]["stringData"]
    env = {
        k: v for k, v in secret.items() if k in ("SWARMGATE_ADMIN_KEY", "SWARMGATE_AUTH__SECRET")
    }
    gw = gateway_factory(config, env)
    assert gw.admin_key == secret["SWARMGATE_ADMIN_KEY"]
    (container,) = _pod(manifests)["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        with urllib.request.urlopen(gw.url + container[probe]["httpGet"]["path"], timeout=5) as r:
            assert r.status == 200, probe
