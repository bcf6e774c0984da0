"""ZEN output in the watched folder: 16-bit and multi-page TIFFs, CZI files written here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from capture.czi import read_czi_path
from capture.tiff import read_tiff, to_uint8
from daemon.store.results import ResultStore
from tests.capture.conftest import analyse_all, entries, wait_for
from tests.capture.frames import blurred_rgb, dark_rgb, good_rgb


def decoded(entry: dict) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(entry["data"], np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_czi(path: Path, scenes: dict[int, list[tuple[tuple[int, int], int, np.ndarray]]],
              um: float | None = 0.25) -> None:
    """scenes: scene -> [(location, z, RGB or grey array)]; RGB is written as BGR (Bgr24/48)."""
    from pylibCZIrw import czi as pyczi

    with pyczi.create_czi(str(path), exist_ok=True) as writer:
        for scene, blocks in scenes.items():
            for location, z, image in blocks:
                data = image[..., ::-1] if image.ndim == 3 else image
                writer.write(np.ascontiguousarray(data), location=location,
                             plane={"C": 0, "Z": z, "T": 0}, scene=scene)
        if um is not None:
            writer.write_metadata(document_name="test", scale_x=um * 1e-6, scale_y=um * 1e-6)


def test_16_bit_rule_never_clips():
    twelve = np.array([[0, 2048, 4095]], np.uint16)
    out, rule = to_uint8(twelve)
    assert out.tolist() == [[0, 128, 255]] and rule == "12-bit (auto)"
    assert to_uint8(np.array([[0, 65535]], np.uint16))[0].tolist() == [[0, 255]]
    # A configured depth the data exceeds is not used: auto rule, and it says so.
    out, rule = to_uint8(np.array([[0, 4095]], np.uint16), bit_depth=10)
    assert out.tolist() == [[0, 255]] and "exceeded" in rule
    out, rule = to_uint8(np.array([[0, 1023]], np.uint16), bit_depth=10)
    assert out.tolist() == [[0, 255]] and rule == "10-bit (configured)"
    assert to_uint8(np.array([[0.0, 0.5, 1.0]], np.float32))[0].tolist() == [[0, 128, 255]]


def test_multipage_16_bit_tiff_gives_one_frame_per_page(tmp_path):
    pages = [good_rgb(s) for s in range(3)]
    path = tmp_path / "stack.tif"
    # 12-bit camera data in a 16-bit container, three pages, RGB.
    stack = np.stack([p.astype(np.uint16) * 16 for p in pages])
    tifffile.imwrite(path, stack, photometric="rgb")
    frames, plain = read_tiff(path.read_bytes())
    assert not plain and [f.label for f in frames] == ["p0", "p1", "p2"]
    for frame, page in zip(frames, pages, strict=True):
        # v*16*255/4095 differs from v by at most 1 grey level: no clipping, no darkening.
        assert np.abs(frame.rgb.astype(int) - page.astype(int)).max() <= 1
        assert frame.metadata["scaling"] == "12-bit (auto, whole file)"


def test_tiff_and_czi_in_the_watched_folder(client, inbox, make_settings, running, tmp_path):
    settings = make_settings(um_per_pixel=0.5)
    folder = inbox / "ZEN-1"
    folder.mkdir()
    # A multi-page 16-bit TIFF: two good pages and a dark one (rejected, result only).
    tiff_pages = [good_rgb(1), dark_rgb(2), good_rgb(3)]
    tifffile.imwrite(tmp_path / "fields.tif",
                     np.stack([p.astype(np.uint16) * 257 for p in tiff_pages]), photometric="rgb")
    # A CZI: scene 0 acquired as two tiles, scene 1 a Z-stack (blurred, sharp, blurred).
    left, right, sharp = good_rgb(4, 128), good_rgb(5, 128), good_rgb(6, 160)
    write_czi(tmp_path / "slide.czi", {
        0: [((0, 0), 0, left), ((128, 0), 0, right)],
        1: [((1000, 0), z, img) for z, img in
            enumerate([cv2.resize(blurred_rgb(6), (160, 160)), sharp,
                       cv2.resize(blurred_rgb(7), (160, 160))])],
    })
    for name in ("fields.tif", "slide.czi"):
        (tmp_path / name).rename(folder / name)
    with running(settings):
        # Capture queues every page; quality control is the worker's (decode once).
        wait_for(lambda: len(entries(client)) == 6, what="3 TIFF pages + 3 CZI frames queued")
        wait_for(lambda: not any(folder.iterdir()), what="both files archived")
    assert sorted(p.name for p in (settings.archive_dir / "ZEN-1").iterdir()) == [
        "fields.tif", "slide.czi"]
    by_source = {e["source"].rsplit("/", 1)[1]: e for e in entries(client)}
    assert sorted(by_source) == ["fields.tif#p0", "fields.tif#p1", "fields.tif#p2",
                                 "slide.czi#s0t0", "slide.czi#s0t1", "slide.czi#s1"]
    assert all("qc" not in e for e in entries(client))  # the worker is to check them
    for label, page in (("p0", tiff_pages[0]), ("p2", tiff_pages[2])):
        entry = by_source[f"fields.tif#{label}"]
        assert entry["data"].startswith(b"\x89PNG")  # lossless, decodable by the workers
        assert np.abs(decoded(entry).astype(int) - page.astype(int)).max() <= 1
        assert float(entry["um_per_pixel"]) == 0.5  # from config: TIFF has no scale here
    # CZI: BGR converted to RGB exactly, pixel size from the CZI metadata, not config.
    for label, image in (("s0t0", left), ("s0t1", right), ("s1", sharp)):
        entry = by_source[f"slide.czi#{label}"]
        assert np.array_equal(decoded(entry), image), label
        assert float(entry["um_per_pixel"]) == pytest.approx(0.25)
    meta = json.loads(by_source["slide.czi#s1"]["metadata"])
    assert (meta["z"], meta["z_planes"], meta["pixel_type"]) == ("1", "3", "Bgr24")
    assert json.loads(by_source["slide.czi#s0t1"]["metadata"])["tile"] == "1"
    assert analyse_all(settings) == 6
    rejected = [r for r in ResultStore(client).page(None, 100)[0] if r.status == "rejected"]
    assert [(r.reason, r.source.rsplit("/", 1)[1]) for r in rejected] == [
        ("underexposed", "fields.tif#p1")]
    assert rejected[0].quality["dark_fraction"] > 0.9


def test_czi_48_bit_and_grey(tmp_path):
    rgb = good_rgb(8, 96)
    write_czi(tmp_path / "deep.czi", {0: [((0, 0), 0, rgb.astype(np.uint16) * 257)]}, um=None)
    (frame,) = read_czi_path(tmp_path / "deep.czi")
    assert frame.metadata["pixel_type"] == "Bgr48" and frame.um_per_pixel is None
    assert np.array_equal(frame.rgb, rgb)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    write_czi(tmp_path / "grey.czi", {0: [((0, 0), 0, grey)]})
    (frame,) = read_czi_path(tmp_path / "grey.czi", tile_frames=False)
    assert frame.metadata["pixel_type"] == "Gray8"
    assert np.array_equal(frame.rgb, np.repeat(grey[..., None], 3, axis=2))
