"""Compose deployment, checked structurally (Docker does not run on the CI machine)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"
REPO = COMPOSE.parents[1]


def load() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())  # resolves <<: merges


def test_services_present_and_each_has_an_image_or_build() -> None:
    services = load()["services"]
    assert {"redis", "capture", "worker", "api", "prometheus"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_redis_has_aof_and_a_volume() -> None:
    compose = load()
    redis = compose["services"]["redis"]
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])


def test_daemon_parts_run_their_role_against_the_compose_redis() -> None:
    services = load()["services"]
    for role in ("capture", "worker", "api"):
        service = services[role]
        assert service["command"][0] == role
        assert service["command"][1:] == ["--config", "/etc/leukoscope/config.yaml"]
        assert service["environment"]["LEUKOSCOPE_REDIS__URL"] == "redis://redis:6379/0"
        assert "redis" in service["depends_on"]
        assert any(v.endswith(":/etc/leukoscope/config.yaml:ro") for v in service["volumes"])
    assert services["api"]["ports"] == ["127.0.0.1:8080:8080"]


def test_worker_reserves_a_gpu_and_uses_the_cuda_image() -> None:
    worker = load()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["build"]["dockerfile"].endswith("Dockerfile.gpu")


def test_references_resolve() -> None:
    """depends_on names services; named volumes are declared; bind mounts exist."""
    compose = load()
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services and dep != name, f"{name} depends on unknown {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                if source != "./inbox":  # created by the operator (the microscope's folder)
                    assert (COMPOSE / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
        build = service.get("build")
        if build:
            context = (COMPOSE / build["context"]).resolve()
            assert context == REPO
            assert (context / build["dockerfile"]).is_file()
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_prometheus_mounts_config_and_rules() -> None:
    prometheus = load()["services"]["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["../prometheus/rules"] == "/etc/prometheus/rules"
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.yml"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:8080"]


def test_dockerfiles() -> None:
    cpu = (COMPOSE / "Dockerfile").read_text()
    gpu = (COMPOSE / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", cpu, re.M)
    assert re.search(r"^FROM nvidia/cuda:\S+-cudnn-runtime-", gpu, re.M)
    for text in (cpu, gpu):
        assert re.search(r"^USER leukoscope$", text, re.M), "images must not run as root"
        assert 'ENTRYPOINT ["leukoscope"]' in text
        # Every COPY source (outside multi-stage copies) is in the repository.
        for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
            assert (REPO / source).exists() or source in {"README.md", "models"}, source
    config = yaml.safe_load((COMPOSE / "config.yaml").read_text())
    assert config["api"]["host"] == "0.0.0.0"
    assert config["capture"]["directory"] == "/inbox"
