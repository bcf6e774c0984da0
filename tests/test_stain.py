"""Stain calibration per rig (issue 10, item 3): a rig whose stain hue is off the models' is
turned back once its running median says so; one field alone, a rig's first frames and a rig
close to the models' are left as they are; the hues are shared by the workers through a real
Redis; the analyzer reports what it did and flags a rig too far off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.domain.manifest import AcquisitionSpec, ReviewSpec
from daemon.domain.results import ScaleInfo
from daemon.imaging.acquisition import background_rgb, normalise_background
from daemon.imaging.stain import (
    DEAD_BAND_DEG,
    MAX_CORRECTION_DEG,
    MIN_FRAMES,
    StainCalibrator,
    hue_offset,
    reference_hue,
    stain_hue,
    turn_hue,
)
from daemon.imaging.synthetic import smear_field
from daemon.inference.analyzer import Analyzer
from daemon.inference.sessions import Classifier, Segmenter
from daemon.store.rigs import StainHueHistory
from daemon.worker.rigs import SharedRigHistory

GREY = 240.0  # the synthetic fields' background grey level, about


def field(seed: int) -> np.ndarray:
    """A synthetic field on neutral glass (its bluish background balanced to grey), as the
    models' training fields are: a rig's turn then shows in the stain, not in the glass."""
    image, _ = smear_field(np.random.default_rng(seed), white_cells=2, red_cells=30)
    return normalise_background(image, (GREY, GREY, GREY))


def test_turning_a_field_moves_its_stain_hue_by_as_much_and_leaves_grey_alone():
    # Within 2 degrees: the median of I and of Q is not quite turned with the plane, the less
    # so the fewer distinct colours a field has (synthetic cells are flat; smears read 8.4
    # for 8, deploy/gpu/decision-2026-11-27.txt).
    image = field(1)
    base = stain_hue(image, GREY)
    assert base is not None
    for degrees in (-8.0, 8.0, 15.0):
        turned = stain_hue(turn_hue(image, degrees), GREY)
        assert turned is not None and hue_offset(turned, [base]) == pytest.approx(degrees, abs=2.0)
    grey = np.full((8, 8, 3), 200, np.uint8)
    np.testing.assert_array_equal(turn_hue(grey, 12.0), grey)
    # turning back restores the field within rounding
    back = turn_hue(turn_hue(image, -8.0), 8.0).astype(int)
    assert np.abs(back - image.astype(int)).max() <= 3


def test_a_blank_field_has_no_stain_hue():
    assert stain_hue(np.full((64, 64, 3), 245, np.uint8), GREY) is None


def test_offsets_wrap_around_the_circle():
    # median of -175, -170 and 179 (= -181) is -175, i.e. 185 degrees: 170 - 185
    assert hue_offset(170.0, [-175.0, -170.0, 179.0]) == pytest.approx(-15.0)
    assert hue_offset(0.0, []) == 0.0
    assert reference_hue([field(s) for s in range(3)], GREY) == pytest.approx(
        float(np.median([stain_hue(field(s), GREY) for s in range(3)])), abs=1e-2)


def rig_frames(count: int, degrees: float) -> list[np.ndarray]:
    return [turn_hue(field(10 + i), degrees) for i in range(count)]


def test_a_rig_off_by_8_degrees_is_turned_back_after_its_first_frames():
    reference = reference_hue([field(10 + i) for i in range(MIN_FRAMES)], GREY)
    calibrator = StainCalibrator(reference)
    readings = []
    frames = rig_frames(MIN_FRAMES + 3, -8.0)
    for image in frames:
        out, reading = calibrator.calibrate(image, GREY, "rig-B")
        readings.append((out, reading))
    for _out, reading in readings[: MIN_FRAMES - 1]:  # too few frames to know the rig yet
        assert reading.turned_deg == 0.0 and reading.rig_offset_deg is None
    for (out, reading), image in zip(readings[MIN_FRAMES:], frames[MIN_FRAMES:], strict=True):
        assert reading.turned_deg == pytest.approx(8.0, abs=2.0)
        assert not reading.out_of_range
        # (the median of I and of Q is not quite turned with the plane: within 2 degrees)
        assert hue_offset(reference, [stain_hue(out, GREY)]) == pytest.approx(
            hue_offset(reference, [stain_hue(image, GREY)]) - reading.turned_deg, abs=2.0)
    assert len(calibrator.hues("rig-B")) == len(frames)


def test_one_field_alone_and_a_rig_like_the_models_are_left_as_they_are():
    reference = reference_hue([field(10 + i) for i in range(MIN_FRAMES)], GREY)
    calibrator = StainCalibrator(reference)
    image = turn_hue(field(3), -8.0)
    out, reading = calibrator.calibrate(image, GREY, None)  # no rig: no history to go by
    assert out is image and reading.turned_deg == 0.0 and reading.hue_deg is not None
    for image in rig_frames(MIN_FRAMES + 2, DEAD_BAND_DEG / 3):
        out, reading = calibrator.calibrate(image, GREY, "rig-A")
        assert out is image and reading.turned_deg == 0.0
    assert reading.rig_offset_deg is not None and abs(reading.rig_offset_deg) < DEAD_BAND_DEG
    # models without a reference calibrate nothing
    plain = StainCalibrator(None)
    assert plain.calibrate(image, GREY, "rig-A")[1].turned_deg == 0.0 and not plain.hues("rig-A")


def test_a_rig_far_off_is_not_turned_but_reported_out_of_range(tiny_models: tuple[Path, Path]):
    analyzer = Analyzer(Segmenter(tiny_models[0], "cpu"), Classifier(tiny_models[1], "cpu"))
    analyzer.review = ReviewSpec(cell_confidence=0.0, frame_confidence=0.0)
    reference = reference_hue([field(10 + i) for i in range(MIN_FRAMES)], GREY)
    white = tuple(float(v) for v in background_rgb(field(10)))
    analyzer.acquisition = AcquisitionSpec(background_rgb=white, stain_hue_deg=reference)
    analyzer.stain = StainCalibrator(reference)
    scale = ScaleInfo(um_per_pixel=0.43, source="estimated", factor=1.0, reliable=True)
    for image in rig_frames(MIN_FRAMES, 40.0):
        prepared, acquisition = analyzer.prepare(image, scale, "rig-far")
    assert acquisition is not None and acquisition.stain_turned_deg == 0.0
    assert acquisition.rig_stain_offset_deg is not None
    assert acquisition.rig_stain_offset_deg < -MAX_CORRECTION_DEG
    (analysis,) = analyzer.analyze([prepared])
    described = analyzer.describe(analysis, scale, acquisition)
    assert "acquisition_out_of_range" in described["review_reasons"]
    # a rig 8 degrees off is turned, says by how much, and is not flagged for it
    for image in rig_frames(MIN_FRAMES, 8.0):
        prepared, acquisition = analyzer.prepare(image, scale, "rig-near")
    assert acquisition is not None and acquisition.stain_turned_deg == pytest.approx(-8.0, abs=2)
    (analysis,) = analyzer.analyze([prepared])
    assert "acquisition_out_of_range" not in analyzer.describe(
        analysis, scale, acquisition)["review_reasons"]


def test_workers_share_a_rigs_hues_through_redis(redis_client):
    reference = reference_hue([field(10 + i) for i in range(MIN_FRAMES)], GREY)
    first, second = StainCalibrator(reference), StainCalibrator(reference)
    shared_first = SharedRigHistory.for_stain(first, redis_client)
    shared_second = SharedRigHistory.for_stain(second, redis_client)
    shared_first.load(["rig-C"])
    for image in rig_frames(MIN_FRAMES, -8.0):
        first.calibrate(image, GREY, "rig-C")
    shared_first.save()
    stored = StainHueHistory(redis_client, first.history, first.max_rigs).many(["rig-C"])
    assert len(stored["rig-C"]) == MIN_FRAMES
    # another worker's (or a restarted one's) first frame of that rig is turned already
    shared_second.load(["rig-C", None])
    _, reading = second.calibrate(turn_hue(field(99), -8.0), GREY, "rig-C")
    assert reading.turned_deg == pytest.approx(8.0, abs=2.0)
    # models without a stain reference cost no round trip and learn nothing
    idle = SharedRigHistory.for_stain(StainCalibrator(None), redis_client)
    assert not idle.active
    idle.load(["rig-C"])
    assert idle.holder.hues("rig-C") == []


def test_calibration_is_on_by_default_with_a_manifest_reference_and_off_with_the_setting(
        tiny_models: tuple[Path, Path], tmp_path: Path):
    import shutil

    from daemon.domain.manifest import load_manifest, write_manifest
    from daemon.settings import load_settings
    from tests.conftest import settings_dict

    folder = tmp_path / "models"
    folder.mkdir()
    for path in tiny_models:
        for name in (path.name, path.with_suffix(".json").name):
            shutil.copy2(path.parent / name, folder / name)
    segmenter = folder / tiny_models[0].name
    manifest = load_manifest(segmenter)
    manifest.acquisition = AcquisitionSpec(background_rgb=(GREY, GREY, GREY), stain_hue_deg=150.0)
    write_manifest(manifest, segmenter.with_suffix(".json"))
    models = (segmenter, folder / tiny_models[1].name)
    workers = {"count": 1, "device": "cpu", "threads": 1}
    on = Analyzer.from_settings(load_settings(None, **settings_dict(tmp_path, models)))
    off = Analyzer.from_settings(load_settings(None, **settings_dict(
        tmp_path, models, workers={**workers, "stain_calibration": False})))
    # on by default (chosen on the validation blocks, model card); false turns nothing
    assert on.stain.reference_deg == 150.0 and off.stain.reference_deg is None
    image = turn_hue(field(5), 25.0)
    for _ in range(MIN_FRAMES):
        _, with_it = on.prepare(image, ScaleInfo(um_per_pixel=None, source="assumed",
                                                 factor=1.0), "rig-1")
        _, without = off.prepare(image, ScaleInfo(um_per_pixel=None, source="assumed",
                                                  factor=1.0), "rig-1")
    assert with_it is not None and with_it.rig_stain_offset_deg is not None
    assert without is not None and without.stain_turned_deg == 0.0
    assert without.rig_stain_offset_deg is None and without.stain_hue_deg is not None


def test_an_over_exposed_frame_is_measured_but_stays_out_of_its_rigs_history(
        tiny_models: tuple[Path, Path]):
    """A clipped frame's hue is bent by the clipping: it must not move its rig's median, and
    it is still turned by the offset the rig's other frames give."""
    reference = reference_hue([field(10 + i) for i in range(MIN_FRAMES)], GREY)
    calibrator = StainCalibrator(reference)
    image = turn_hue(field(3), 40.0)
    _, reading = calibrator.calibrate(image, GREY, "rig-C", overexposed=True)
    assert reading.hue_deg is not None and calibrator.hues("rig-C") == []
    calibrator.calibrate(image, GREY, "rig-C")
    assert len(calibrator.hues("rig-C")) == 1
    # Through the analyzer: a frame a quarter clipped white before its gain is kept out.
    analyzer = Analyzer(Segmenter(tiny_models[0], "cpu"), Classifier(tiny_models[1], "cpu"))
    white = tuple(float(v) for v in background_rgb(field(10)))
    analyzer.acquisition = AcquisitionSpec(background_rgb=white, stain_hue_deg=reference)
    analyzer.stain = StainCalibrator(reference)
    scale = ScaleInfo(um_per_pixel=0.43, source="estimated", factor=1.0, reliable=True)
    bright = np.clip(field(4).astype(np.float32) * 1.4, 0, 255).astype(np.uint8)
    assert (bright.min(axis=2) >= 254).mean() > 0.25
    for _ in range(MIN_FRAMES):
        _, acquisition = analyzer.prepare(bright, scale, "rig-bright")
    assert acquisition is not None and acquisition.stain_hue_deg is not None
    assert analyzer.stain.hues("rig-bright") == [] and acquisition.stain_turned_deg == 0.0
    for _ in range(MIN_FRAMES):
        analyzer.prepare(rig_frames(1, -8.0)[0], scale, "rig-bright")
    _, acquisition = analyzer.prepare(bright, scale, "rig-bright")
    assert acquisition is not None and acquisition.stain_turned_deg == pytest.approx(8.0, abs=2)
