"""Zeiss CZI files (pylibCZIrw): one frame per scene, or per tile of a tiled scene.

* Scenes: each scene (``S``) is one field. With ``capture.czi_tile_frames`` (default) a
  scene acquired as several tiles (a mosaic, ``M``) gives one frame per tile, each the
  camera field as acquired; otherwise one frame per scene (the stitched scene).
* Z-stacks: the sharpest plane (daemon/imaging/quality.py focus score) of each frame is taken;
  the chosen ``z`` and the number of planes are in the frame's metadata.
* Channels and time: ``C=0`` and ``T=0`` only (a brightfield RGB acquisition has one
  channel; further time points are not separate fields).
* Pixel types: ``Bgr24``/``Bgr48`` are BGR and are converted to RGB; ``Gray8/16`` become
  grey RGB; 16-bit and float data are scaled to 8 bits by capture/tiff.py's rule, with
  the camera's bit depth from ``Information/Image/ComponentBitCount`` when ZEN wrote it
  (``capture.tiff_bit_depth`` overrides it; without either, the automatic rule per frame).
* Pixel size: ``Metadata/Scaling/Items/Distance[@Id=X]`` (metres) becomes ``um_per_pixel``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from capture.tiff import Page, to_rgb, to_uint8
from daemon.imaging.frames import FrameRejected, check_pixels
from daemon.imaging.quality import focus_score, grey


def _scale_um(metadata: dict) -> float | None:
    try:
        items = metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
    except (KeyError, TypeError):
        return None
    if isinstance(items, dict):
        items = [items]
    for item in items:
        if item.get("@Id") == "X":
            try:
                value = float(item.get("Value"))
            except (TypeError, ValueError):
                return None
            return value * 1e6 if value > 0 else None
    return None


def _bit_count(metadata: dict) -> int | None:
    """ZEN's ``Information/Image/ComponentBitCount`` (e.g. 12 for a 12-bit camera), if any."""
    try:
        image = metadata["ImageDocument"]["Metadata"]["Information"]["Image"]
    except (KeyError, TypeError):
        return None
    value = image.get("ComponentBitCount")
    if value is None:
        channel = image.get("Dimensions", {}).get("Channels", {}).get("Channel")
        if isinstance(channel, list):
            channel = channel[0] if channel else {}
        value = channel.get("ComponentBitCount") if isinstance(channel, dict) else None
    try:
        bits = int(value)
    except (TypeError, ValueError):
        return None
    return bits if 9 <= bits <= 16 else None


def _tiles(doc, rect, plane: dict) -> list[tuple[int, int, int, int]]:
    found: list[tuple[int, int, int, int]] = []

    def collect(_index, info) -> bool:
        r = info.logicalRect
        box = (r.x, r.y, r.w, r.h)
        inside = (r.x >= rect.x and r.y >= rect.y and r.x + r.w <= rect.x + rect.w
                  and r.y + r.h <= rect.y + rect.h)
        if inside and box not in found:
            found.append(box)
        return True

    doc.enumerate_subblocks_subset(collect, plane=plane, roi=(rect.x, rect.y, rect.w, rect.h),
                                   only_layer0=True)
    return sorted(found, key=lambda b: (b[1], b[0]))


def read_czi_path(path: Path, tile_frames: bool = True, bit_depth: int | None = None,
                  max_pixels: int | None = None, max_frames: int | None = None
                  ) -> Iterator[Page]:
    """Frames of a CZI file, read one at a time; each region's size (from the subblock
    directory) is checked against ``max_pixels`` and the number of frames against
    ``max_frames`` before any pixel is read (FrameRejected 'too_large')."""
    from pylibCZIrw import czi as pyczi

    count = 0
    with pyczi.open_czi(str(path)) as doc:
        um = _scale_um(doc.metadata)
        if bit_depth is None:
            bit_depth = _bit_count(doc.metadata)
        bbox = doc.total_bounding_box
        z_lo, z_hi = bbox.get("Z", (0, 1))
        c0 = bbox.get("C", (0, 1))[0]
        t0 = bbox.get("T", (0, 1))[0]
        pixel_type = doc.pixel_types.get(c0, next(iter(doc.pixel_types.values()), ""))
        scenes = doc.scenes_bounding_rectangle or {0: doc.total_bounding_rectangle}
        for scene, rect in sorted(scenes.items()):
            base = {"C": c0, "Z": z_lo, "T": t0}
            tiles = _tiles(doc, rect, base) if tile_frames else []
            rois = tiles if len(tiles) > 1 else [(rect.x, rect.y, rect.w, rect.h)]
            for k, roi in enumerate(rois):
                check_pixels(roi[2], roi[3], max_pixels, f"CZI scene {scene} region")
                count += 1
                if max_frames is not None and count > max_frames:
                    raise FrameRejected("too_large", f"CZI has more than {max_frames} frames "
                                        "(capture.max_file_pages)")
                best: tuple[float, int, np.ndarray] | None = None
                for z in range(z_lo, z_hi):
                    raw = doc.read(roi=roi, plane={"C": c0, "Z": z, "T": t0})
                    scaled, rule = to_uint8(raw, bit_depth)
                    rgb = to_rgb(scaled)
                    if pixel_type.startswith("Bgr"):
                        rgb = np.ascontiguousarray(rgb[..., ::-1])
                    score = focus_score(grey(rgb)) if z_hi - z_lo > 1 else 0.0
                    if best is None or score > best[0]:
                        best = (score, z, rgb)
                assert best is not None
                label = f"s{scene}" if len(rois) == 1 else f"s{scene}t{k}"
                meta = {"scene": str(scene), "pixel_type": pixel_type, "z": str(best[1]),
                        "z_planes": str(z_hi - z_lo), "roi": ",".join(map(str, roi))}
                if len(rois) > 1:
                    meta["tile"] = str(k)
                if raw.dtype != np.uint8:
                    meta["scaling"] = rule
                yield Page(label, best[2], um, meta)
                del best
    if not count:
        raise ValueError("CZI has no image data")


def read_czi(data: bytes, tile_frames: bool = True, bit_depth: int | None = None,
             max_pixels: int | None = None, max_frames: int | None = None) -> Iterator[Page]:
    """CZI bytes -> frames, one at a time (libCZI reads files, so the bytes go through a
    temporary file, removed once the frames are read or the reader is closed)."""
    handle, name = tempfile.mkstemp(suffix=".czi")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        yield from read_czi_path(Path(name), tile_frames, bit_depth, max_pixels, max_frames)
    finally:
        os.unlink(name)
