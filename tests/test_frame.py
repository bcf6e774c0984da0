import numpy as np
import pytest

from daemon.imaging.frames import FrameRejected, check_encoded, decode_rgb, frame_id_for
from daemon.imaging.synthetic import encode, jpeg_bomb, png_bomb, smear_field


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return smear_field(np.random.default_rng(1))[0]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".tif"])
def test_decodes_each_format_to_rgb(field: np.ndarray, ext: str) -> None:
    image = decode_rgb(encode(field, ext))
    assert image.shape == field.shape and image.dtype == np.uint8
    # Channel order survives: the purple stain keeps blue above green.
    assert np.abs(image.astype(int) - field.astype(int)).mean() < 3


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"hello, this is text", "not_an_image"),
        (b"%PDF-1.4 not an image", "not_an_image"),
    ],
)
def test_rejects_non_images(data: bytes, reason: str) -> None:
    with pytest.raises(FrameRejected) as info:
        decode_rgb(data)
    assert info.value.reason == reason


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_rejects_truncated_files(field: np.ndarray, ext: str) -> None:
    data = encode(field, ext)
    with pytest.raises(FrameRejected) as info:
        check_encoded(data[: len(data) // 2])
    assert info.value.reason == "truncated"


def test_rejects_corrupt_body_with_valid_header() -> None:
    data = b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9"
    with pytest.raises(FrameRejected) as info:
        decode_rgb(data)
    assert info.value.reason == "undecodable"


def test_size_limit() -> None:
    with pytest.raises(FrameRejected, match="exceeds"):
        check_encoded(b"\xff\xd8\xff" + bytes(100), max_bytes=50)


def test_frame_id_is_stable_and_content_sensitive() -> None:
    assert frame_id_for("S1", "a.jpg", b"x") == frame_id_for("S1", "a.jpg", b"x")
    assert frame_id_for("S1", "a.jpg", b"x") != frame_id_for("S1", "a.jpg", b"y")
    assert frame_id_for("S1", "a.jpg", b"x") != frame_id_for("S2", "a.jpg", b"x")


# --- pixel budgets, read from the header before decoding (issue 16) ---------------------

def test_header_geometry_of_each_format(field: np.ndarray) -> None:
    from daemon.imaging.frames import geometry

    for ext in (".jpg", ".png", ".bmp", ".tif"):
        found = geometry(encode(field, ext))
        assert (found.width, found.height, found.pages) == (field.shape[1], field.shape[0], 1)


@pytest.mark.parametrize("make", [jpeg_bomb, png_bomb])
def test_decompression_bombs_are_refused_before_decoding(make) -> None:
    data = make(20000, 20000)
    assert len(data) < 100_000
    with pytest.raises(FrameRejected) as info:
        decode_rgb(data, max_pixels=16_777_216)
    assert info.value.reason == "too_large" and "20000x20000" in info.value.message


def test_pixel_budget_is_a_setting(field: np.ndarray) -> None:
    data = encode(field, ".png")
    assert decode_rgb(data, max_pixels=field.shape[0] * field.shape[1]).shape == field.shape
    with pytest.raises(FrameRejected, match="too_large|exceeds"):
        decode_rgb(data, max_pixels=field.shape[0] * field.shape[1] - 1)


def test_random_bytes_inside_a_jpeg_are_detected(field: np.ndarray) -> None:
    """libjpeg only warns about corrupt scan data and the frame would be classified."""
    data = encode(field, ".jpg")
    rng = np.random.default_rng(16)
    for trial in range(20):
        corrupt = bytearray(data)
        at = len(data) // 4 + trial * 37
        corrupt[at : at + 2048] = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
        with pytest.raises(FrameRejected) as info:
            check_encoded(bytes(corrupt))
        assert info.value.reason in ("undecodable", "truncated")


def test_progressive_and_restart_marker_jpegs_are_not_corrupt(field: np.ndarray) -> None:
    import cv2

    for params in ([cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]):
        ok, buffer = cv2.imencode(".jpg", field, params)
        assert ok and check_encoded(buffer.tobytes()) == "jpeg"


def test_frame_id_of_a_name_that_is_not_utf8() -> None:
    import os

    from daemon.imaging.frames import printable_name

    name = os.fsdecode(b"field\xff\xfe.jpg")  # as os.listdir gives it
    assert frame_id_for("S1", name, b"x") != frame_id_for("S1", "field.jpg", b"x")
    assert printable_name(name) == "field\\xff\\xfe.jpg"
    printable_name(name).encode("utf-8")  # safe for JSON, logs and Redis
