"""Fixtures for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.training.synthetic import make_dataset, make_normal_cells


@pytest.fixture
def synthetic_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def synthetic_normal_cells(tmp_path: Path) -> Path:
    return make_normal_cells(tmp_path / "normal")
