"""Kubernetes manifests: core kinds against the OpenAPI schemas shipped by kubernetes-validate
(offline, strict: unknown fields fail), CRDs (KEDA, Prometheus Operator) structurally, and
the references between objects (names, selectors, ports, kustomization)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest and newest Kubernetes minors we claim to support.
VERSIONS = ["1.28.0", "1.33.0"]
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def ident(item: tuple[str, dict]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "item", [i for i in documents() if (i[1]["apiVersion"], i[1]["kind"]) not in CRD_KINDS],
    ids=ident,
)
def test_core_kinds_match_the_kubernetes_schema(item: tuple[str, dict], version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate "
                    "(it belongs in the [test] extras)", pytrace=False)
    _, doc = item  # custom resources (KEDA, ServiceMonitor) are checked structurally below
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{ident(item)} invalid for Kubernetes {version}: {exc.message} "
                    f"at {'.'.join(map(str, exc.path))}")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "leukoscope"
    images = {i["name"] for i in kustomization["images"]}
    for _, doc in documents():
        for container in pod_spec(doc).get("containers", []) if pod_spec(doc) else []:
            name = container["image"].split(":")[0]
            assert name in images or "/" in name or name.startswith("redis"), container["image"]


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in {"Deployment", "StatefulSet"}:
        return doc["spec"]["template"]["spec"]
    return None


def test_workloads_selectors_and_references() -> None:
    configmaps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    claims = by_kind("PersistentVolumeClaim")
    for _, doc in documents():
        spec = pod_spec(doc)
        if spec is None:
            continue
        name = doc["metadata"]["name"]
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{name}: selector does not match its pods"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, name
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or any(
                    t["metadata"]["name"] == mount["name"]
                    for t in doc["spec"].get("volumeClaimTemplates", [])), f"{name}: {mount}"
            for source in container.get("envFrom", []):
                assert source["secretRef"]["name"] in secrets, name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = secrets[ref["name"]]
                    assert ref["key"] in secret.get("stringData", secret.get("data", {}))
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_services_select_a_workload_and_name_real_ports() -> None:
    workloads = [d for _, d in documents() if pod_spec(d)]
    for name, service in by_kind("Service").items():
        selector = service["spec"]["selector"]
        matches = [w for w in workloads
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"service {name} selects {len(matches)} workloads"
        ports = {p["name"] for c in pod_spec(matches[0])["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"service {name}: no port {port['targetPort']}"


def test_worker_requests_a_gpu_and_api_has_one_replica() -> None:
    worker = by_kind("Deployment")["leukoscope-worker"]
    container = pod_spec(worker)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"][0] == "worker"
    names = {e["name"]: e for e in container["env"]}
    assert names["LEUKOSCOPE_HOSTNAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    api = by_kind("Deployment")["leukoscope-api"]
    # /metrics of one replica has the Redis-kept counts; more need the scope split (README)
    assert api["spec"]["replicas"] == 1


def test_redis_is_persistent_with_aof() -> None:
    redis = by_kind("StatefulSet")["leukoscope-redis"]
    args = pod_spec(redis)["containers"][0]["args"]
    assert args[0] == "redis-server" and args[args.index("--appendonly") + 1] == "yes"
    claim = redis["spec"]["volumeClaimTemplates"][0]
    mount = pod_spec(redis)["containers"][0]["volumeMounts"][0]
    assert mount == {"name": claim["metadata"]["name"], "mountPath": "/data"}


def test_keda_scaled_object() -> None:
    scaled = by_kind("ScaledObject")["leukoscope-worker"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in by_kind("Deployment")
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert meta["stream"] == "lks:frames" and meta["consumerGroup"] == "workers"
    assert "lagCount" in meta or "pendingEntriesCount" in meta
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    host = meta["address"].split(".")[0]
    assert host in by_kind("Service"), f"address names no Service: {meta['address']}"
    auth = by_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in by_kind("Secret")[ref["name"]]["stringData"]


def test_service_monitor() -> None:
    monitor = by_kind("ServiceMonitor")["leukoscope"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in by_kind("Service").values()
                if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in services] == ["leukoscope-api"]
    ports = {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_pod_monitor_scrapes_every_worker_and_capture_pods_metrics_port() -> None:
    monitor = by_kind("PodMonitor")["leukoscope-processes"]
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["operator"] == "In"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for component in ("worker", "capture"):
        assert component in expression["values"]
        (deployment,) = [d for d in by_kind("Deployment").values() if d["spec"]["template"]
                         ["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        (container,) = pod_spec(deployment)["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[endpoint["port"]] == int(env["LEUKOSCOPE_METRICS__PORT"])
        assert env["LEUKOSCOPE_METRICS__HOST"] == "0.0.0.0"
