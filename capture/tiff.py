"""TIFF frames (tifffile): 16-bit and multi-page files, scaled to 8-bit by a documented rule.

One frame per page: a multi-page TIFF (a series of fields, a Z-stack, a time series) gives
one frame per full-resolution page; reduced-resolution pages (thumbnails, pyramid levels)
are skipped.

8-bit rule (:func:`to_uint8`), never clipping:

* ``uint8``: unchanged.
* unsigned integers wider than 8 bits: ``round(v * 255 / (2**bits - 1))`` where ``bits`` is
  ``capture.tiff_bit_depth`` when set, else the smallest of 10, 12, 14, 16 (then the value's
  own bit length) that holds the frame's maximum. Cameras write 10-, 12- or 14-bit data
  into 16-bit files; scaling by the full 16-bit range would make those frames nearly black,
  scaling by the frame's maximum would make brightness depend on content. A configured
  depth that the data exceeds is not used (that would clip): the automatic rule applies and
  the frame's metadata says so. In a multi-page TIFF the automatic depth is chosen once
  for the whole file (from its brightest page), so pages stay comparable.
* floats: ``v * 255`` when all values lie in [0, 1], otherwise linear from the frame's
  minimum to its maximum; signed integers: linear from minimum to maximum.

Channels: grey frames are repeated to RGB, RGBA drops alpha, planar (3, H, W) is made
interleaved. TIFF stores RGB in RGB order (no BGR swap).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

AUTO_DEPTHS = (10, 12, 14, 16)


@dataclass
class Page:
    """One frame read from a container file (TIFF page, CZI scene or tile)."""

    label: str  # stable within the file: "p0", "s1", "s0t3"
    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    um_per_pixel: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def to_uint8(array: np.ndarray, bit_depth: int | None = None) -> tuple[np.ndarray, str]:
    """Scale any pixel type to uint8 by the rule above; returns the array and the rule used."""
    if array.dtype == np.uint8:
        return array, "uint8"
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255, "bool"
    if np.issubdtype(array.dtype, np.unsignedinteger):
        top = int(array.max()) if array.size else 0
        bits = None
        rule = ""
        if bit_depth is not None:
            if top <= 2**bit_depth - 1:
                bits = bit_depth
                rule = f"{bit_depth}-bit (configured)"
            else:
                rule = f"configured {bit_depth}-bit exceeded (max {top}); "
        if bits is None:
            bits = next((b for b in AUTO_DEPTHS if top <= 2**b - 1), max(1, top.bit_length()))
            rule += f"{bits}-bit (auto)"
        scaled = np.rint(array.astype(np.float64) * (255.0 / (2**bits - 1)))
        return scaled.astype(np.uint8), rule
    data = array.astype(np.float64)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return np.rint(data * 255.0).astype(np.uint8), "float [0,1]"
    span = high - low if high > low else 1.0
    return np.rint((data - low) * (255.0 / span)).astype(np.uint8), f"linear {low:g}..{high:g}"


def to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) or planar (3|4, H, W) -> (H, W, 3)."""
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"unsupported image shape {array.shape}")
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 2:  # grey + alpha
        return np.repeat(array[..., :1], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def _raw_pages(data: bytes) -> Iterator[np.ndarray]:
    """Full-resolution pages in RGB order, decoded one at a time (only one page is in memory
    at once), by tifffile; by OpenCV's libtiff for compressions tifffile needs the optional
    ``imagecodecs`` package for (LZW, JPEG, ...), again one page at a time."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        main = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
        try:
            first = main[0].asarray() if main else None
        except ValueError as exc:
            if "imagecodecs" not in str(exc):
                raise
        else:
            if first is not None:
                yield first
                del first
            for page in main[1:]:
                yield page.asarray()
            return
        count = len(main)
    buffer = np.frombuffer(data, np.uint8)
    for index in range(count):
        ok, images = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED, range=(index, index + 1))
        if not ok or not images:
            raise ValueError(f"TIFF page {index} cannot be decoded")
        image = images[0]
        if image.ndim == 3 and image.shape[2] == 3:
            image = image[..., ::-1]  # OpenCV gives BGR
        elif image.ndim == 3 and image.shape[2] == 4:
            image = image[..., [2, 1, 0, 3]]
        yield image


def _file_depth(data: bytes, bit_depth: int | None) -> int | None:
    """The automatic depth for the whole file (from its brightest page), or None."""
    if bit_depth is not None:
        return None
    top = None
    for raw in _raw_pages(data):  # one page at a time
        if not (np.issubdtype(raw.dtype, np.unsignedinteger) and raw.dtype.itemsize > 1):
            return None
        if raw.size:
            top = max(top or 0, int(raw.max()))
    if top is None:
        return None
    return next((b for b in AUTO_DEPTHS if top <= 2**b - 1), None)


def iter_tiff(data: bytes, bit_depth: int | None = None, pages: int | None = None
              ) -> Iterator[Page]:
    """Full-resolution pages as 8-bit RGB, decoded and converted one at a time.

    ``pages`` (the count from the header) goes into each page's metadata. A >8-bit file
    without a configured depth is read twice (first pass: its brightest value), so that
    pages stay comparable without holding them all in memory.
    """
    file_depth = _file_depth(data, bit_depth)
    count = 0
    for index, raw in enumerate(_raw_pages(data)):
        if raw.ndim > 3:
            raise ValueError(f"page {index} has {raw.ndim} dimensions {raw.shape}")
        if file_depth is not None:
            scaled, _ = to_uint8(raw, file_depth)
            rule = f"{file_depth}-bit (auto, whole file)"
        else:
            scaled, rule = to_uint8(raw, bit_depth)
        meta = {"page": str(index), "pages": str(pages if pages is not None else "?"),
                "dtype": str(raw.dtype)}
        if raw.dtype != np.uint8:
            meta["scaling"] = rule
        count += 1
        yield Page(f"p{index}", to_rgb(scaled), None, meta)
    if not count:
        raise ValueError("TIFF has no image pages")


#: TIFF compressions the workers' OpenCV (libtiff as built into opencv-python) decodes:
#: none, CCITT RLE/G3/G4, LZW, old and new JPEG, Adobe and zlib deflate, PackBits
OPENCV_TIFF_COMPRESSIONS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 32773, 32946})


def plain_tiff(data: bytes) -> bool:
    """A single-page 8-bit TIFF that the workers' decoder reads (it travels as its own
    bytes), from the header only. Any other TIFF (LZMA, Zstandard, WebP... which tifffile
    reads here but OpenCV does not) travels as PNG, like the pages of a container."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        main = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
        return (len(main) == 1 and np.dtype(main[0].dtype) == np.uint8
                and int(main[0].compression) in OPENCV_TIFF_COMPRESSIONS)


def read_tiff(data: bytes, bit_depth: int | None = None) -> tuple[list[Page], bool]:
    """All full-resolution pages as 8-bit RGB; also whether the file is a plain 8-bit image.

    Raises ValueError (or a tifffile error) for files that cannot be read. Holds every page:
    capture uses :func:`iter_tiff`, which holds one.
    """
    plain = plain_tiff(data)
    pages = list(iter_tiff(data, bit_depth))
    for page in pages:
        page.metadata["pages"] = str(len(pages))
    return pages, plain
