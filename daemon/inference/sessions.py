"""ONNX Runtime sessions: provider choice and the two model operators.

``onnxruntime-gpu`` lists the CUDA provider even on machines without a GPU and then logs
errors when a session asks for it, so CUDA is only requested after checking, quietly, that a
driver and a device exist.
"""

from __future__ import annotations

import ctypes
import logging
import math
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
    return [spec if isinstance(spec, str) else spec[0] for spec in select_providers(device)[0]]


ProviderSpec = str | tuple[str, dict[str, str]]


def _cuda_missing() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this ONNX Runtime build has no CUDA provider (install onnxruntime-gpu)"
    if not cuda_usable():
        return "no CUDA driver or GPU found"
    return None


def select_providers(device: Device, tensorrt: bool = False, engine_cache: Path | None = None,
                     fp16: bool = False, conv_algo_search: str = "EXHAUSTIVE",
                     ) -> tuple[list[ProviderSpec], str | None]:
    """The providers to ask ONNX Runtime for, best first, and why a better one is not used.

    ``device`` auto or cuda with a usable GPU: CUDA, then CPU; with ``tensorrt`` the
    TensorRT provider first, its engines cached in ``engine_cache`` (building an engine
    takes minutes; the cache makes that a one-time cost per model, card and TensorRT
    version). ``cuda`` without a GPU raises (a deployment that asked for a GPU must not run
    many times slower unnoticed); ``auto`` falls back to the CPU and says why.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"], None
    missing = _cuda_missing()
    if missing is not None:
        if device == "cuda":
            raise RuntimeError(f"workers.device is 'cuda' but {missing}")
        return ["CPUExecutionProvider"], f"running on the CPU: {missing}"
    chain: list[ProviderSpec] = []
    why = None
    if tensorrt:
        if "TensorrtExecutionProvider" in ort.get_available_providers():
            options = {"trt_fp16_enable": "True" if fp16 else "False"}
            if engine_cache is not None:
                options.update(trt_engine_cache_enable="True",
                               trt_engine_cache_path=str(engine_cache))
            chain.append(("TensorrtExecutionProvider", options))
        else:
            why = "running on CUDA without TensorRT: this ONNX Runtime has no TensorRT provider"
    chain += [("CUDAExecutionProvider", {"cudnn_conv_algo_search": conv_algo_search}),
              "CPUExecutionProvider"]
    return chain, why


_said: set[str] = set()

#: ONNX Runtime's ``session.intra_op.allow_spinning`` for every session (see ``OnnxModel``);
#: a module constant so that deploy/gpu/session_diag.py can time the other choice.
INTRA_OP_SPINNING = "0"


def _say_once(message: str) -> None:
    """One log line per reason and process (a worker's two models must not say it twice)."""
    if message not in _said:
        _said.add(message)
        log.warning("execution provider fallback", extra={"reason": message})


class OnnxModel:
    """One ONNX Runtime session plus the manifest that says how to feed it.

    With ``io_binding`` the input is handed to ONNX Runtime as an ``OrtValue`` on the
    session's device and the output is bound there too, so a GPU call copies once each way
    (null: on for CUDA/TensorRT, off on the CPU, where there is nothing to copy).

    With ``fixed_batches`` (null: on for CUDA/TensorRT) a call's batch is padded to one of few
    sizes (see ``Classifier.compute`` and ``Segmenter.compute``). The CUDA provider plans
    cuDNN's kernels per input shape, seconds for a network, each time a new batch size comes;
    on a lent H100 a classifier call took 5-7 s whenever the number of cells was new, and
    2-5 ms once its shape had been seen. The CPU has no such cost, so there it runs unpadded.
    """

    def __init__(
        self, path: Path, device: Device = "auto", threads: int = 0, fp16: bool = False,
        tensorrt: bool = False, engine_cache: Path | None = None,
        io_binding: bool | None = None, conv_algo_search: str = "EXHAUSTIVE",
        fixed_batches: bool | None = None,
    ) -> None:
        self.manifest: ModelManifest = load_manifest(path)
        if tensorrt and engine_cache is not None:
            Path(engine_cache).mkdir(parents=True, exist_ok=True)
        providers, why = select_providers(device, tensorrt, engine_cache, fp16,
                                          conv_algo_search)
        if why:
            _say_once(why)
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        file = self.manifest.file
        # fp16 weights only on a GPU: the CPU provider runs most fp16 operators slowly or not
        if fp16 and first != "CPUExecutionProvider" and self.manifest.fp16_file:
            file = self.manifest.fp16_file
        self.path = Path(path).parent / file
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle intra-op threads spin by default. With two sessions per worker (and capture,
        # Redis and the API beside it on few cores) the spinning pool of one model steals the
        # CPU the other model needs: turning it off measured 61 -> 93 frames/s bare on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", INTRA_OP_SPINNING)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.provider: str = self.session.get_providers()[0]
        if self.provider != first:
            # ONNX Runtime drops a provider it cannot start (CUDA libraries, cuDNN missing)
            # and says so only in its own log: say it in ours.
            _say_once(f"running on {self.provider}: ONNX Runtime could not start {first} "
                      "(its libraries or the device failed; see ONNX Runtime's log)")
        self.device_type = "cpu" if self.provider == "CPUExecutionProvider" else "cuda"
        self.io_binding = self.device_type == "cuda" if io_binding is None else io_binding
        self.fixed_batches = (self.device_type == "cuda" if fixed_batches is None
                              else fixed_batches)
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type
        log.info(
            "model loaded",
            extra={
                "model": self.manifest.name,
                "version": self.manifest.version,
                "provider": self.provider,
                "file": file,
                "io_binding": self.io_binding,
            },
        )

    def _feed(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        if self.input_type == "tensor(float16)":
            tensor = tensor.astype(np.float16)
        return {self.input_name: tensor}

    def run(self, output: str, tensor: np.ndarray) -> np.ndarray:
        """One model call: ``tensor`` in, the output named ``output`` back as a numpy array."""
        feed = self._feed(tensor)
        if not self.io_binding:
            (result,) = self.session.run([output], feed)
            return result
        binding = self.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(feed[self.input_name]), self.device_type, 0)
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(output, self.device_type, 0)
        self.session.run_with_iobinding(binding)
        (result,) = binding.copy_outputs_to_cpu()
        return result


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """(N, ...) -> (size, ...): zero items appended (N <= size), so a call has that shape.
    Applied to the uint8 images before ``to_tensor`` (a quarter of the bytes of floats)."""
    if batch.shape[0] == size:
        return batch
    padded = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
    padded[: batch.shape[0]] = batch
    return padded


def power_of_two_at_least(count: int) -> int:
    """The smallest power of two >= ``count`` (>= 1)."""
    return 1 << max(0, count - 1).bit_length()


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
    #: with ``fixed_batches``, sides are padded to a multiple of this (edge pixels repeated):
    #: at most 63 px more per side, against a new cuDNN plan (0.44 s for a batch of 16
    #: 224x224 fields on the H100) for every size a rescaled frame comes out at
    FIXED_SIDE_MULTIPLE = 64

    def __init__(self, *args: object, max_pixels: int | None = None,
                 max_batch_frames: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_pixels = max_pixels
        self.max_batch_frames = max_batch_frames
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
                mask = self.run("mask", to_tensor(tile, spec))
                top = y0 + (margin if y0 > 0 else 0)
                left = x0 + (margin if x0 > 0 else 0)
                bottom = y1 - (margin if y1 < height else 0)
                right = x1 - (margin if x1 < width else 0)
                out[top:bottom, left:right] = mask[0, 0, top - y0 : bottom - y0,
                                                   left - x0 : right - x0]
        return out

    def _fixed_batch(self, count: int, shape: tuple[int, ...]) -> int:
        """The batch size a call of ``count`` frames of ``shape`` (H, W) runs at on the GPU.

        One frame alone (a live rig's pace) runs as one; more are filled up to
        ``max_batch_frames`` (else the next power of two), so a frame size meets two shapes,
        never more frames' pixels than ``max_pixels`` allows (the worker's memory bound).
        """
        if count == 1:
            return 1
        size = self.max_batch_frames or power_of_two_at_least(count)
        if self.max_pixels is not None:
            size = min(size, self.max_pixels // (shape[0] * shape[1]))
        return max(count, size)

    def compute(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """images: list of (H, W, 3) uint8 RGB -> list of (H, W) float32 in [0, 1].

        Frames of equal size run as one batch; each is padded to the model's size multiple.
        With ``fixed_batches`` each side is padded to a multiple of ``FIXED_SIDE_MULTIPLE``
        too (frames a few pixels apart, as per-frame scale estimates make them, then share
        one shape and one batch) and a batch of several frames is filled with blank frames
        (``_fixed_batch``).
        A frame above ``max_pixels`` runs alone, in tiles.

        Afterwards ``last_ms[i]`` is frame i's share of the time (ms): a frame run alone (tiled)
        has its own time; frames run as one batch share that batch's time equally.
        """
        spec = self.manifest.input
        multiple = max(1, spec.size_multiple)
        if self.fixed_batches:
            multiple = math.lcm(multiple, self.FIXED_SIDE_MULTIPLE)
        out: list[np.ndarray | None] = [None] * len(images)
        self.last_ms = [0.0] * len(images)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            if self.max_pixels is not None and image.shape[0] * image.shape[1] > self.max_pixels:
                started = time.perf_counter()
                out[index] = self._tiled(image)
                self.last_ms[index] = (time.perf_counter() - started) * 1000
                continue
            padded = (-(-image.shape[0] // multiple) * multiple,
                      -(-image.shape[1] // multiple) * multiple)
            by_shape.setdefault(padded, []).append(index)
        for indices in by_shape.values():
            started = time.perf_counter()
            batch = np.stack([pad_to_multiple(images[i], multiple) for i in indices])
            if self.fixed_batches:
                batch = pad_batch(batch, self._fixed_batch(len(indices), batch.shape[1:3]))
            mask = self.run("mask", to_tensor(batch, spec))
            for position, index in enumerate(indices):
                height, width = images[index].shape[:2]
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
        """crops: (N, S, S, 3) uint8 RGB -> (N, C) float32 probabilities (rows sum to 1).

        Runs in calls of at most ``max_batch`` crops; with ``fixed_batches`` every call has
        exactly ``max_batch`` (blank crops fill the last), so the GPU sees one shape only.
        """
        if crops.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        parts = []
        for start in range(0, crops.shape[0], max_batch):
            chunk = crops[start : start + max_batch]
            if self.fixed_batches:
                chunk = pad_batch(chunk, max_batch)
            probs = self.run("probabilities", to_tensor(chunk, self.manifest.input))
            probs = probs[: min(max_batch, crops.shape[0] - start)]
            parts.append(probs.astype(np.float32))
        return np.concatenate(parts)
