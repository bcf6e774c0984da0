"""``leukoscope train`` options that are parsed by hand (torch)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def test_augment_overrides_parse_numbers_ranges_and_switches() -> None:
    from daemon.training.cli import _augment_overrides

    assert _augment_overrides(["blur_p=0.5", "resample=0.35,1", "jpeg_quality=20,95",
                               "jpeg_before_upscale=true"]) == {
        "blur_p": 0.5, "resample": (0.35, 1.0), "jpeg_quality": (20, 95),
        "jpeg_before_upscale": True}
    assert _augment_overrides(["camera_exposure=0.7,1.3", "camera_exposure_p=0.5"]) == {
        "camera_exposure": (0.7, 1.3), "camera_exposure_p": 0.5}


@pytest.mark.parametrize(("item", "message"), [
    ("bogus=1", "KEY one of max_rotation_deg"),
    ("blur_p", "KEY=VALUE"),
    ("blur_p=high", "blur_p: 'high' is not a number"),
    ("resample=0.5", "resample: expected LO,HI"),
    ("blur_p=0.1,0.2", "blur_p: expected one number"),
    ("jpeg_before_upscale=maybe", "jpeg_before_upscale: expected true or false"),
])
def test_augment_overrides_name_what_is_wrong(item: str, message: str) -> None:
    from daemon.training.cli import _augment_overrides

    with pytest.raises(SystemExit, match=message):
        _augment_overrides([item])
