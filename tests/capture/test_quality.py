"""Frame quality control: each check trips on frames made bad in code and passes good ones."""

from __future__ import annotations

import json

import pytest

from capture.quality import assess, measure
from daemon.imaging.frames import REJECT_REASONS, frame_id_for
from daemon.settings import QcSettings
from daemon.store import keys
from daemon.store.results import ResultStore
from tests.capture.conftest import analyse_all, entries, frame_bytes, wait_for
from tests.capture.frames import (
    blurred_rgb,
    dark_rgb,
    empty_rgb,
    good_rgb,
    jpeg,
    overexposed_rgb,
    png,
)

BAD = {
    "blurred": (blurred_rgb, "out_of_focus"),
    "overexposed": (overexposed_rgb, "overexposed"),
    "dark": (dark_rgb, "underexposed"),
    "empty": (empty_rgb, "empty_field"),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_good_frames_pass(seed: int) -> None:
    qc = QcSettings()
    quality = assess(good_rgb(seed), qc)
    assert quality.ok, quality
    assert quality.values["focus"] >= qc.min_focus
    assert quality.values["saturated_fraction"] == 0.0


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("seed", [0, 1])
def test_each_check_trips(kind: str, seed: int) -> None:
    make, reason = BAD[kind]
    quality = assess(make(seed), QcSettings())
    assert quality.reason == reason, quality
    assert reason in REJECT_REASONS
    assert quality.message and set(quality.values) == {
        "focus", "saturated_fraction", "dark_fraction", "mean_brightness", "stained_fraction"}


def test_measures_move_the_right_way() -> None:
    good = measure(good_rgb())
    assert measure(blurred_rgb())["focus"] < good["focus"] / 3
    assert measure(overexposed_rgb())["saturated_fraction"] > 0.5
    assert measure(dark_rgb())["dark_fraction"] > 0.9
    assert measure(empty_rgb())["stained_fraction"] < 0.001 < good["stained_fraction"]


def test_qc_can_be_disabled() -> None:
    assert assess(dark_rgb(), QcSettings(enabled=False)).ok


def test_folder_frames_failing_qc_get_rejected_results_and_are_counted(
    client, inbox, make_settings, running
) -> None:
    settings = make_settings()
    files = {f"{kind}.png": png(make(0)) for kind, (make, _) in BAD.items()}
    files["good.jpg"] = jpeg(good_rgb(0))
    files["capture_style.jpg"] = frame_bytes(1)
    for name, data in files.items():
        (inbox / "QC1").mkdir(exist_ok=True)
        (inbox / "QC1" / name).write_bytes(data)
    with running(settings):
        # Capture only moves bytes: all six are queued, unchecked, and the worker (which
        # decodes each frame once, for quality control and analysis) rejects four.
        wait_for(lambda: len(entries(client)) == 6, what="all six frames queued")
        assert all("qc" not in e for e in entries(client))
        assert analyse_all(settings) == 6
        store = ResultStore(client)
        for kind, (_, reason) in BAD.items():
            name = f"{kind}.png"
            frame_id = frame_id_for("QC1", name, files[name])
            result = wait_for(lambda fid=frame_id: store.get(fid), what=f"{kind} result")
            assert result.status == "rejected" and result.reason == reason, result
            assert result.quality and result.quality["focus"] >= 0
            assert result.error
            note = settings.quarantine_dir / "QC1" / f"{name}.reason.txt"
            wait_for(note.exists, what=f"{kind} quarantined")
            assert f"reason: {reason}" in note.read_text()
            # the original, byte for byte, by the archiver once the result was stored
            assert (settings.quarantine_dir / "QC1" / name).read_bytes() == files[name]
            assert not (inbox / "QC1" / name).exists()
        for name in ("good.jpg", "capture_style.jpg"):
            result = store.get(frame_id_for("QC1", name, files[name]))
            assert result.status == "done", result
            assert result.quality is None and "qc" in result.timings_ms
            wait_for((settings.archive_dir / "QC1" / name).exists, what=f"{name} archived")
    assert entries(client) == []
    raw = client.hgetall(keys.METRICS_KEY)
    rejected = {}
    for key, value in raw.items():
        name, labels, _ = json.loads(key)
        if name == "leukoscope_frames_rejected_total":
            rejected[labels["reason"]] = float(value)
    assert rejected == {reason: 1.0 for _, reason in BAD.values()}


@pytest.mark.parametrize("enlargement", [2.0, 4.0])
def test_qc_runs_at_the_models_scale_for_any_camera(
    make_settings, client, tiny_models, enlargement
) -> None:
    """A sharp field from a camera that enlarges 4x reads as blurred at its own pixels; QC
    measures it at the models' scale (red cells as the ruler), so it passes, and a defocused
    one at the same enlargement is still rejected."""
    import cv2

    from capture.intake import Intake, SourceFrame

    def enlarged(image):
        return cv2.resize(image, None, fx=enlargement, fy=enlargement,
                          interpolation=cv2.INTER_CUBIC)

    settings = make_settings()
    settings.models.segmenter = tiny_models[0]  # its manifest states the models' scale
    intake = Intake(settings, client)
    sharp, blurred = enlarged(good_rgb(0)), enlarged(blurred_rgb(0))
    assert not assess(sharp, QcSettings()).ok  # at its own pixels: "out of focus"
    ok = intake.check(SourceFrame(sharp, b""))
    assert ok.ok, ok
    rejected = intake.check(SourceFrame(blurred, b""))
    assert rejected.reason == "out_of_focus", rejected
