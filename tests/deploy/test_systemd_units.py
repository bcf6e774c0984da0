"""systemd units: parsed with configparser, and `systemd-analyze verify` where it exists."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
EXEC = "/opt/leukoscope/venv/bin/leukoscope"
CONFIG = "/etc/leukoscope/config.yaml"
UNITS = {
    "leukoscope-capture.service": "capture",
    "leukoscope-worker@.service": "worker",
    "leukoscope-api.service": "api",
    "leukoscope.service": "run",
}


def parse(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def repeated(name: str, section: str, key: str) -> list[str]:
    found, current = [], None
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line.startswith(f"{key}="):
            found.append(line.split("=", 1)[1])
    return found


@pytest.mark.parametrize("name,role", UNITS.items())
def test_unit_runs_its_role_as_a_dedicated_user(name: str, role: str) -> None:
    unit = parse(name)
    service = unit["Service"]
    assert service["ExecStart"] == f"{EXEC} {role} --config {CONFIG}"
    assert service["User"] == "leukoscope" and service["Group"] == "leukoscope"
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"].rstrip("s").isdigit()
    assert service["StateDirectory"] == "leukoscope"
    assert unit["Unit"]["Description"]
    assert unit["Install"]["WantedBy"]
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, f"{name}: {key}"
    assert int(service["TimeoutStopSec"].rstrip("s")) > 10  # daemon exits within 10 s


def test_worker_instance_is_the_gpu_index() -> None:
    env = repeated("leukoscope-worker@.service", "Service", "Environment")
    assert "CUDA_VISIBLE_DEVICES=%i" in env
    assert "LEUKOSCOPE_HOSTNAME=%H-gpu%i" in env
    assert "PrivateDevices" not in parse("leukoscope-worker@.service")["Service"]


def test_all_in_one_conflicts_with_the_split_units() -> None:
    conflicts = parse("leukoscope.service")["Unit"]["Conflicts"].split()
    assert {"leukoscope-capture.service", "leukoscope-api.service"} <= set(conflicts)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (package systemd); configparser checks ran")
    # verify insists that ExecStart exists: point it at a stub, everything else unchanged.
    stub = tmp_path / "leukoscope"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for unit in SYSTEMD.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace(EXEC, str(stub)))
    for unit in SYSTEMD.glob("*.target"):
        shutil.copy(unit, tmp_path / unit.name)
    names = [n.replace("@.service", "@0.service") for n in UNITS] + ["leukoscope-workers.target"]
    result = subprocess.run([analyze, "verify", "--man=no", *(f"./{n}" for n in names)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, so any remark about our files fails.
    remarks = [line for line in (result.stdout + result.stderr).splitlines()
               if str(tmp_path) in line or "leukoscope" in line]
    assert result.returncode == 0 and not remarks, "\n".join(remarks) or result.stderr
