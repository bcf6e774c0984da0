"""Hostile and huge input in the watched folder (issue 16): each bad file gets a clear
``rejected`` result and is quarantined, while ordinary frames beside it are queued.

Real files in a real inbox, a real embedded Redis, the capture loop in a thread.
"""

from __future__ import annotations

import os

import numpy as np
import tifffile

from daemon.imaging.frames import frame_id_for
from daemon.imaging.synthetic import jpeg_bomb, png_bomb
from daemon.store.results import ResultStore
from tests.capture.conftest import entries, frame_bytes, wait_for


def rejected(client, specimen: str, name: str, data: bytes):
    return ResultStore(client).get(frame_id_for(specimen, name, data))


def test_bombs_beside_good_frames(client, inbox, make_settings, running, tmp_path):
    settings = make_settings()
    folder = inbox / "BOMB-1"
    folder.mkdir()
    good = {f"good{i}.jpg": frame_bytes(i) for i in range(3)}
    bombs = {"bomb.jpg": jpeg_bomb(20000, 20000), "bomb.png": png_bomb(20000, 20000)}
    for name, data in {**good, **bombs}.items():
        (folder / name).write_bytes(data)
    with running(settings):
        wait_for(lambda: len(entries(client)) == 3, what="the good frames queued")
        for name, data in bombs.items():
            result = wait_for(lambda n=name, d=data: rejected(client, "BOMB-1", n, d),
                              what=f"{name} rejected")
            assert (result.status, result.reason) == ("rejected", "too_large")
            assert "20000x20000" in (result.error or "")
        quarantine = settings.quarantine_dir / "BOMB-1"
        wait_for(lambda: all((quarantine / n).exists() for n in bombs), what="quarantined")
        assert "too_large" in (quarantine / "bomb.jpg.reason.txt").read_text()
    assert {e["source"].rsplit("/", 1)[1] for e in entries(client)} == set(good)


def test_tiff_budgets_pages_and_pixels(client, inbox, make_settings, running, tmp_path):
    settings = make_settings(max_file_pages=4, max_frame_pixels=200 * 200)
    folder = inbox / "TIFF-1"
    folder.mkdir()
    field = np.full((64, 64, 3), 200, np.uint8)
    tifffile.imwrite(folder / "many.tif", np.stack([field] * 6), photometric="rgb")
    tifffile.imwrite(folder / "wide.tif", np.zeros((2, 256, 256), np.uint16))
    (folder / "ok.jpg").write_bytes(frame_bytes(1))
    with running(settings):
        wait_for(lambda: len(entries(client)) == 1, what="the good frame queued")
        many_path = settings.quarantine_dir / "TIFF-1" / "many.tif"
        wait_for(many_path.exists, what="many.tif quarantined")
        many = rejected(client, "TIFF-1", "many.tif", many_path.read_bytes())
        assert many.reason == "too_large" and "6 pages" in many.error
        wide_path = settings.quarantine_dir / "TIFF-1" / "wide.tif"
        wait_for(wide_path.exists, what="wide.tif quarantined")
        wide = rejected(client, "TIFF-1", "wide.tif", wide_path.read_bytes())
        assert wide.reason == "too_large" and "256x256" in wide.error


def test_a_name_that_is_not_utf8_never_stops_capture(client, inbox, make_settings, running):
    settings = make_settings()
    folder = inbox / "NAMES-1"
    folder.mkdir()
    bad_name = os.fsdecode(b"field\xff.jpg")
    data = frame_bytes(7)
    with open(os.fsencode(folder) + b"/field\xff.jpg", "wb") as handle:
        handle.write(data)
    bad_folder = os.fsencode(inbox) + b"/SPEC\xfe"
    os.mkdir(bad_folder)
    with open(bad_folder + b"/f.jpg", "wb") as handle:
        handle.write(frame_bytes(8))
    (folder / "after.jpg").write_bytes(frame_bytes(9))
    with running(settings):
        wait_for(lambda: len(entries(client)) == 1, what="the good frame queued")
        result = wait_for(lambda: rejected(client, "NAMES-1", bad_name, data), what="bad name")
        assert (result.status, result.reason) == ("rejected", "bad_name")
        assert "field\\xff.jpg" in result.error and "\\xff" in result.source
        wait_for(lambda: os.path.exists(os.fsencode(settings.quarantine_dir)
                                        + b"/NAMES-1/field\xff.jpg"), what="quarantined")
        wait_for(lambda: not os.path.exists(bad_folder + b"/f.jpg"), what="bad folder handled")
    assert entries(client)[0]["source"].endswith("after.jpg")


def test_a_tiff_the_workers_cannot_decode_travels_as_png(client, inbox, make_settings,
                                                         running):
    """An LZMA TIFF was read by capture (tifffile) and then 'undecodable' in the worker
    (OpenCV's libtiff has no LZMA): now its frame is queued as PNG."""
    from daemon.imaging.frames import decode_rgb, sniff_format

    settings = make_settings()
    folder = inbox / "LZMA-1"
    folder.mkdir()
    rgb = np.full((64, 64, 3), 200, np.uint8)
    rgb[16:48, 16:48] = (120, 60, 160)
    tifffile.imwrite(folder / "field.tif", rgb, photometric="rgb", compression="lzma")
    with running(settings):
        (entry,) = wait_for(lambda: entries(client), what="the frame queued")
    assert sniff_format(entry["data"]) == "png"
    assert (decode_rgb(entry["data"]) == rgb).all()
