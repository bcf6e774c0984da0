"""Fixtures for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.training.synthetic import make_dataset


@pytest.fixture
def synthetic_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")
