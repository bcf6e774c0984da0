"""Rows of the evaluation report: the ruler compared field by field with itself."""

from __future__ import annotations

import pytest

from daemon.domain.results import ScaleInfo
from daemon.training.evaluate import ruler_agreement


def result(diameter: float | None) -> dict:
    return {"scale": ScaleInfo(um_per_pixel=None, source="estimated", factor=1.0,
                               rbc_diameter_px=diameter, reliable=diameter is not None)}


def test_each_field_is_compared_with_itself_times_the_magnification() -> None:
    # Red cells differ between fields (15 px and 20 px); x2 doubles each field's own.
    unshifted = [result(15.0), result(20.0), result(18.0), result(16.0)]
    shifted = [result(30.0), result(41.0), result(45.0), result(None)]
    row = ruler_agreement(shifted, unshifted, magnification=2.0)
    assert row["n"] == 3 and row["n_missing"] == 1
    assert row["share_within_10pct"] == pytest.approx(2 / 3)  # 1.0 and 1.025 in, 1.25 out
    assert row["median"] == pytest.approx(1.025)


def test_no_reading_at_all() -> None:
    assert ruler_agreement([result(None)], [result(15.0)], 1.0) == {"n": 0, "n_missing": 1}
