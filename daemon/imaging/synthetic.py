"""Synthetic smear fields made in code: for tests and the benchmark (no patient data)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

BACKGROUND_RGB = (232, 226, 238)
RED_CELL_RGB = (214, 168, 184)
WHITE_CELL_RGB = (118, 62, 160)


def smear_field(
    rng: np.random.Generator,
    size: tuple[int, int] = (224, 224),
    white_cells: int = 2,
    red_cells: int = 25,
    cell_radius: tuple[int, int] = (11, 15),
    enlargement: float = 1.0,
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """An RGB (H, W, 3) uint8 field and the (x, y, r) of its white cells.

    Pale background, pink red cells with central pallor, purple round white cells placed
    without overlapping each other, plus mild noise and blur like a camera frame.
    ``enlargement``: every cell's radius times this (a camera whose pixels are that much
    smaller than the models'); 1 draws exactly what it always did.
    """
    k = enlargement
    height, width = size
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    for _ in range(red_cells):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = round(int(rng.integers(7, 10)) * k)
        cv2.circle(image, (x, y), r, RED_CELL_RGB, -1, lineType=cv2.LINE_AA)
        cv2.circle(image, (x, y), r // 2, (224, 200, 210), -1, lineType=cv2.LINE_AA)
    placed: list[tuple[int, int, int]] = []
    low, high = cell_radius
    attempts = 0
    while len(placed) < white_cells and attempts < 500:
        attempts += 1
        r = round(int(rng.integers(low, high + 1)) * k)
        x = int(rng.integers(r + 2, width - r - 2))
        y = int(rng.integers(r + 2, height - r - 2))
        gap = round(6 * k)
        if all((x - px) ** 2 + (y - py) ** 2 > (r + pr + gap) ** 2 for px, py, pr in placed):
            placed.append((x, y, r))
    for x, y, r in placed:
        cv2.circle(image, (x, y), r, WHITE_CELL_RGB, -1, lineType=cv2.LINE_AA)
        cv2.circle(image, (x + r // 4, y - r // 4), max(2, r // 3), (90, 40, 130), -1)
    noise = rng.normal(0, 3, image.shape)
    image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(image, (3, 3), 0), placed


def encode(image_rgb: np.ndarray, ext: str = ".jpg", quality: int = 92) -> bytes:
    """RGB array -> encoded file bytes (.jpg, .png, .bmp, .tif)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode {ext}")
    return buffer.tobytes()


def red_cell_field(rng: np.random.Generator, diameter: float = 16.0, count: int = 30,
                   size: tuple[int, int] = (224, 224), pallor: bool = True) -> np.ndarray:
    """An RGB field of ``count`` separate red cells of a known ``diameter`` (pixels), with a
    central pallor if asked, and one white cell: a ruler with a known answer."""
    height, width = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND_RGB
    radius = diameter / 2
    centres: list[tuple[int, int]] = []
    for _ in range(50 * count):
        if len(centres) == count:
            break
        x = int(rng.integers(int(radius) + 1, width - int(radius) - 1))
        y = int(rng.integers(int(radius) + 1, height - int(radius) - 1))
        if all((x - a) ** 2 + (y - b) ** 2 > (diameter + 2) ** 2 for a, b in centres):
            centres.append((x, y))
    shift = 4  # sub-pixel radii: cv2 draws with fixed-point coordinates
    for x, y in centres:
        centre = (x << shift, y << shift)
        cv2.circle(image, centre, round(radius * (1 << shift)), RED_CELL_RGB, -1, cv2.LINE_AA,
                   shift)
        if pallor:
            cv2.circle(image, centre, round(radius * 0.4 * (1 << shift)), (224, 200, 210), -1,
                       cv2.LINE_AA, shift)
    cv2.circle(image, (width // 2, height // 2), int(diameter * 0.7), WHITE_CELL_RGB, -1)
    return image


# --- hostile input for tests and `leukoscope reliability` (issue 16) ---------------------

def jpeg_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes whose header says ``width`` x ``height``: a decoder would allocate
    the whole frame (20000x20000 RGB: 1.2 GB) and fill it from almost no data."""
    data = bytearray(encode(np.full((16, 16, 3), 128, np.uint8)))
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    data[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def png_bomb(width: int, height: int) -> bytes:
    """A genuine PNG (valid CRCs, valid zlib) of 1-bit black pixels: tiny on disk, ``width``
    x ``height`` x 3 bytes once decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    row = b"\x00" + bytes((width + 7) // 8)
    packer = zlib.compressobj(9)
    raw = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
