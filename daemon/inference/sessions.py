"""ONNX Runtime sessions: provider choice and the two model operators.

``onnxruntime-gpu`` lists the CUDA provider even on machines without a GPU and then logs
errors when a session asks for it, so CUDA is only requested after checking, quietly, that a
driver and a device exist.
"""

from __future__ import annotations

import ctypes
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from daemon.domain.manifest import ModelManifest, load_manifest
from daemon.imaging.pipeline import pad_to_multiple, to_tensor

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


@lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True when ONNX Runtime has the CUDA provider and the driver reports a device."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


def providers_for(device: Device) -> list[str]:
    """Execution providers for ``workers.device``; ``cuda`` without a GPU is an error."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_usable():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError("workers.device is 'cuda' but no usable CUDA GPU was found")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """One ONNX Runtime session plus the manifest that says how to feed it."""

    def __init__(
        self, path: Path, device: Device = "auto", threads: int = 0, fp16: bool = False
    ) -> None:
        self.manifest: ModelManifest = load_manifest(path)
        providers = providers_for(device)
        file = self.manifest.file
        if fp16 and providers[0] == "CUDAExecutionProvider" and self.manifest.fp16_file:
            file = self.manifest.fp16_file
        self.path = Path(path).parent / file
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle intra-op threads spin by default. With two sessions per worker (and capture,
        # Redis and the API beside it on few cores) the spinning pool of one model steals the
        # CPU the other model needs: turning it off measured 61 -> 93 frames/s bare on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.provider: str = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type
        log.info(
            "model loaded",
            extra={
                "model": self.manifest.name,
                "version": self.manifest.version,
                "provider": self.provider,
            },
        )

    def _feed(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        if self.input_type == "tensor(float16)":
            tensor = tensor.astype(np.float16)
        return {self.input_name: tensor}


def tile_spans(length: int, tile: int, margin: int) -> list[tuple[int, int]]:
    """[start, end) spans of ``tile`` covering ``length`` with 2 x ``margin`` overlap."""
    if length <= tile:
        return [(0, length)]
    stride = tile - 2 * margin
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return [(start, start + tile) for start in starts]


class Segmenter(OnnxModel):
    """RGB frames -> white-cell foreground probability per pixel.

    The U-Net's memory grows with the pixels of one call (about 400 bytes per pixel on the
    CPU): a frame above ``max_pixels`` is segmented in overlapping tiles of at most that
    size, each tile's border (``TILE_MARGIN``) discarded, so a 4K field costs what a
    2048x2048 one does.
    """

    TILE_MARGIN = 64

    def __init__(self, *args: object, max_pixels: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_pixels = max_pixels
        self.last_ms: list[float] = []  # per frame of the last ``compute`` (see there)

    def _tiled(self, image: np.ndarray) -> np.ndarray:
        spec = self.manifest.input
        multiple = max(1, spec.size_multiple)
        assert self.max_pixels is not None
        side = max(multiple * 4, int(self.max_pixels**0.5) // multiple * multiple)
        margin = min(self.TILE_MARGIN, side // 4)
        height, width = image.shape[:2]
        out = np.empty((height, width), np.float32)
        for y0, y1 in tile_spans(height, side, margin):
            for x0, x1 in tile_spans(width, side, margin):
                tile = pad_to_multiple(image[y0:y1, x0:x1], multiple)
                (mask,) = self.session.run(["mask"], self._feed(to_tensor(tile, spec)))
                top = y0 + (margin if y0 > 0 else 0)
                left = x0 + (margin if x0 > 0 else 0)
                bottom = y1 - (margin if y1 < height else 0)
                right = x1 - (margin if x1 < width else 0)
                out[top:bottom, left:right] = mask[0, 0, top - y0 : bottom - y0,
                                                   left - x0 : right - x0]
        return out

    def compute(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """images: list of (H, W, 3) uint8 RGB -> list of (H, W) float32 in [0, 1].

        Frames of equal size run as one batch; each is padded to the model's size multiple.
        A frame above ``max_pixels`` runs alone, in tiles.

        Afterwards ``last_ms[i]`` is frame i's share of the time (ms): a frame run alone (tiled)
        has its own time; frames run as one batch share that batch's time equally.
        """
        spec = self.manifest.input
        out: list[np.ndarray | None] = [None] * len(images)
        self.last_ms = [0.0] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if self.max_pixels is not None and image.shape[0] * image.shape[1] > self.max_pixels:
                started = time.perf_counter()
                out[index] = self._tiled(image)
                self.last_ms[index] = (time.perf_counter() - started) * 1000
                continue
            by_shape.setdefault(image.shape, []).append(index)
        for shape, indices in by_shape.items():
            height, width = shape[:2]
            started = time.perf_counter()
            batch = np.stack([pad_to_multiple(images[i], spec.size_multiple) for i in indices])
            (mask,) = self.session.run(["mask"], self._feed(to_tensor(batch, spec)))
            for position, index in enumerate(indices):
                out[index] = mask[position, 0, :height, :width].astype(np.float32)
            share = (time.perf_counter() - started) * 1000 / len(indices)
            for index in indices:
                self.last_ms[index] = share
        return out  # type: ignore[return-value]


class Classifier(OnnxModel):
    """Cell crops -> class probabilities."""

    @property
    def classes(self) -> list[str]:
        return [c.code for c in self.manifest.classes]

    @property
    def crop_size(self) -> int:
        return self.manifest.input.size[0]

    def compute(self, crops: np.ndarray, max_batch: int = 64) -> np.ndarray:
        """crops: (N, S, S, 3) uint8 RGB -> (N, C) float32 probabilities (rows sum to 1)."""
        if crops.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        parts = []
        for start in range(0, crops.shape[0], max_batch):
            tensor = to_tensor(crops[start : start + max_batch], self.manifest.input)
            (probs,) = self.session.run(["probabilities"], self._feed(tensor))
            parts.append(probs.astype(np.float32))
        return np.concatenate(parts)
