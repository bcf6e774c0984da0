"""Why a model call is slow on a GPU through the daemon but fast through ort_probe.py.

On the lent H100 (2026-11-26) the shipped classifier ran 2 ms a batch of 1 through
``ort_probe.py`` (a plain session) and 5-7 s a call through the daemon's ``Classifier``
(same file, classifier_fp16.onnx), for every batch size, repeated shapes too. This times one
difference at a time, each case in its own process under a time limit, so a case that hangs
does not stop the others:

    python3 deploy/gpu/session_diag.py [SECONDS_PER_CASE]

Prints one JSON line per case: the median ms of three calls on a batch of 8 crops (after one
warm-up call), or why the case did not finish. The cases run side by side (a lease is minutes;
a 2 ms case and a 5 s one stay apart even so). The ``daemon_*`` variants are the daemon's
``Classifier`` with one setting changed each, so the one that is fast names the configuration
deploy/gpu/daemon_bench.sh benches with.

What it found on the third lease (H100, 2026-11-26, deploy/gpu/lease-2026-11-26c/): no option
is slow (every case 2.3-7.7 ms on a repeated shape). The seconds were cuDNN planning each new
input shape, which the daemon's changing batch sizes met on nearly every call; model calls on
CUDA now run at fixed shapes (``fixed_batches`` in daemon/inference/sessions.py). It stays as
the first step of a lease, to catch a session option that turns slow on another card or build.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"

#: name -> what differs from a plain session (providers=["CUDAExecutionProvider"], run(None))
CASES = {
    "plain": {},
    "daemon_session_options": {"options": True},
    "provider_options": {"provider_options": True},
    "io_binding": {"io_binding": True},
    "one_output": {"one_output": True},
    "cuinit_first": {"cuinit": True},
    "cpu_fallback_listed": {"cpu_listed": True},
    "all_of_the_daemon": {"options": True, "provider_options": True, "io_binding": True,
                          "one_output": True, "cuinit": True, "cpu_listed": True},
    "daemon_classifier": {"daemon": True},
    # the daemon's Classifier with one of workers.* changed (or the spinning constant)
    "daemon_no_io_binding": {"daemon": True, "io_binding": False},
    "daemon_threads_auto": {"daemon": True, "threads": 0},
    "daemon_heuristic": {"daemon": True, "search": "HEURISTIC"},
    "daemon_fp32": {"daemon": True, "fp16": False},
    "daemon_spinning": {"daemon": True, "spinning": True},
}


def case(name: str, how: dict, model: str, queue: mp.Queue) -> None:
    import numpy as np

    if how.get("cuinit"):
        from daemon.inference.sessions import cuda_usable

        cuda_usable()
    import onnxruntime as ort

    x = np.random.default_rng(0).random((8, 3, 64, 64)).astype(np.float32)  # fp16 file, fp32 input
    if how.get("daemon"):
        from daemon.inference import sessions

        if how.get("spinning"):
            sessions.INTRA_OP_SPINNING = "1"
        classifier = sessions.Classifier(
            MODELS / "classifier.json", "cuda", how.get("threads", 2), how.get("fp16", True),
            io_binding=how.get("io_binding"), conv_algo_search=how.get("search", "EXHAUSTIVE"))
        crops = (np.random.default_rng(0).random((8, classifier.crop_size,
                                                  classifier.crop_size, 3)) * 255)
        crops = crops.astype(np.uint8)
        call = lambda: classifier.compute(crops)  # noqa: E731
        used = classifier.provider
    else:
        options = ort.SessionOptions()
        if how.get("options"):
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.intra_op_num_threads = 2
            options.inter_op_num_threads = 1
        cuda = (("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"})
                if how.get("provider_options") else "CUDAExecutionProvider")
        providers = [cuda, "CPUExecutionProvider"] if how.get("cpu_listed") else [cuda]
        session = ort.InferenceSession(str(MODELS / model), options, providers=providers)
        feed = session.get_inputs()[0].name
        used = session.get_providers()[0]
        outputs = ["probabilities"] if how.get("one_output") else None

        def call() -> object:
            if not how.get("io_binding"):
                return session.run(outputs, {feed: x})
            binding = session.io_binding()
            binding.bind_ortvalue_input(feed, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for output in outputs or [o.name for o in session.get_outputs()]:
                binding.bind_output(output, "cuda", 0)
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
    call()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    queue.put({"case": name, "provider": used, "median_ms": round(statistics.median(times), 2),
               "ms": [round(t, 1) for t in times]})


def main(seconds: float) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    processes = {name: ctx.Process(target=case, args=(name, how, "classifier_fp16.onnx", queue))
                 for name, how in CASES.items()}
    for process in processes.values():
        process.start()
    deadline = time.monotonic() + seconds
    for process in processes.values():
        process.join(max(0.0, deadline - time.monotonic()))
    done = {}
    while not queue.empty():
        line = queue.get()
        done[line["case"]] = line
    for name, process in processes.items():
        if process.is_alive():
            process.kill()
        line = done.get(name) or {"case": name, "error": (
            f"not done in {seconds:g} s" if process.exitcode is None
            else f"exit {process.exitcode}")}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
