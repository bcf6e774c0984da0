"""The GPU path of daemon/inference, tested where it can be on a machine without a GPU:
provider choice and its one fallback line, I/O binding on the CPU provider (OrtValues on the
cpu device), the TensorRT and batching settings, and dynamic batching across frames."""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from daemon.inference import sessions
from daemon.inference.sessions import (
    Classifier,
    Segmenter,
    cuda_usable,
    providers_for,
    select_providers,
)
from daemon.settings import SHIPPED_MODELS, ConfigError, Settings, load_settings
from daemon.worker.worker import Worker
from tests.conftest import synthetic_jpeg

NO_GPU = pytest.mark.skipif(cuda_usable(), reason="this machine has a usable CUDA GPU")


def test_cpu_asked_for_is_cpu_without_a_word() -> None:
    assert select_providers("cpu") == (["CPUExecutionProvider"], None)
    assert select_providers("cpu", tensorrt=True, fp16=True)[0] == ["CPUExecutionProvider"]


def test_cuda_chain_carries_the_conv_search_and_falls_back_to_the_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Where a GPU is usable (here: said to be), CUDA comes first with cuDNN's kernel search as
    # configured, and the CPU stays behind it for operators CUDA lacks.
    monkeypatch.setattr(sessions, "_cuda_missing", lambda: None)
    chain, why = select_providers("cuda", conv_algo_search="HEURISTIC")
    assert why is None
    assert chain == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                     "CPUExecutionProvider"]
    assert select_providers("auto")[0][0] == (
        "CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"})


def test_conv_search_setting_names_its_key_when_wrong() -> None:
    from pydantic import ValidationError

    from daemon.settings import WorkerSettings

    assert WorkerSettings().cudnn_conv_algo_search == "EXHAUSTIVE"
    with pytest.raises(ValidationError, match="cudnn_conv_algo_search"):
        WorkerSettings(cudnn_conv_algo_search="FASTEST")


@NO_GPU
def test_auto_without_a_gpu_falls_back_to_the_cpu_and_says_why() -> None:
    chain, why = select_providers("auto", tensorrt=True, engine_cache=Path("/tmp/x"))
    assert chain == ["CPUExecutionProvider"]
    assert why is not None and why.startswith("running on the CPU: ")
    assert "CUDA" in why  # names what is missing: the provider, or the driver/GPU
    assert providers_for("auto") == ["CPUExecutionProvider"]


@NO_GPU
def test_cuda_demanded_without_a_gpu_stops_with_the_reason() -> None:
    with pytest.raises(RuntimeError, match="workers.device is 'cuda' but"):
        select_providers("cuda")


@NO_GPU
def test_fallback_is_one_log_line_for_both_models(caplog: pytest.LogCaptureFixture) -> None:
    sessions._said.clear()
    with caplog.at_level(logging.WARNING, logger="daemon.inference.sessions"):
        segmenter = Segmenter(SHIPPED_MODELS / "segmenter.json", "auto", 1, fp16=True)
        classifier = Classifier(SHIPPED_MODELS / "classifier.json", "auto", 1, fp16=True)
    lines = [r for r in caplog.records if r.getMessage() == "execution provider fallback"]
    assert len(lines) == 1 and "running on the CPU" in lines[0].reason
    for model in (segmenter, classifier):
        assert model.provider == "CPUExecutionProvider"
        assert not model.path.name.endswith("_fp16.onnx")  # fp16 weights only on a GPU
        assert model.device_type == "cpu" and model.io_binding is False  # null: off on CPU


@NO_GPU
def test_tensorrt_engine_cache_folder_is_made_even_on_fallback(tmp_path: Path) -> None:
    cache = tmp_path / "engines"
    Segmenter(SHIPPED_MODELS / "segmenter.json", "auto", 1, tensorrt=True, engine_cache=cache)
    assert cache.is_dir()


def test_io_binding_on_the_cpu_provider_gives_the_same_outputs() -> None:
    """The code a GPU runs (OrtValue in, output bound on the device, one copy back) runs here
    on the cpu device and must give what a plain run gives."""
    rng = np.random.default_rng(0)
    plain = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1, io_binding=False,
                      max_pixels=128 * 128)
    bound = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1, io_binding=True,
                      max_pixels=128 * 128)
    assert bound.io_binding and bound.device_type == "cpu"
    images = [rng.integers(0, 255, (96, 128, 3), np.uint8) for _ in range(2)]
    big = rng.integers(0, 255, (300, 260, 3), np.uint8)  # tiled: several bound calls
    for a, b in zip(plain.compute(images + [big]), bound.compute(images + [big]), strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-4
    crops = rng.integers(0, 255, (5, 64, 64, 3), np.uint8)
    c_plain = Classifier(SHIPPED_MODELS / "classifier.json", "cpu", 1, io_binding=False)
    c_bound = Classifier(SHIPPED_MODELS / "classifier.json", "cpu", 1, io_binding=True)
    probs = c_bound.compute(crops, max_batch=2)
    assert probs.shape == (5, len(c_bound.classes))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert np.abs(c_plain.compute(crops) - probs).max() < 1e-5


def test_gpu_settings_defaults_and_bad_values_name_the_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    assert settings.workers.tensorrt is False and settings.workers.io_binding is None
    assert settings.workers.max_queue_delay_ms == 0
    assert settings.trt_engine_dir == tmp_path / "var" / "trt-engines"
    config = tmp_path / "bad.yaml"
    config.write_text("workers:\n  max_queue_delay_ms: -5\n")
    with pytest.raises(ConfigError, match=r"workers\.max_queue_delay_ms"):
        load_settings(config)
    config.write_text("workers:\n  trt_engine_cache: engines\n  tensorrt: true\n")
    loaded = load_settings(config)
    assert loaded.trt_engine_dir == tmp_path / "engines"  # relative to the config file


def test_dynamic_batching_waits_for_frames_up_to_the_delay(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(workers={"batch_frames": 4, "max_queue_delay_ms": 3000})
    worker = Worker(settings, "t-batch")
    queue = worker.queue
    queue.enqueue("f0", "S1", "/in/S1/0.jpg", "rig-1", synthetic_jpeg(0))

    def later() -> None:
        time.sleep(0.3)
        for i in range(1, 4):
            queue.enqueue(f"f{i}", "S1", f"/in/S1/{i}.jpg", "rig-1", synthetic_jpeg(i))

    thread = threading.Thread(target=later)
    thread.start()
    assert worker.step(block_ms=100) == 4  # one batch: the first frame waited for three
    thread.join()
    # Without a delay the worker takes what is queued: one frame, at once.
    eager = Worker(make_settings(workers={"batch_frames": 4}), "t-eager")
    eager.queue.enqueue("g0", "S1", "/in/S1/g0.jpg", "rig-1", synthetic_jpeg(5))
    thread = threading.Thread(target=lambda: (time.sleep(0.3), eager.queue.enqueue(
        "g1", "S1", "/in/S1/g1.jpg", "rig-1", synthetic_jpeg(6))))
    thread.start()
    assert eager.step(block_ms=100) == 1
    thread.join()
    assert eager.step(block_ms=1000) == 1


def _fatbin_tool():  # noqa: ANN202 - the module deploy/gpu/fatbin_keep_arch.py
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "deploy" / "gpu" / "fatbin_keep_arch.py"
    spec = importlib.util.spec_from_file_location("fatbin_keep_arch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(arch: int, payload: bytes) -> bytes:
    header = bytearray(64)
    struct.pack_into("<HHIQ", header, 0, 2, 0x101, 64, len(payload))
    struct.pack_into("<I", header, 28, arch)
    return bytes(header) + payload


def test_fatbin_tool_zeroes_other_architectures_and_keeps_the_named_one() -> None:
    # The lent machine's 64 MiB a call: onnxruntime-gpu's CUDA kernels for other cards are
    # zeroed so the library compresses; the named card's kernels must survive byte for byte.
    tool = _fatbin_tool()
    entries = _entry(80, b"\x11" * 300) + _entry(90, b"\x22" * 200) + _entry(120, b"\x33" * 100)
    fatbin = struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entries)) + entries
    data = bytearray(b"host code" + fatbin + b"\xba\x55\xed\x50 not a fatbin header" + fatbin)
    size = len(data)
    per_arch, zeroed, kept = tool.keep_arch(data, 90)
    assert per_arch == {80: 600, 90: 400, 120: 200}
    assert (zeroed, kept) == (800, 400)
    assert len(data) == size  # zeroed in place: every offset in the library still holds
    assert data.count(b"\x22" * 200) == 2 and b"\x11" not in data and b"\x33" not in data
    assert data.startswith(b"host code")


def _shapes_seen(model: Segmenter | Classifier) -> list[tuple[int, ...]]:
    """Wrap ``model.run`` so each call's input shape is recorded (the real run still runs)."""
    seen: list[tuple[int, ...]] = []
    run = model.run

    def recording(output: str, tensor: np.ndarray) -> np.ndarray:
        seen.append(tensor.shape)
        return run(output, tensor)

    model.run = recording  # type: ignore[method-assign]
    return seen


def test_fixed_batches_give_the_gpu_few_shapes_and_the_same_answers() -> None:
    """On CUDA every new batch size costs seconds of kernel planning: with fixed batches the
    classifier runs one shape whatever the number of cells, the segmenter powers of two, and
    the padding changes no answer."""
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (11, 64, 64, 3), np.uint8)
    plain = Classifier(SHIPPED_MODELS / "classifier.json", "cpu", 1)
    fixed = Classifier(SHIPPED_MODELS / "classifier.json", "cpu", 1, fixed_batches=True)
    assert not plain.fixed_batches  # the CPU has no per-shape cost: unpadded by default
    seen = _shapes_seen(fixed)
    for count in (1, 3, 11):
        probs = fixed.compute(crops[:count], max_batch=8)
        assert probs.shape == (count, len(fixed.classes))
        assert np.abs(plain.compute(crops[:count]) - probs).max() < 1e-5
    assert {shape[0] for shape in seen} == {8}

    seg_plain = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1)
    seg_fixed = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1, fixed_batches=True)
    seen = _shapes_seen(seg_fixed)
    images = [rng.integers(0, 255, (64, 128, 3), np.uint8) for _ in range(3)]
    for a, b in zip(seg_plain.compute(images), seg_fixed.compute(images), strict=True):
        assert a.shape == b.shape == (64, 128)
        assert np.abs(a - b).max() < 1e-4
    seg_fixed.compute(images[:1])
    assert [shape[0] for shape in seen] == [4, 1]
    # the worker's batch size fills a batch, within its pixel budget (the memory bound)
    for budget, expected in ((None, 8), (5 * 64 * 128, 5)):
        capped = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1, fixed_batches=True,
                           max_batch_frames=8, max_pixels=budget)
        seen = _shapes_seen(capped)
        capped.compute(images)
        assert [shape[0] for shape in seen] == [expected]


def test_fixed_batches_pad_frames_a_few_pixels_apart_to_one_shape() -> None:
    """Rescaled camera frames differ by a few pixels (each frame's own scale estimate): on
    CUDA they share one padded shape and one call, each mask cut back to its own frame and
    matching the unpadded one away from the padded edge."""
    from daemon.imaging.synthetic import smear_field

    plain = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1)
    fixed = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1, fixed_batches=True)
    seen = _shapes_seen(fixed)
    field, _ = smear_field(np.random.default_rng(2), (160, 224), white_cells=3)
    images = [field[:150, :210], field[:157, :200], field[:160, :224]]
    masks = fixed.compute(images)
    assert seen == [(4, 3, 192, 256)]  # one call: three frames and one blank
    for image, mask, reference in zip(images, masks, plain.compute(images), strict=True):
        assert mask.shape == image.shape[:2]
        inner = (slice(0, image.shape[0] - 32), slice(0, image.shape[1] - 32))
        agree = ((mask[inner] > 0.5) == (reference[inner] > 0.5)).mean()
        assert agree > 0.99


def test_warm_up_with_fixed_batches_plans_the_shapes_a_stream_meets() -> None:
    from daemon.inference.analyzer import Analyzer

    segmenter = Segmenter(SHIPPED_MODELS / "segmenter.json", "cpu", 1, fixed_batches=True,
                          max_batch_frames=4)
    classifier = Classifier(SHIPPED_MODELS / "classifier.json", "cpu", 1, fixed_batches=True)
    seg_seen, cls_seen = _shapes_seen(segmenter), _shapes_seen(classifier)
    Analyzer(segmenter, classifier, max_batch_cells=16).warm_up()
    side = -(-segmenter.manifest.input.size[0] // 64) * 64
    assert sorted(set(seg_seen)) == [(1, 3, side, side), (4, 3, side, side)]
    assert {shape[0] for shape in cls_seen} == {16}  # the one classifier shape
