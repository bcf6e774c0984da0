"""Encoded frames: cheap structural checks, decoding, and the reasons a frame is refused.

Reason codes are a small fixed set so they can label metrics.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass

# OpenCV's own ceiling on decoded pixels, a backstop behind the header checks below (it is
# read at OpenCV's first decode, so it must be in the environment before that).
MAX_DECODER_PIXELS = 1 << 28
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_DECODER_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".czi")

REJECT_REASONS = (
    "empty_file",
    "not_an_image",
    "truncated",
    "undecodable",
    "too_large",
    "unreadable",
    "bad_location",
    "bad_name",  # a file name that is not valid UTF-8 (capture)
    "bad_scale",  # a µm/pixel that is not finite or not within PHYSICAL_UM_PER_PIXEL
    # frame quality control (daemon/imaging/quality.py)
    "overexposed",
    "underexposed",
    "empty_field",
    "out_of_focus",
)


class FrameRejected(Exception):
    """A frame that cannot be analysed; ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message


def sniff_format(data: bytes) -> str | None:
    """Image format from magic bytes: 'jpeg', 'png', 'tiff', 'bmp' or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data.startswith(b"ZISRAWFILE"):
        return "czi"
    return None


def check_encoded(data: bytes, max_bytes: int | None = None) -> str:
    """Structural checks without decoding; returns the format or raises FrameRejected.

    Catches what decoders let through silently: a JPEG without its end-of-image marker or a
    PNG without IEND decodes to a partly grey image instead of failing.
    """
    if len(data) == 0:
        raise FrameRejected("empty_file", "the file is empty (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise FrameRejected("too_large", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    kind = sniff_format(data)
    if kind is None:
        raise FrameRejected(
            "not_an_image", "content is not a JPEG, PNG, TIFF, BMP or CZI image (magic bytes)"
        )
    if kind == "jpeg" and b"\xff\xd9" not in data[-64:]:
        raise FrameRejected("truncated", "JPEG has no end-of-image marker: the file is truncated")
    if kind == "jpeg":
        _jpeg_walk(data, entropy=True)
    if kind == "png" and b"IEND" not in data[-32:]:
        raise FrameRejected("truncated", "PNG has no IEND chunk: the file is truncated")
    return kind


@dataclass(frozen=True)
class Geometry:
    """What a file's header says, read without decoding a pixel."""

    width: int  # of its largest page
    height: int
    pages: int = 1  # full-resolution pages (TIFF); 1 for other formats
    total_pixels: int = 0  # over all pages

    @property
    def pixels(self) -> int:
        return self.width * self.height


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOFn segment; walks segment lengths, decodes nothing."""
    return _jpeg_walk(data, entropy=False)


def _jpeg_walk(data: bytes, entropy: bool) -> tuple[int, int]:
    """Walk a JPEG's segments; with ``entropy`` also its compressed scans.

    In a scan a 0xFF byte must be followed by 0x00 (stuffing), a restart marker in sequence
    (RST0..RST7) or a marker that ends the scan: what libjpeg only warns about ("Corrupt
    JPEG data: ... extraneous bytes", bad restart markers) is an error here, so random bytes
    written into a file are caught before they are classified.
    """
    i, n = 2, len(data)
    size: tuple[int, int] | None = None
    while i + 2 <= n:
        if data[i] != 0xFF:
            raise FrameRejected("undecodable", f"JPEG data is corrupt (no marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        if marker == 0xD9:
            break
        if i + 4 > n:
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            raise FrameRejected("undecodable", "JPEG data is corrupt (segment length)")
        if marker in _SOF_MARKERS and size is None:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if width == 0 or height == 0:
                raise FrameRejected("undecodable", "JPEG header gives no frame size")
            size = (width, height)
            if not entropy:
                return size
        i += 2 + length
        if marker != 0xDA:
            continue
        if size is None:
            break
        # entropy-coded data of one scan, up to the next marker
        expected_rst = 0
        while True:
            j = data.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                raise FrameRejected("truncated", "JPEG scan data runs to the end of the file")
            follower = data[j + 1]
            if follower == 0x00:
                i = j + 2
                continue
            if 0xD0 <= follower <= 0xD7:
                if follower - 0xD0 != expected_rst:
                    raise FrameRejected(
                        "undecodable", f"JPEG data is corrupt (restart marker out of sequence "
                        f"at byte {j})")
                expected_rst = (expected_rst + 1) % 8
                i = j + 2
                continue
            if follower == 0xFF:  # fill bytes before a marker
                k = j
                while k + 1 < n and data[k + 1] == 0xFF:
                    k += 1
                i = k
                if k + 1 < n and data[k + 1] in (0x00, *range(0xD0, 0xD8)):
                    raise FrameRejected("undecodable",
                                        f"JPEG data is corrupt (stray 0xFF bytes at {j})")
                break
            if follower in (0xD9, 0xC4, 0xDA, 0xDB, 0xDD, 0xCC) or 0xE0 <= follower <= 0xEF \
                    or follower == 0xFE:
                i = j
                break
            raise FrameRejected("undecodable", f"JPEG data is corrupt (invalid marker "
                                f"0xFF{follower:02X} in the scan at byte {j})")
    if size is None:
        raise FrameRejected("undecodable", "JPEG has no frame header (SOF) before its image data")
    if entropy and (i + 2 > n or data[i : i + 2] != b"\xff\xd9"):
        raise FrameRejected("truncated", "JPEG has no end-of-image marker after its scans")
    return size


def _tiff_geometry(data: bytes) -> Geometry:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            sizes = []
            for page in tif.pages:  # reads each page's IFD (tags) only
                if getattr(page, "is_reduced", False):
                    continue
                shape = page.shape
                if page.ndim == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
                    shape = shape[1:]  # planar
                sizes.append((int(shape[1]) if len(shape) > 1 else 1, int(shape[0])))
    except FrameRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds
        raise FrameRejected("undecodable", f"cannot read the TIFF header: {exc}") from exc
    if not sizes:
        raise FrameRejected("undecodable", "TIFF has no image pages")
    width, height = max(sizes, key=lambda s: s[0] * s[1])
    return Geometry(width, height, len(sizes), sum(w * h for w, h in sizes))


def geometry(data: bytes, kind: str | None = None) -> Geometry | None:
    """Frame size (and pages) from the header of a JPEG, PNG, BMP or TIFF; None for CZI.

    Raises FrameRejected('undecodable') when the header cannot be read.
    """
    kind = kind or sniff_format(data)
    if kind == "jpeg":
        width, height = _jpeg_size(data)
    elif kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise FrameRejected("undecodable", "PNG has no IHDR header")
        width, height = struct.unpack(">II", data[16:24])
    elif kind == "bmp":
        (header,) = struct.unpack("<I", data[14:18])
        if header == 12:
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        width, height = abs(width), abs(height)
    elif kind == "tiff":
        return _tiff_geometry(data)
    else:
        return None
    return Geometry(width, height, 1, width * height)


def check_pixels(width: int, height: int, max_pixels: int | None, what: str = "frame") -> None:
    """Raise FrameRejected('too_large') for a frame above the pixel budget (before decoding)."""
    limit = MAX_DECODER_PIXELS if max_pixels is None else min(max_pixels, MAX_DECODER_PIXELS)
    if width * height > limit:
        raise FrameRejected(
            "too_large", f"{what} of {width}x{height} = {width * height} pixels exceeds the "
            f"limit of {limit} pixels (capture.max_frame_pixels)")


def check_geometry(data: bytes, kind: str, max_pixels: int | None,
                   max_pages: int | None = None) -> Geometry | None:
    """The header's frame size and page count against the budgets; nothing is decoded."""
    found = geometry(data, kind)
    if found is None:
        return None
    check_pixels(found.width, found.height, max_pixels,
                 "frame" if found.pages == 1 else "largest page")
    if max_pages is not None and found.pages > max_pages:
        raise FrameRejected("too_large", f"file has {found.pages} pages; the limit is "
                            f"{max_pages} (capture.max_file_pages)")
    return found


def decode_rgb(data: bytes, max_bytes: int | None = None, max_pixels: int | None = None
               ) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB. Raises FrameRejected with a reason.

    The header's size is checked against ``max_pixels`` before anything is decoded.
    """
    kind = check_encoded(data, max_bytes)
    check_geometry(data, kind, max_pixels)
    return _decode_checked(data, cv2.IMREAD_COLOR)


#: libjpeg's DCT scaling: a JPEG decodes directly at 1/2, 1/4 or 1/8 of its size, several
#: times faster than in full (measured: 1920x1280 q90, 4.6 ms full, 3.3 ms at 1/2).
REDUCTIONS = (8, 4, 2)
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


def reduction_for(factor: float | None) -> int:
    """The largest r in (8, 4, 2, 1) with ``r <= 1 / factor``: a frame that will be resized by
    ``factor`` (target / frame pixels) can be decoded at 1/r and never enlarged afterwards.
    ``None`` (factor not known before decoding) and factors >= 1/2 give 1."""
    if factor is None or not factor > 0:
        return 1
    for r in REDUCTIONS:
        if r * factor <= 1.0:
            return r
    return 1


@dataclass(frozen=True)
class Decoded:
    """A decoded frame: ``image`` (h, w, 3) uint8 RGB at 1/``reduction`` of the frame's size
    ``width`` x ``height`` (pixels of the original, as in its header); for a reduction r,
    h = ceil(height / r) and w = ceil(width / r) (libjpeg rounds up). ``factor``: the
    factor (models' / frame pixels) it was decoded for; None when not known."""

    image: np.ndarray
    reduction: int
    width: int
    height: int
    factor: float | None = None


def decode_reduced(data: bytes, factor: float | None, max_bytes: int | None = None,
                   max_pixels: int | None = None) -> Decoded:
    """Encoded bytes of a frame to be resized by ``factor`` (frame -> models' pixels; None:
    not known yet) -> :class:`Decoded`, at the reduction :func:`reduction_for` gives.

    Only JPEGs decode reduced (in the DCT, so it saves time); other formats, and JPEGs whose
    factor is unknown or >= 1/2, decode in full (reduction 1), exactly as :func:`decode_rgb`.
    The budgets apply to the full frame's header, before anything is decoded. Resizing the
    result to ``(round(width * factor), round(height * factor))`` gives the frame at the
    models' scale within a few grey levels of the full decode resized the same way (mean
    absolute difference 0.4 grey levels at r = 2 on enlarged fields), and boxes found there
    map to the original's pixels by ``factor`` alone (``Rescaler.to_frame``).
    """
    kind = check_encoded(data, max_bytes)
    found = check_geometry(data, kind, max_pixels)
    reduction = reduction_for(factor) if kind == "jpeg" and found is not None else 1
    if reduction == 1:
        image = _decode_checked(data, cv2.IMREAD_COLOR)
        return Decoded(image, 1, image.shape[1], image.shape[0], factor)
    assert found is not None
    if found.width < 8 or found.height < 8:  # refused with the full decode's message
        return decode_reduced(data, None, max_bytes, max_pixels)
    image = _decode_checked(data, _REDUCED_FLAGS[reduction], min_side=1)
    width, height = found.width, found.height
    reduced = (-(-height // reduction), -(-width // reduction))
    if image.shape[:2] == reduced[::-1]:
        width, height = height, width  # EXIF orientation turned it: sizes as decoded
    elif image.shape[:2] != reduced:  # not what libjpeg's scaling gives: trust nothing
        return decode_reduced(data, None, max_bytes, max_pixels)
    return Decoded(image, reduction, width, height, factor)


#: OpenCV >= 4.10 decodes straight to RGB (libjpeg-turbo writes RGB itself): the same pixels
#: as BGR then cvtColor (checked for JPEG at every reduction, PNG, BMP, TIFF, WebP, grey,
#: RGBA, 16-bit), without a pass over the frame (about 6 % of a JPEG's decode)
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _decode_checked(data: bytes, flags: int, min_side: int = 8) -> np.ndarray:
    buffer = np.frombuffer(data, dtype=np.uint8)
    rgb = _RGB is not None
    if rgb:
        flags = (flags & ~cv2.IMREAD_COLOR) | _RGB
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as exc:  # OpenCV's own pixel ceiling, or a decoder failure
        raise FrameRejected("undecodable", f"the image decoder failed: {exc}") from exc
    if image is None or image.size == 0:
        raise FrameRejected("undecodable", "the image decoder could not read this file")
    if image.shape[0] < min_side or image.shape[1] < min_side:
        raise FrameRejected("undecodable", f"image is only {image.shape[1]}x{image.shape[0]} px")
    return image if rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def printable_name(name: str) -> str:
    """A file name safe for JSON, logs and Redis: undecodable bytes as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def frame_id_for(specimen_id: str, name: str, data: bytes) -> str:
    """Stable id of a frame: the same file (specimen, name, bytes) always gets the same id.

    A restart therefore recognises frames it has already queued or stored.
    """
    digest = hashlib.sha256()
    digest.update(specimen_id.encode())
    digest.update(b"\x00")
    # A file name that is not UTF-8 arrives with surrogate escapes (os.fsdecode): hash its
    # original bytes, never fail on it.
    digest.update(name.encode("utf-8", "surrogateescape"))
    digest.update(b"\x00")
    digest.update(data)
    return digest.hexdigest()[:24]
