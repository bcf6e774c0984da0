"""From encoded bytes to queued frames, the same way for every source.

:func:`expand` turns one file or upload into frames: a JPEG/PNG/BMP or a plain 8-bit
single-page TIFF is one frame that travels as its original bytes; a CZI, a multi-page or
a >8-bit TIFF becomes one frame per page/scene/tile (see capture/tiff.py, capture/czi.py)
that travels as lossless PNG bytes of the 8-bit RGB frame, since workers decode with
OpenCV. A single-frame file is not decoded here (its size comes from its header): the
worker decodes it once, for quality control and analysis together. :class:`Intake` queues
frames; where the pixels are at hand anyway (HTTP push, live cameras) it runs quality
control first and stores a ``rejected`` result with the measured values and the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import redis

from capture.tiff import Page, iter_tiff, plain_tiff
from daemon.domain.manifest import ManifestError, load_manifest
from daemon.domain.results import FrameResult
from daemon.imaging.frames import (
    FrameRejected,
    check_encoded,
    check_geometry,
    decode_rgb,
    frame_id_for,
)
from daemon.imaging.quality import Quality, Thresholds, assess
from daemon.imaging.scale import Rescaler
from daemon.settings import Settings
from daemon.store import counters
from daemon.store.disk import IntakeRoom
from daemon.store.queue import FrameQueue
from daemon.store.results import ResultStore

log = logging.getLogger(__name__)


class SourceFrame:
    """A frame and the bytes that will be queued for it.

    ``rgb`` ((H, W, 3) uint8 RGB) is decoded from ``data`` on first use only: capture queues
    single-frame files without decoding them (the worker decodes once); the API's image
    views and HTTP push's quality control read it.
    """

    def __init__(self, rgb: np.ndarray | None, data: bytes, label: str | None = None,
                 um_per_pixel: float | None = None, metadata: dict[str, str] | None = None,
                 um_per_pixel_source: str = "file",
                 decode: Callable[[], np.ndarray] | None = None) -> None:
        self._rgb = rgb
        self._decode = decode
        self.data = data  # encoded bytes the worker decodes
        self.label = label  # None: the file itself; else the page/scene/tile in the file
        self.um_per_pixel = um_per_pixel
        self.metadata: dict[str, str] = metadata or {}
        #: where ``um_per_pixel`` came from: the file's own metadata, or a rig/push setting
        self.um_per_pixel_source = um_per_pixel_source

    @property
    def decoded(self) -> bool:
        return self._rgb is not None

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            if self._decode is None:
                raise FrameRejected("undecodable", "no pixels and no way to decode them")
            self._rgb = self._decode()
        return self._rgb


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FrameRejected("undecodable", "could not encode the frame as PNG")
    return buffer.tobytes()


class Frames:
    """The frames of one file, produced one at a time as they are iterated.

    ``container`` is known before any pixel is decoded (a CZI, a multi-page or >8-bit
    TIFF); the pages of a container are decoded, converted and handed out one by one, so a
    file of many pages never sits in memory whole. Iterating raises FrameRejected for a page
    that cannot be read (the pages before it have been handed out).
    """

    def __init__(self, container: bool, produce: Iterator[SourceFrame]) -> None:
        self.container = container
        self._produce = produce

    def __iter__(self) -> Iterator[SourceFrame]:
        return self._produce


def _pages(pages: Iterator[Page], what: str) -> Iterator[SourceFrame]:
    try:
        for page in pages:
            if page.rgb.shape[0] < 8 or page.rgb.shape[1] < 8:
                raise FrameRejected("undecodable", f"{page.label} is only {page.rgb.shape[1]}x"
                                    f"{page.rgb.shape[0]} px")
            yield SourceFrame(page.rgb, encode_png(page.rgb), page.label, page.um_per_pixel,
                              page.metadata)
    except FrameRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile and libCZI raise many kinds
        raise FrameRejected("undecodable", f"cannot read {what}: {exc}") from exc


def expand(data: bytes, settings: Settings) -> Frames:
    """Frames of one file's bytes; raises FrameRejected (not_an_image, truncated, too_large...).

    Sizes and page counts are read from the header and checked against
    ``capture.max_frame_pixels`` and ``capture.max_file_pages`` before anything is decoded.
    """
    capture = settings.capture
    kind = check_encoded(data, capture.max_frame_bytes)
    found = check_geometry(data, kind, capture.max_frame_pixels, capture.max_file_pages)
    if kind == "czi":
        from capture.czi import read_czi

        return Frames(True, _pages(read_czi(
            data, capture.czi_tile_frames, capture.tiff_bit_depth, capture.max_frame_pixels,
            capture.max_file_pages), "CZI"))
    if kind == "tiff":
        assert found is not None
        try:
            plain = plain_tiff(data)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds
            raise FrameRejected("undecodable", f"cannot read TIFF: {exc}") from exc
        if plain:  # travels as its own bytes; decoded (by the worker) only when needed
            return Frames(False, iter([SourceFrame(None, data, decode=lambda: _plain_page(
                data, capture.tiff_bit_depth))]))
        return Frames(True, _pages(iter_tiff(data, capture.tiff_bit_depth, found.pages), "TIFF"))
    # Header checks are done; the worker's own decoder reads it, here only when asked to.
    return Frames(False, iter([SourceFrame(None, data, decode=lambda: decode_rgb(
        data, max_pixels=capture.max_frame_pixels))]))


def _plain_page(data: bytes, bit_depth: int | None) -> np.ndarray:
    try:
        (page,) = iter_tiff(data, bit_depth, 1)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds
        raise FrameRejected("undecodable", f"cannot read TIFF: {exc}") from exc
    return page.rgb


@dataclass
class Offer:
    """What became of one frame: 'new', 'queued', 'stored' or 'rejected'."""

    outcome: str
    frame_id: str
    quality: Quality


def qc_rescaler(settings: Settings) -> Rescaler:
    """The models' scale for quality control (from the segmenter manifest; without one, QC
    runs on frames as captured)."""
    try:
        return Rescaler(load_manifest(settings.models.segmenter, verify=False).scale)
    except ManifestError as exc:
        log.warning("no model scale for QC: %s", exc)
        return Rescaler(None)


def assess_at_model_scale(rgb: np.ndarray, um_per_pixel: float | None, rescaler: Rescaler,
                          qc: Thresholds, rig: str | None = None) -> Quality:
    """``assess`` on the frame brought to the models' scale (its own scale, else red cells)."""
    scale = rescaler.resolve(rgb, um_per_pixel, rig=rig)
    return assess(Rescaler.apply(rgb, scale.factor), qc)


class Intake:
    """Quality control, then queue or store a rejection (used by every source)."""

    def __init__(self, settings: Settings, client: redis.Redis, queue: FrameQueue | None = None,
                 results: ResultStore | None = None, rig_id: str | None = None) -> None:
        self.settings = settings
        self.client = client
        self.queue = queue or FrameQueue.for_settings(client, settings)
        self.results = results or ResultStore(client)
        # Free space on the data disk: pushes and capture stop before Redis cannot write.
        self.disk_room = IntakeRoom(settings.data_dir, settings.queue.min_free_bytes)
        self.rig_id = rig_id or settings.capture.rig_id
        self._scale: Rescaler | None = None

    def scale_of(self, frame: SourceFrame) -> float | None:
        return frame.um_per_pixel or self.settings.capture.um_per_pixel

    @property
    def rescaler(self) -> Rescaler:
        """The models' scale and the rigs' red-cell histories quality control runs with."""
        if self._scale is None:
            self._scale = qc_rescaler(self.settings)
        return self._scale

    def check(self, frame: SourceFrame) -> Quality:
        """QC at the models' scale (focus and stain thresholds hold for any camera)."""
        return assess_at_model_scale(frame.rgb, self.scale_of(frame), self.rescaler,
                                     self.settings.capture.qc, self.rig_id)

    def offer(self, frame: SourceFrame, frame_id: str, specimen_id: str, source: str,
              captured_at: float | None = None, metadata: dict[str, str] | None = None,
              quality: Quality | None = None, check: bool = True,
              scale_shared: bool = False) -> Offer:
        """QC ``frame`` (unless ``quality`` is given) and queue it or store its rejection.

        ``check=False`` queues it unchecked: the worker runs quality control where it
        decodes the frame (files from the watched folder, issue 15: decode once).
        ``scale_shared``: the frame's red-cell diameter already went to its rig's shared
        history (HTTP push), so the worker does not append it again.
        """
        checked = check or quality is not None
        if quality is None:
            quality = self.check(frame) if check else Quality()
        meta = {**frame.metadata, **(metadata or {})}
        if frame.um_per_pixel and frame.um_per_pixel_source == "file":
            meta["um_per_pixel_source"] = "file"  # the worker's default is "configured"
        meta = meta or None
        now = time.time() if captured_at is None else captured_at
        if not quality.ok:
            assert quality.reason is not None and quality.message is not None
            self.store_rejected(frame_id, specimen_id, source, quality.reason, quality.message,
                                quality.values, self.scale_of(frame), meta, now)
            return Offer("rejected", frame_id, quality)
        outcome = self.queue.enqueue(frame_id, specimen_id, source, self.rig_id, frame.data,
                                     now, um_per_pixel=self.scale_of(frame), metadata=meta,
                                     qc_done=checked and self.settings.capture.qc.enabled,
                                     scale_shared=scale_shared)
        return Offer(outcome, frame_id, quality)

    def store_rejected(self, frame_id: str, specimen_id: str, source: str, reason: str,
                       message: str, quality: dict[str, float] | None = None,
                       um_per_pixel: float | None = None, metadata: dict[str, str] | None = None,
                       captured_at: float | None = None) -> bool:
        """Store a 'rejected' result (counted once, by reason); True if it was new."""
        now = time.time()
        result = FrameResult(
            frame_id=frame_id, specimen_id=specimen_id, source=source, rig_id=self.rig_id,
            status="rejected", error=message, reason=reason,
            captured_at=now if captured_at is None else captured_at, completed_at=now,
            models={}, quality=quality, um_per_pixel=um_per_pixel, metadata=metadata,
        )
        captured = counters.counter("leukoscope_frames_captured_total", {"rig": self.rig_id})
        new = self.results.store(result, extra=captured)
        if new:
            log.warning("frame rejected", extra={
                "frame_id": frame_id, "specimen_id": specimen_id, "reason": reason,
                "detail": message, "quality": quality, "source": source})
        return new


def derived_frame_id(specimen_id: str, name: str, label: str | None, file_data: bytes) -> str:
    """Id of a frame: of the file itself, or of page/scene/tile ``label`` inside it."""
    return frame_id_for(specimen_id, name if label is None else f"{name}#{label}", file_data)
