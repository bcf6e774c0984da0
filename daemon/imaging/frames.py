"""Encoded frames: cheap structural checks, decoding, and the reasons a frame is refused.

Reason codes are a small fixed set so they can label metrics.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".czi")

REJECT_REASONS = (
    "empty_file",
    "not_an_image",
    "truncated",
    "undecodable",
    "too_large",
    "unreadable",
    "bad_location",
    # frame quality control (capture/quality.py)
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
    if kind == "png" and b"IEND" not in data[-32:]:
        raise FrameRejected("truncated", "PNG has no IEND chunk: the file is truncated")
    return kind


def decode_rgb(data: bytes, max_bytes: int | None = None) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB. Raises FrameRejected with a reason."""
    check_encoded(data, max_bytes)
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise FrameRejected("undecodable", "the image decoder could not read this file")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise FrameRejected("undecodable", f"image is only {image.shape[1]}x{image.shape[0]} px")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def frame_id_for(specimen_id: str, name: str, data: bytes) -> str:
    """Stable id of a frame: the same file (specimen, name, bytes) always gets the same id.

    A restart therefore recognises frames it has already queued or stored.
    """
    digest = hashlib.sha256()
    digest.update(specimen_id.encode())
    digest.update(b"\x00")
    digest.update(name.encode())
    digest.update(b"\x00")
    digest.update(data)
    return digest.hexdigest()[:24]
