"""Fixtures for the deploy/ tests: paths, and the Prometheus binaries (never skipped)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

INSTALL_HINT = (
    "is not installed; the deploy tests need Debian's prometheus package, which provides "
    "both promtool and prometheus: `apt-get update && apt-get install -y prometheus` "
    "(as root; `make system-deps` does it), or put the binaries from "
    "https://prometheus.io/download/ on PATH"
)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} {INSTALL_HINT}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary("prometheus")
