"""``leukoscope evaluate-decode`` on real fields: the report's shape and its one invariant."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.settings import load_settings
from daemon.training.decode_check import check_reduced_decode

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "all-taleqani"


@pytest.mark.skipif(not DATA.is_dir(), reason="the ALL development set is not here")
def test_reduced_decode_is_used_and_changes_no_field_class(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=str(tmp_path))
    report = check_reduced_decode(settings, str(DATA), fields=8, enlargement=3.0)
    assert report["fields"] == 8
    # With the scale given every frame is shrunk 3x: all decode at 1/2, none in full.
    assert report["scale_given_reduced"]["reductions"] == {"2": 8}
    assert report["scale_given_full"]["reductions"] == {"1": 8}
    # A rig's first frame has no estimate yet: it decodes in full, the rest reduced.
    assert report["scale_estimated_reduced"]["reductions"].get("1", 0) >= 1
    assert report["scale_given_agreement"] >= 7 / 8
    assert report["scale_estimated_agreement"] >= 7 / 8
