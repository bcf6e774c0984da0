"""Pixel scale: frames reach the models at their scale (configured, file or estimated from the
red cells), results come back in frame pixels and record the scale and its source."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from daemon.domain.manifest import RedCellScale
from daemon.domain.results import CellResult
from daemon.imaging.frames import decode_reduced, reduction_for
from daemon.imaging.ruler import measure_red_cells
from daemon.imaging.scale import Rescaler
from daemon.imaging.synthetic import encode, smear_field
from daemon.store.results import ResultStore
from daemon.worker.worker import Worker


def enlarge(image: np.ndarray, factor: float) -> np.ndarray:
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)


def field(seed: int = 0) -> np.ndarray:
    return smear_field(np.random.default_rng(seed), red_cells=40)[0]


def test_configured_scale_wins_and_cells_map_back():
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=20.0))  # models: 7.5 / 20 = 0.375 µm/px
    image = field()
    info = rescaler.resolve(enlarge(image, 4), 0.75, "configured")
    assert (info.source, info.factor, info.reliable) == ("configured", 2.0, True)
    assert rescaler.resolve(image, 0.38, "file").factor == 1.0  # within 2 %: not resampled
    assert rescaler.resolve(image, 0.75, "file").source == "file"
    assert Rescaler.apply(np.zeros((100, 80, 3), np.uint8), 0.5).shape == (50, 40, 3)
    cell = CellResult(bbox=[10, 20, 30, 40], area_px=900, class_="a", probabilities={"a": 1.0})
    (back,) = Rescaler.to_frame([cell], 0.5)
    assert back.bbox == [20, 40, 60, 80] and back.area_px == 3600


@pytest.mark.parametrize("seed", range(3))
def test_a_coarse_compressed_frame_is_smoothed_before_it_is_enlarged(seed):
    """A camera coarser than the models' scale: its JPEG blocks and noise would be enlarged
    into texture the models never saw; edge-preserving smoothing first brings the enlarged
    frame closer to the field the camera saw."""
    sharp = field(seed)
    small = cv2.resize(sharp, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    _, coded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 40])
    small = cv2.imdecode(coded, cv2.IMREAD_COLOR)
    plain = cv2.resize(small, sharp.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    ours = Rescaler.apply(small, 2.0)
    assert ours.shape == sharp.shape

    def error(image: np.ndarray) -> float:
        return float(np.abs(image.astype(np.float32) - sharp).mean())

    assert error(ours) < 0.97 * error(plain), (error(ours), error(plain))
    # Enlarging a little (within SMOOTH_FROM) is plain interpolation: the frame is as sharp as
    # the models' own fields and nothing is smoothed away.
    near = Rescaler.apply(sharp, 1.2)
    assert np.array_equal(near, cv2.resize(sharp, near.shape[1::-1],
                                           interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("enlargement", [0.5, 2.0, 4.0, 8.0])
def test_unknown_scale_is_estimated_from_the_red_cells(enlargement):
    image = field(1)
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=measure_red_cells(image).diameter_px))
    info = rescaler.resolve(enlarge(image, enlargement), None, rig="r1")
    assert info.source == "estimated" and info.reliable
    assert info.factor == pytest.approx(1 / enlargement, rel=0.10)
    assert info.um_per_pixel == pytest.approx(7.5 / info.rbc_diameter_px, rel=1e-3)


def test_a_rig_keeps_a_running_estimate_and_an_odd_frame_goes_to_review():
    image = field(2)
    model = measure_red_cells(image).diameter_px
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=model))
    for seed in range(3, 8):  # five frames of rig A at 2x
        rescaler.resolve(enlarge(field(seed), 2.0), None, rig="A")
    odd = rescaler.resolve(enlarge(image, 4.0), None, rig="A")  # one frame at 4x
    assert odd.factor == pytest.approx(0.5, rel=0.12)  # the rig's median, not this frame's
    assert not odd.reliable  # the frame disagrees with its rig: review
    fresh = rescaler.resolve(enlarge(image, 4.0), None, rig="B")  # another rig: its own
    assert fresh.factor == pytest.approx(0.25, rel=0.10) and fresh.reliable
    blank = np.full((224, 224, 3), 235, np.uint8)
    assert rescaler.resolve(blank, None, rig="A").factor == odd.factor  # rig's estimate
    unknown = rescaler.resolve(blank, None, rig="C")
    assert (unknown.source, unknown.factor, unknown.reliable) == ("assumed", 1.0, False)


@pytest.mark.parametrize(("off_by", "flagged"), [(1.29, False), (1 / 1.29, False),
                                               (1.45, True), (0.72, True)])
def test_a_frame_is_flagged_only_beyond_the_scale_error_the_models_tolerate(off_by, flagged):
    """JUMP (0.33): a reading up to 1.33 times larger or smaller than the rig's median is what
    a patient's red cells and the models both allow; beyond it, either way, it is flagged.
    0.72 would pass a one-sided |ratio - 1| <= 0.33 test: the bound is a factor both ways."""
    image = field(6)
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=measure_red_cells(image).diameter_px))
    for _ in range(5):  # the rig's optics: 2x
        rescaler.resolve(enlarge(image, 2.0), None, rig="A")
    frame = rescaler.resolve(enlarge(image, 2.0 * off_by), None, rig="A")
    assert frame.reliable is not flagged
    assert frame.factor == pytest.approx(0.5, rel=0.05)  # analysed at the rig's scale


def test_an_overexposed_frame_neither_sets_nor_moves_the_scale():
    """A clipped-white frame's red cells read short (their pale rims are cut off): it takes
    its rig's running estimate without adding to it, and alone it is analysed as captured and
    goes to review, rather than being enlarged by its misreading."""
    image = field(2)
    model = measure_red_cells(image).diameter_px
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=model))
    for seed in range(3, 8):
        rescaler.resolve(enlarge(field(seed), 2.0), None, rig="A")
    history = rescaler.diameters("A")
    bright = np.clip(enlarge(image, 2.0).astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
    scale = rescaler.resolve(bright, None, rig="A")
    assert scale.factor == pytest.approx(0.5, rel=0.12) and scale.reliable
    assert rescaler.diameters("A") == history
    alone = Rescaler(RedCellScale(rbc_diameter_px=model)).resolve(bright, None)
    assert (alone.source, alone.factor, alone.reliable) == ("assumed", 1.0, False)
    assert alone.overexposed and not scale.overexposed  # the rig's estimate answered for it
    assert "overexposed" not in alone.model_dump()  # said in the review reasons, not stored


def test_bad_configured_values_fall_back_to_the_red_cells():
    image = field(3)
    rescaler = Rescaler(RedCellScale(rbc_diameter_px=measure_red_cells(image).diameter_px))
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        assert rescaler.resolve(image, bad).source == "estimated"


def scaled_settings(settings, tiny_models, tmp_path, image: np.ndarray):
    """``settings`` with copies of the tiny models whose scale is ``image``'s red cells."""
    folder = tmp_path / "scaled-models"
    folder.mkdir(exist_ok=True)
    for model in tiny_models:
        for path in (model, model.with_suffix(".json")):
            shutil.copy(path, folder / path.name)
        manifest = json.loads((folder / model.with_suffix(".json").name).read_text())
        manifest["scale"] = {"rbc_diameter_px": measure_red_cells(image).diameter_px}
        (folder / model.with_suffix(".json").name).write_text(json.dumps(manifest))
    settings.models.segmenter = folder / tiny_models[0].name
    settings.models.classifier = folder / tiny_models[1].name
    return settings


def test_worker_finds_an_enlarged_frames_scale_with_no_um_per_pixel(
    make_settings, tiny_models, tmp_path
):
    image, _ = smear_field(np.random.default_rng(5), white_cells=2, red_cells=40)
    worker = Worker(scaled_settings(make_settings(), tiny_models, tmp_path, image), "t-scale")
    big = enlarge(image, 3.0)
    worker.queue.enqueue("native", "S1", "/in/native.png", "rig-1", encode(image, ".png"))
    worker.queue.enqueue("triple", "S1", "/in/triple.png", "rig-2", encode(big, ".png"),
                         metadata={"objective": "100x"})
    while worker.step(block_ms=100):
        pass
    store = ResultStore(worker.client)
    native, triple = store.get("native"), store.get("triple")
    assert native.status == triple.status == "done"
    assert triple.scale.source == "estimated" and triple.scale.factor == pytest.approx(1 / 3,
                                                                                        rel=0.1)
    assert triple.um_per_pixel is None and triple.metadata == {"objective": "100x"}
    assert len(native.cells) == len(triple.cells) == 2
    # The 3x frame was analysed at the models' scale; its boxes are in its own pixels.
    for a, b in zip(native.cells, triple.cells, strict=True):
        assert all(abs(3 * u - v) <= 8 for u, v in zip(a.bbox, b.bbox, strict=True)), (a, b)
        assert 6.0 < b.area_px / a.area_px < 12.0


def nuclei(image: np.ndarray) -> list[CellResult]:
    """Violet white-cell nuclei of a synthetic field as cells (boxes in its pixels)."""
    rgb = image.astype(np.float32)
    mask = ((rgb[..., 0] + rgb[..., 2]) * 0.5 - rgb[..., 1] >= 35).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    return [CellResult(bbox=[int(v) for v in stats[i, :4]], area_px=int(stats[i, 4]),
                       class_="a", probabilities={"a": 1.0})
            for i in range(1, count) if stats[i, 4] >= 20]


def test_reduced_decode_gives_the_full_decodes_image_and_original_boxes():
    assert [reduction_for(f) for f in (None, 2.0, 1.0, 0.6, 0.5, 1 / 3, 0.25, 0.2, 0.1)] == \
        [1, 1, 1, 1, 2, 2, 4, 4, 8]
    image, truth = smear_field(np.random.default_rng(7), (600, 900), white_cells=3,
                               red_cells=120, enlargement=3.0)
    data, factor = encode(image, quality=90), 1 / 3
    full, reduced = decode_reduced(data, None), decode_reduced(data, factor)
    assert (full.reduction, reduced.reduction) == (1, 2)
    assert reduced.image.shape == (300, 450, 3) and (reduced.width, reduced.height) == (900, 600)
    a = Rescaler.apply(full.image, factor, (full.width, full.height))
    b = Rescaler.apply(reduced.image, factor, (reduced.width, reduced.height))
    assert a.shape == b.shape == (200, 300, 3)  # the full decode's size, whatever r
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0  # grey levels (measured 0.4)
    # Boxes found at the models' scale map back to the ORIGINAL frame's pixels by factor.
    found = Rescaler.to_frame(nuclei(b), factor)
    assert len(found) == len(truth) == 3
    for (x, y, _), cell in zip(sorted(truth, key=lambda t: t[1]),
                               sorted(found, key=lambda c: c.bbox[1]), strict=True):
        cx, cy = cell.bbox[0] + cell.bbox[2] / 2, cell.bbox[1] + cell.bbox[3] / 2
        assert abs(cx - x) <= 9 and abs(cy - y) <= 9, (x, y, cell.bbox)
    # Not a JPEG: decoded in full, as before.
    assert decode_reduced(encode(image, ".png"), factor).reduction == 1
    # A rig's estimate, found on a reduced frame, is in the frame's own pixels.
    image, _ = smear_field(np.random.default_rng(8), (600, 900), white_cells=2, red_cells=30,
                           enlargement=3.0)
    data = encode(image, quality=90)
    model = Rescaler(RedCellScale(rbc_diameter_px=20.0))
    assert model.planned_factor(None, "new rig") is None  # first frame: decoded in full
    first, on_full = model.to_models(decode_reduced(data, None), None, rig="rig")
    planned = model.planned_factor(None, "rig")
    assert planned == on_full.factor < 0.5
    reduced = decode_reduced(data, planned)
    assert reduced.reduction == 2
    second, on_reduced = model.to_models(reduced, None, rig="rig")
    assert on_reduced.rbc_diameter_px == pytest.approx(on_full.rbc_diameter_px, rel=0.05)
    # The rig's median moved with the second estimate; the image is the full decode's at it.
    expected = Rescaler.apply(decode_reduced(data, None).image, on_reduced.factor)
    assert first is not None and second is not None and second.shape == expected.shape
    assert np.abs(second.astype(int) - expected.astype(int)).mean() < 2.0


def test_worker_decodes_a_known_scale_frame_reduced_with_cells_in_original_pixels(
    make_settings, tiny_models, tmp_path
):
    image, _ = smear_field(np.random.default_rng(5), white_cells=2, red_cells=40)
    settings = scaled_settings(make_settings(), tiny_models, tmp_path, image)
    worker = Worker(settings, "t-reduced")
    model_um = worker.analyzer.rescaler.model_um
    big = encode(enlarge(image, 3.0), quality=90)  # a camera whose pixels are 3x smaller
    worker.queue.enqueue("native", "S1", "/in/native.jpg", "rig-1", encode(image, quality=90))
    for frame_id in ("reduced", "full"):
        worker.queue.enqueue(frame_id, "S1", f"/in/{frame_id}.jpg", "rig-2", big,
                             um_per_pixel=model_um / 3)
    batch = worker.queue.read("t-reduced", 8, 100)
    reduced_decode = {d.frame_id: worker._decode(d)[0].reduction for d in batch}
    assert reduced_decode == {"native": 1, "reduced": 2, "full": 2}
    worker.process([d for d in batch if d.frame_id != "full"])
    worker.flush()
    settings.workers.reduced_decode = False  # the same frame, decoded in full
    assert worker._decode(batch[2])[0].reduction == 1
    worker.process(batch[2:])
    worker.flush()
    store = ResultStore(worker.client)
    native, reduced, full = (store.get(i) for i in ("native", "reduced", "full"))
    assert native.status == reduced.status == full.status == "done"
    assert reduced.scale.source == "configured" and reduced.scale.factor == pytest.approx(1 / 3, abs=1e-4)
    assert reduced.timings_ms["decode"] > 0
    assert len(native.cells) == len(reduced.cells) == len(full.cells) == 2
    for a, b, c in zip(native.cells, reduced.cells, full.cells, strict=True):
        # In the ORIGINAL 3x frame's pixels, where the full decode puts them.
        assert all(abs(u - v) <= 3 for u, v in zip(b.bbox, c.bbox, strict=True)), (b, c)
        assert all(abs(3 * u - v) <= 8 for u, v in zip(a.bbox, b.bbox, strict=True)), (a, b)
        assert abs(b.area_px / c.area_px - 1) < 0.1
