"""Augmentation helpers: values, and tensors kept on the device they came from (torch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_normalize_matches_manual_and_keeps_device() -> None:
    from daemon.training.augment import normalize

    images = torch.rand(2, 3, 4, 4)
    mean, std = (0.8, 0.7, 0.9), (0.2, 0.1, 0.05)
    out = normalize(images, mean, std)
    expected = (images - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[
        None, :, None, None]
    assert torch.allclose(out, expected)
    # The training loop normalises on the GPU: mean/std must follow the images' device. The
    # "meta" device stands in for CUDA here (a CPU constant beside it raises, as on CUDA).
    on_meta = normalize(torch.empty(2, 3, 4, 4, device="meta"), mean, std)
    assert on_meta.device.type == "meta"
    assert on_meta.shape == (2, 3, 4, 4)


def _field(stain_rgb: tuple[int, int, int]) -> np.ndarray:
    """A 64x64 field: white glass with a block of stained pixels (a red cell's colour) and a
    violet nucleus, so ``stain_features`` has both to find."""
    field = np.full((64, 64, 3), 250, np.uint8)
    field[8:40, 8:40] = stain_rgb
    field[44:56, 44:56] = (120, 60, 160)
    return field


def test_stain_mix_gives_the_target_fields_stain_and_leaves_glass() -> None:
    from daemon.training.augment import stain_mix
    from daemon.training.confound import stain_features

    source, target = _field((225, 185, 190)), _field((200, 190, 215))
    f_src, f_dst = stain_features(source), stain_features(target)
    x = torch.from_numpy(source).permute(2, 0, 1)[None].float() / 255.0
    out = stain_mix(x, torch.from_numpy(f_src)[None], torch.from_numpy(f_dst)[None],
                    torch.ones(1), 1.0, torch.Generator().manual_seed(0))
    moved = (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    f_out = stain_features(moved)
    # Stain Y, I and Q land on the target's (within a couple of grey levels) ...
    assert np.abs(f_out[:3] - f_dst[:3]).max() < 3.0
    assert np.abs(f_src[:3] - f_dst[:3]).max() > 10.0
    # ... while the glass keeps its colour.
    assert np.abs(moved[60, 2].astype(int) - source[60, 2].astype(int)).max() <= 1


def test_stain_mix_with_p_zero_or_per_sample_draw_keeps_some_unchanged() -> None:
    from daemon.training.augment import stain_mix
    from daemon.training.confound import stain_features

    source, target = _field((225, 185, 190)), _field((200, 190, 215))
    x = (torch.from_numpy(source).permute(2, 0, 1)[None].float() / 255.0).repeat(64, 1, 1, 1)
    src = torch.from_numpy(stain_features(source))[None].repeat(64, 1)
    dst = torch.from_numpy(stain_features(target))[None]
    same = stain_mix(x, src, dst, torch.ones(1), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same, x)
    half = stain_mix(x, src, dst, torch.ones(1), 0.5, torch.Generator().manual_seed(0))
    changed = (half - x).abs().flatten(1).max(dim=1).values > 0.02
    assert 10 < int(changed.sum()) < 54


def test_jpeg_before_upscale_codes_the_small_image() -> None:
    """A camera compresses at its own resolution before the daemon enlarges the frame: with
    ``jpeg_before_upscale`` the JPEG is applied to the downsampled crop, not the enlarged one."""
    import cv2

    from daemon.training.augment import AugmentParams, random_degrade

    rng = np.random.default_rng(3)
    crop = cv2.GaussianBlur(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8), (0, 0), 1.5)
    images = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
    params = AugmentParams(resample=(0.5, 0.5), resample_p=1.0, jpeg_quality=(20, 20), jpeg_p=1.0,
                           blur_p=0.0, noise_p=0.0, jpeg_before_upscale=True)

    def jpeg(image: np.ndarray) -> np.ndarray:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 20])
        return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)

    small = cv2.resize(crop, (32, 32), interpolation=cv2.INTER_AREA)
    coded_small = cv2.resize(jpeg(small), (64, 64), interpolation=cv2.INTER_LINEAR)
    coded_large = jpeg(cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(coded_small, coded_large)
    for before, expected in ((True, coded_small), (False, coded_large)):
        params_now = AugmentParams(**{**params.__dict__, "jpeg_before_upscale": before})
        out = random_degrade(images, params_now, torch.Generator().manual_seed(0))
        got = (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(got, expected)


def _smooth_crop(seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(60, 256, (64, 64, 3)).astype(np.uint8), (0, 0), 1.5)


def _degrade(crop: np.ndarray, **changes) -> np.ndarray:
    from daemon.training.augment import AugmentParams, random_degrade

    params = AugmentParams(**{**AugmentParams(blur_p=0.0, noise_p=0.0, jpeg_p=0.0).__dict__,
                              **changes})
    images = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
    out = random_degrade(images, params, torch.Generator().manual_seed(0))
    return (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_camera_exposure_clips_like_an_overexposed_field() -> None:
    """Over-exposure at the camera clips per channel at 255, as the shift suite's
    ``exposure_x1.25`` does to a raw field, and the glass-led gain after it is about 1."""
    from daemon.training.shifts import exposure

    crop = (_smooth_crop(1).astype(int) + 40).clip(0, 255).astype(np.uint8)  # pale (200-250), as cytoplasm and red cells in a smear are
    got = _degrade(crop, camera_exposure=(1.25, 1.25), camera_exposure_p=1.0)
    assert np.array_equal(got, exposure(1.25)(crop))
    assert (got == 255).mean() > (crop == 255).mean() + 0.2


def test_camera_exposure_codes_the_dim_field_and_amplifies_its_artefacts() -> None:
    """A dim field is JPEG-coded by the camera, then brought back by the daemon's gain: the
    JPEG sits between the two, and its error comes out larger than on the field lit right."""
    import cv2

    def jpeg(image: np.ndarray) -> np.ndarray:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 30])
        return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)

    def gain(image: np.ndarray, g: float) -> np.ndarray:
        return np.clip(np.rint(image.astype(np.float64) * g), 0, 255).astype(np.uint8)

    crop = _smooth_crop(2)
    coded = {"jpeg_quality": (30, 30), "jpeg_p": 1.0}
    got = _degrade(crop, camera_exposure=(0.7, 0.7), camera_exposure_p=1.0, **coded)
    assert np.array_equal(got, gain(jpeg(gain(crop, 0.7)), 1 / 0.7))
    lit = _degrade(crop, **coded)
    error = np.abs(got.astype(int) - crop).mean()
    assert error > 1.1 * np.abs(lit.astype(int) - crop).mean()


def test_camera_exposure_off_leaves_the_random_stream_alone() -> None:
    """Off by default: recipes without it draw the same numbers, so their batches repeat."""
    from daemon.training.augment import AugmentParams, random_degrade

    images = torch.rand(4, 3, 16, 16)
    generator = torch.Generator().manual_seed(5)
    random_degrade(images, AugmentParams(), generator)
    reference = torch.Generator().manual_seed(5)
    torch.rand(4, 8, generator=reference)
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=reference))
    assert AugmentParams().camera_exposure_p == 0.0
