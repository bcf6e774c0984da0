"""A worker process: read frames from the queue, analyse them in batches, store results.

Each frame is decoded once, here: quality control (daemon/imaging/quality.py) measures it at
the models' scale, between rescaling and the background gain, and a failing frame is stored
as ``rejected`` with its measures (the capture archiver then quarantines the original).
A frame is acknowledged only by the script that stores its result; bytes it had in the
frame store are deleted only after that. On start a worker first
re-reads the entries it still holds from a previous life (same consumer name), then takes
new ones; every ``claim_idle_seconds`` it also takes over entries of silent consumers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import redis

from daemon import __version__, telemetry
from daemon.domain.limits import PHYSICAL_UM_PER_PIXEL, valid_um_per_pixel
from daemon.domain.results import AcquisitionInfo, FrameResult, ScaleInfo
from daemon.imaging.frames import Decoded, FrameRejected, decode_reduced
from daemon.imaging.quality import assess
from daemon.inference.analyzer import Analyzer, FrameAnalysis
from daemon.inference.gpu import gpu_stats
from daemon.settings import Settings
from daemon.shutdown import on_stop_signals
from daemon.store import heartbeats, keys
from daemon.store.connection import Outage, connect
from daemon.store.frames import MissingFrame
from daemon.store.queue import Delivery, FrameQueue
from daemon.store.results import ResultStore
from daemon.worker.rigs import SharedRigHistory

log = logging.getLogger(__name__)

# A frame and the result to store for it, or the call that makes that result: an analysed
# frame's result is built on the store thread, off the critical path of the next batch.
Outcome = tuple[Delivery, FrameResult | Callable[[], FrameResult]]

#: after a chunk of at least this many pixels, freed memory is given back to the OS
#: (glibc keeps it otherwise: a worker stayed at 962 MB after one 2000x2000 frame)
TRIM_AFTER_PIXELS = 1_000_000


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class QcRejected(FrameRejected):
    """A frame that failed quality control, with the measured values for its result."""

    def __init__(self, reason: str, message: str, quality: dict[str, float]) -> None:
        super().__init__(reason, message)
        self.quality = quality


def default_worker_id(index: int = 0) -> str:
    return f"{heartbeats.host_name()}-w{index}"


class Worker:
    def __init__(self, settings: Settings, worker_id: str, analyzer: Analyzer | None = None):
        self.settings = settings
        self.id = worker_id
        self.client = connect(settings)
        self.queue = FrameQueue.for_settings(self.client, settings)
        self.store = ResultStore(
            self.client, keys.STREAM_KEY, keys.GROUP, settings.specimens.low_confidence
        )
        self.analyzer = analyzer or Analyzer.from_settings(settings)
        # Rigs' running red-cell estimates: one per rig for every worker, kept in Redis.
        self.rig_scales = SharedRigHistory.for_client(self.analyzer.rescaler, self.client)
        # ... and their stain hues (stain calibration), likewise.
        self.rig_stains = SharedRigHistory.for_stain(self.analyzer.stain, self.client)
        self.stopping = threading.Event()
        self.frames_done = 0
        self.started_at = time.time()
        self.heart = heartbeats.Heartbeat(
            self.client, keys.WORKERS_KEY, worker_id, settings.workers.heartbeat_seconds
        )
        self._storer: ThreadPoolExecutor | None = None
        self._storing: Future | None = None
        self._decoder: ThreadPoolExecutor | None = None  # workers.decode_threads
        self._analyser: ThreadPoolExecutor | None = None  # workers.overlap_analysis
        self._last_claim = 0.0

    # --- lifecycle ----------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        on_stop_signals(self.stopping.set, "worker")

    def heartbeat(self, force: bool = False) -> None:
        self.heart.beat(
            lambda: {
                "provider": self.analyzer.provider,
                "started_at": self.started_at,
                "frames_done": self.frames_done,
                "version": __version__,
                "models": {k: v.model_dump() for k, v in self.analyzer.model_refs().items()},
                "gpus": gpu_stats() if self.analyzer.provider.startswith("CUDA") else [],
            },
            force,
        )

    def run(self) -> None:
        self.analyzer.warm_up()
        log.info("worker ready", extra={"worker": self.id, "provider": self.analyzer.provider})
        self.heartbeat(force=True)
        # Entries this consumer held when it last died come first.
        self.drain_own()
        # From here on a batch's results are stored while the next batch is analysed.
        self._storer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        if self.settings.workers.overlap_analysis:
            self._analyser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analyse")
        outage = Outage("worker", worker=self.id)
        try:
            while not self.stopping.is_set():
                try:
                    if outage.failures:
                        # Results of a batch whose store failed were never acknowledged:
                        # they are still this consumer's pending entries; take them again.
                        self.heartbeat(force=True)
                        self.drain_own()
                        outage.ok()
                    self.step()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    try:
                        self.flush()  # a store in flight: let it finish or fail first
                    except Exception:  # noqa: BLE001 - its entries stay pending, re-read
                        pass
                    self.stopping.wait(outage.failed(exc))
        finally:
            try:
                self.flush()
            finally:
                self._storer.shutdown(wait=True)
                self._storer = None
                if self._decoder is not None:
                    self._decoder.shutdown(wait=True)
                    self._decoder = None
                if self._analyser is not None:
                    self._analyser.shutdown(wait=True)
                    self._analyser = None
        try:
            self.heart.leave()
        except redis.RedisError as exc:
            log.warning("worker could not leave the registry", extra={"error": str(exc)})
        log.info("worker stopped", extra={"worker": self.id, "frames_done": self.frames_done})

    def drain_own(self) -> None:
        """Process the entries this consumer already holds (delivered, never acknowledged)."""
        while not self.stopping.is_set():
            own = self.queue.read(self.id, self.settings.workers.batch_frames, 0, own_pending=True)
            if not own:
                return
            self.process(own)
            self.flush()

    def step(self, block_ms: int = 500) -> int:
        """One read-process cycle; returns how many frames it handled."""
        self.heartbeat()
        batch: list[Delivery] = []
        claim_every = self.settings.queue.claim_idle_seconds / 2
        if time.monotonic() - self._last_claim > claim_every:
            self._last_claim = time.monotonic()
            batch = self.queue.reclaim(
                self.id,
                int(self.settings.queue.claim_idle_seconds * 1000),
                self.settings.workers.batch_frames,
            )
            if batch:
                log.warning(
                    "reclaimed frames of a silent worker",
                    extra={"worker": self.id, "count": len(batch)},
                )
        if not batch:
            batch = self.queue.read(self.id, self.settings.workers.batch_frames, block_ms)
            if batch:
                batch += self._fill(len(batch))
        if batch:
            self.process(batch)
        return len(batch)

    def _fill(self, have: int) -> list[Delivery]:
        """Dynamic batching (Triton's max_queue_delay): after a batch's first frames, wait up
        to ``workers.max_queue_delay_ms`` for more, up to ``batch_frames``. A GPU runs a
        batch of 8 in about the time of one, so a few ms of waiting buys throughput; on the
        CPU the default 0 takes what is queued at once (a batch costs what its frames do)."""
        workers = self.settings.workers
        if workers.max_queue_delay_ms <= 0 or have >= workers.batch_frames:
            return []
        deadline = time.monotonic() + workers.max_queue_delay_ms / 1000
        more: list[Delivery] = []
        while have + len(more) < workers.batch_frames and not self.stopping.is_set():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                break
            more += self.queue.read(self.id, workers.batch_frames - have - len(more), left_ms)
        return more

    # --- the work -----------------------------------------------------------------------
    def _result(self, d: Delivery, status: str, **fields: object) -> FrameResult:
        return FrameResult(
            frame_id=d.frame_id,
            specimen_id=d.specimen_id,
            source=d.source,
            rig_id=d.rig_id,
            status=status,
            captured_at=d.captured_at,
            completed_at=time.time(),
            models=self.analyzer.model_refs(),
            worker=self.id,
            um_per_pixel=d.um_per_pixel,
            metadata=d.metadata,
            **fields,
        )

    def process(self, batch: list[Delivery]) -> None:
        """Analyse a batch and store one result per frame (duplicates are acked only).

        Poison isolation: a frame delivered before (its worker crashed or stalled holding
        it) is analysed alone, after its batch's other frames are stored, and each such
        attempt is counted in Redis; once it has been attempted alone more than
        ``queue.max_deliveries`` times it is stored as ``failed``. Its neighbours in the
        batch that crashed are retried alone too and end normally. Frames are analysed in
        groups of at most ``workers.max_batch_pixels`` pixels.
        """
        started = time.time()
        # Only a redelivered frame can have a result already (stored by a worker that died
        # before acknowledging): enqueue refuses a frame with a result, and a first delivery
        # is the only one. So a batch of first deliveries (the steady state) spends no round
        # trip here; should a frame be queued twice after all, the store's SET NX keeps its
        # first result and acknowledges the second.
        done_already = self.store.existing([d.frame_id for d in batch if d.deliveries > 1])
        fresh: list[Delivery] = []
        suspects: list[Delivery] = []
        for d in batch:
            if d.frame_id in done_already:
                # Stored by a worker that died before acknowledging: just ack.
                self.store.ack(d.entry_id)
                self.queue.release([d])  # its result is stored: the bytes are not needed
                log.info("duplicate frame acknowledged", extra={"frame_id": d.frame_id})
                continue
            (suspects if d.deliveries > 1 else fresh).append(d)
        # Before any frame decodes (planned factors) or is measured: the rigs' shared
        # estimates, in one round trip; the frames' diameters go back in one after the batch.
        self.rig_scales.load(d.rig_id for d in fresh + suspects if d.um_per_pixel is None)
        self.rig_stains.load(d.rig_id for d in fresh + suspects)
        if fresh:
            self._process_group(fresh, started)
        limit = self.settings.queue.max_deliveries
        hard_cap = limit * (self.settings.workers.batch_frames + 1)
        for d in suspects:
            self.flush()  # the neighbours are stored before a suspect runs alone
            attempts = self.queue.solo_attempt(d.frame_id)
            if attempts > limit or d.deliveries > hard_cap:
                error = (f"frame crashed or stalled a worker {attempts - 1} times when "
                         f"analysed alone ({d.deliveries - 1} deliveries in all)")
                log.error("poison frame failed", extra={"frame_id": d.frame_id,
                                                        "specimen_id": d.specimen_id})
                self._submit([(d, self._result(d, "failed", error=error))])
                continue
            log.warning("frame delivered before; analysing it alone", extra={
                "frame_id": d.frame_id, "deliveries": d.deliveries, "attempt": attempts})
            self._process_group([d], started)
        self.rig_scales.save()
        self.rig_stains.save()

    def _submit(self, outcomes: list[Outcome]) -> None:
        self.flush()  # one batch in flight at most: results are stored in order
        if self._storer is None:
            self._store_all(outcomes)
        else:
            self._storing = self._storer.submit(self._store_all, outcomes)

    def _decode(self, d: Delivery, full: bool = False) -> tuple[Decoded, float]:
        """The frame's pixels (pixel budget first) and the ms it took; FrameRejected.

        A JPEG whose factor to the models' scale is known before decoding (a given µm/px,
        or the rig's running red-cell estimate) decodes reduced in the DCT when it will be
        shrunk at least 2x anyway (``workers.reduced_decode``; ``full`` forces a full
        decode). Only reads shared state (the rig's estimate), so it runs on the decode
        threads."""
        started = time.perf_counter()
        if d.um_per_pixel is not None and not valid_um_per_pixel(d.um_per_pixel):
            low, high = PHYSICAL_UM_PER_PIXEL
            raise FrameRejected("bad_scale", f"um_per_pixel {d.um_per_pixel!r} is not a finite "
                                f"number from {low} to {high}")
        try:
            data = self.queue.load(d)  # inline, or from the frame store
        except MissingFrame as exc:
            raise FrameRejected("unreadable", str(exc)) from exc
        except OSError as exc:
            raise FrameRejected("unreadable", f"cannot read the frame store: {exc}") from exc
        factor = None
        if self.settings.workers.reduced_decode and not full:
            factor = self.analyzer.rescaler.planned_factor(d.um_per_pixel, d.rig_id)
        decoded = decode_reduced(data, factor, self.settings.capture.max_frame_bytes,
                                 self.settings.capture.max_frame_pixels)
        return decoded, (time.perf_counter() - started) * 1000

    def _decoded(self, group: list[Delivery]
                 ) -> Iterator[tuple[Delivery, Callable[[], tuple[Decoded, float]]]]:
        """``group`` in order, each with a call that returns its decoded frame (or raises
        FrameRejected). With ``workers.decode_threads`` above 1 the next frames decode on a
        thread pool while this one is rescaled and checked (OpenCV's decoder releases the
        GIL); at most that many decoded frames wait, so memory stays bounded by the window,
        not by ``batch_frames``."""
        threads = self.settings.workers.decode_threads or min(4, os.cpu_count() or 1)
        if threads <= 1 or len(group) <= 1:
            for d in group:
                yield d, lambda d=d: self._decode(d)
            return
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=threads,
                                               thread_name_prefix="decode")
        waiting: deque[tuple[Delivery, Future]] = deque()
        upcoming = iter(group)
        for d in itertools.islice(upcoming, threads):
            waiting.append((d, self._decoder.submit(self._decode, d)))
        while waiting:
            d, future = waiting.popleft()
            following = next(upcoming, None)
            if following is not None:
                waiting.append((following, self._decoder.submit(self._decode, following)))
            yield d, future.result

    def _prepare(self, d: Delivery,
                 decoded: Callable[[], tuple[Decoded, float]] | None = None,
                 ) -> tuple[np.ndarray, ScaleInfo, AcquisitionInfo | None, dict[str, float]]:
        """Decode (pixel budget first; or take ``decoded``'s frame) and bring to the models'
        scale and background, with quality control between; FrameRejected for a frame that
        cannot be, whatever the cause. Also returns the time (ms) each step took: ``decode``,
        ``rescale`` (red-cell ruler, resize, gain) and ``qc``."""
        frame, decode_ms = decoded() if decoded is not None else self._decode(d)
        decoded_at = time.perf_counter()
        qc = self.settings.capture.qc
        qc_ms = 0.0
        try:
            source = (d.metadata or {}).get("um_per_pixel_source", "configured")
            rescaler = self.analyzer.rescaler
            learned = (rescaler.learned or {}).get(d.rig_id or "", [])
            noted = len(learned)
            rescaled, scale = rescaler.to_models(frame, d.um_per_pixel, source, d.rig_id)
            if d.scale_shared:
                # Already in the shared history (the API measured this frame): sent once.
                learned = (rescaler.learned or {}).get(d.rig_id or "", [])
                del learned[noted:]
            if rescaled is None:
                # The rig's estimate moved with this frame past what the reduction allows:
                # decode in full rather than enlarge a reduced image (rare).
                redo_at = time.perf_counter()
                frame, _ = self._decode(d, full=True)
                decode_ms += (time.perf_counter() - redo_at) * 1000
                decoded_at += time.perf_counter() - redo_at
                rescaled = rescaler.apply(frame.image, scale.factor)
            if qc.enabled and not d.qc_done:
                qc_started = time.perf_counter()
                quality = assess(rescaled, qc)
                qc_ms = (time.perf_counter() - qc_started) * 1000
                if not quality.ok:
                    assert quality.reason is not None and quality.message is not None
                    raise QcRejected(quality.reason, quality.message, quality.values)
            prepared, acquisition = self.analyzer.balance(rescaled, d.rig_id)
        except FrameRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - one frame's problem is its own result
            log.exception("frame could not be prepared", extra={"frame_id": d.frame_id})
            raise FrameRejected("undecodable", f"the frame could not be brought to the "
                                f"models' scale: {type(exc).__name__}: {exc}") from exc
        timings = {"decode": decode_ms,
                   "rescale": (time.perf_counter() - decoded_at) * 1000 - qc_ms}
        if qc_ms:
            timings["qc"] = qc_ms
        return prepared, scale, acquisition, timings

    def _process_group(self, group: list[Delivery], started: float) -> None:
        """Decode, analyse (in chunks bounded in pixels) and store ``group``.

        With ``workers.overlap_analysis`` (and the worker running) the group is analysed in
        two halves, the first on the analysis thread while the second is prepared here:
        preparing (decode, red-cell ruler, rescale, quality control) is single-threaded and
        about a third of a frame's time, so the models had a core to spare meanwhile. The
        frames are still prepared one after the other, in order, so the rigs' scale
        histories grow as before; at most one chunk is in analysis at a time."""
        budget = self.settings.workers.max_batch_pixels
        split = (len(group) + 1) // 2 if self._analyser is not None else len(group)
        analysing: Future | None = None
        outcomes: list[Outcome] = []
        images: list[np.ndarray] = []
        ready: list[Delivery] = []
        prep_ms: list[dict[str, float]] = []  # per frame: decode, rescale
        scales: list[ScaleInfo] = []  # how each frame was brought to the models' scale
        acquisitions: list[AcquisitionInfo | None] = []
        pixels = 0

        def analyse_chunk() -> None:
            nonlocal pixels, analysing
            if ready:
                chunk = (list(ready), list(images), list(prep_ms), list(scales),
                         list(acquisitions), started)
                if self._analyser is None:
                    outcomes.extend(self._analyse(*chunk))
                else:
                    if analysing is not None:
                        outcomes.extend(analysing.result())
                    analysing = self._analyser.submit(self._analyse, *chunk)
            for held in (images, ready, prep_ms, scales, acquisitions):
                held.clear()
            if pixels >= TRIM_AFTER_PIXELS:
                _malloc_trim()
            pixels = 0

        for d, decoded in self._decoded(group):
            try:
                prepared, scale, acquisition, timings = self._prepare(d, decoded)
            except FrameRejected as exc:
                quality = exc.quality if isinstance(exc, QcRejected) else None
                if quality is not None:
                    log.warning("frame rejected", extra={
                        "frame_id": d.frame_id, "specimen_id": d.specimen_id,
                        "reason": exc.reason, "detail": exc.message, "quality": quality})
                result = self._result(d, "rejected", error=exc.message, reason=exc.reason,
                                      quality=quality)
                outcomes.append((d, result))
                continue
            size = prepared.shape[0] * prepared.shape[1]
            if ready and pixels + size > budget:
                analyse_chunk()
            images.append(prepared)
            prep_ms.append(timings)
            scales.append(scale)
            acquisitions.append(acquisition)
            ready.append(d)
            pixels += size
            if len(ready) >= split:  # the first half: to the models while the rest prepares
                analyse_chunk()
        analyse_chunk()
        if analysing is not None:
            outcomes.extend(analysing.result())
        if outcomes:
            self._submit(outcomes)

    def flush(self) -> None:
        """Wait until the previous batch's results are stored (errors surface here)."""
        if self._storing is not None:
            storing, self._storing = self._storing, None
            storing.result()

    def _analyse(
        self,
        ready: list[Delivery],
        images: list[np.ndarray],
        prep_ms: list[dict[str, float]],
        scales: list[ScaleInfo],
        acquisitions: list[AcquisitionInfo | None],
        started: float,
    ) -> list[Outcome]:
        try:
            analyses = self.analyzer.analyze(images)
        except Exception as exc:  # a model failure must not lose the frames
            if len(ready) > 1:
                # One frame's failure must not fail its neighbours: each again, alone.
                log.warning("analysis of a batch failed; analysing its frames one by one",
                            extra={"worker": self.id, "error": str(exc)})
                out = []
                for i, d in enumerate(ready):
                    out += self._analyse([d], images[i : i + 1], prep_ms[i : i + 1],
                                         scales[i : i + 1], acquisitions[i : i + 1], started)
                return out
            log.exception("analysis failed", extra={"worker": self.id,
                                                    "frame_id": ready[0].frame_id})
            error = f"analysis failed: {type(exc).__name__}: {exc}"
            return [(d, self._result(d, "failed", error=error)) for d in ready]
        cells = sum(len(a.cells) for a in analyses)
        telemetry.observe("leukoscope_batch_frames", len(ready))
        telemetry.observe("leukoscope_batch_cells", cells)
        outcomes: list[Outcome] = []
        # Timings and batch sizes are this process's observations (daemon.telemetry: no
        # exactly-once needed); outcome counters travel with each result's own store.
        for i, (d, analysis) in enumerate(zip(ready, analyses, strict=True)):
            timings = {
                "queue_wait": max(0.0, (started - d.captured_at) * 1000),
                **prep_ms[i],
                **analysis.timings_ms,
            }
            outcomes.append((d, functools.partial(
                self._done, d, analysis, scales[i], acquisitions[i], timings)))
        return outcomes

    def _done(self, d: Delivery, analysis: FrameAnalysis, scale: ScaleInfo,
              acquisition: AcquisitionInfo | None, timings: dict[str, float]) -> FrameResult:
        """The result of an analysed frame (on the store thread: describing the cells,
        building the result and observing its timings cost ~0.1 ms of a 224x224 frame's
        ~12 ms on the thread that analyses)."""
        described = self.analyzer.describe(analysis, scale, acquisition)
        # Cells were found at the models' scale; report them in the frame's own pixels.
        described["cells"] = self.analyzer.rescaler.to_frame(described["cells"], scale.factor)
        for name, ms in timings.items():
            telemetry.observe("leukoscope_stage_seconds", ms / 1000, {"stage": name})
        return self._result(d, "done", timings_ms={k: round(v, 3) for k, v in timings.items()},
                            **described)

    def _store_all(self, pending: list[Outcome]) -> None:
        outcomes = [(d, result() if callable(result) else result) for d, result in pending]
        # completed_at is when the result is stored, so leukoscope_frame_latency_seconds
        # (completed_at - captured_at) includes the wait for the previous batch's store.
        stamp = time.time()
        for _, result in outcomes:
            result.completed_at = max(result.completed_at, stamp)
        store_start = time.perf_counter()
        stored = self.store.store_many([(r, d.entry_id) for d, r in outcomes])
        per_frame = (time.perf_counter() - store_start) / len(outcomes)
        telemetry.observe("leukoscope_stage_seconds", per_frame, {"stage": "store"})
        self.queue.clear_solo([d.frame_id for d, _ in outcomes if d.deliveries > 1])
        # Only now, with every result stored: a crash before this re-reads the bytes.
        self.queue.release([d for d, _ in outcomes])
        for (d, result), new in zip(outcomes, stored, strict=True):
            self.frames_done += int(new)
            log.info(
                "frame stored" if new else "duplicate frame acknowledged",
                extra={
                    "frame_id": d.frame_id,
                    "specimen_id": d.specimen_id,
                    "status": result.status,
                    "frame_class": result.frame_class,
                    "cells": len(result.cells),
                },
            )


def run_worker(settings: Settings, worker_id: str | None = None) -> int:
    worker = Worker(settings, worker_id or default_worker_id())
    worker.install_signal_handlers()
    worker.run()
    return 0
