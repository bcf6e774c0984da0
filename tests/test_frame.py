import numpy as np
import pytest

from daemon.imaging.frames import FrameRejected, check_encoded, decode_rgb, frame_id_for
from daemon.imaging.synthetic import encode, smear_field


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
