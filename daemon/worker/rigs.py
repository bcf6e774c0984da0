"""A worker's rigs' red-cell scale estimates, kept in Redis and shared with every worker.

A frame with no µm/px is rescaled by its rig's running median red-cell diameter
(``daemon.imaging.scale.Rescaler``). Kept in each worker's memory, with ``workers: N`` one
rig's frames were rescaled by N histories, and a restarted worker measured its first frames
of a rig from scratch (and decoded them in full, having no planned factor). Here the
rescaler's history of each rig a batch holds frames of is read from Redis
(``daemon.store.rigs.RedCellHistory``, the one the API's quality control uses) before the
batch, in one HMGET, and the diameters the batch measured are appended after it, one script
call a rig in one round trip. Within a batch the rescaler's own copy moves with every frame,
as it did before.

Redis refusing either (lost, timed out, out of memory): the worker goes on with the history
it holds (its last read plus what it measured since), logs the first failure and the
recovery, and counts ``leukoscope_rig_history_errors_total``; no frame waits or fails for it.
Diameters that could not be appended are not sent later: the estimate is a median of the
last ones and misses nothing it needs, and the frames of a batch whose results could not be
stored either are measured again when they are redelivered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from daemon import telemetry
from daemon.imaging.scale import Rescaler
from daemon.imaging.stain import StainCalibrator
from daemon.store.rigs import RedCellHistory, RigHistory, StainHueHistory

log = logging.getLogger(__name__)

ERRORS = "leukoscope_rig_history_errors_total"


class SharedRigHistory:
    """Connects a worker's ``Rescaler`` (imaging) with the rigs' histories in Redis (store).
    Also serves the stain calibration's hues (``for_stain``): the same protocol, its own keys."""

    def __init__(self, holder: Rescaler | StainCalibrator, history: RigHistory,
                 what: str = "red-cell") -> None:
        self.holder = holder
        self.history = history
        self.what = what
        self.failing = False  # a read or append failed and none has succeeded since

    @classmethod
    def for_client(cls, rescaler: Rescaler, client: redis.Redis) -> SharedRigHistory:
        """Redis's bounds are the rescaler's own (``scale.HISTORY``, ``MAX_RIGS``)."""
        return cls(rescaler, RedCellHistory(client, rescaler.history, rescaler.max_rigs))

    @classmethod
    def for_stain(cls, stain: StainCalibrator, client: redis.Redis) -> SharedRigHistory:
        """The rigs' stain hues (``stain.HISTORY``, ``MAX_RIGS``), as for the scale."""
        return cls(stain, StainHueHistory(client, stain.history, stain.max_rigs), "stain hue")

    @property
    def active(self) -> bool:
        """Whether the holder estimates anything (models with a scale / a stain reference)."""
        if isinstance(self.holder, StainCalibrator):
            return self.holder.reference_deg is not None
        return self.holder.model_scale is not None

    def load(self, rigs: Iterable[str | None]) -> None:
        """Before a batch: each of ``rigs`` (those with frames of no given µm/px; for the
        stain, every frame's rig) takes its history from Redis, and the holder starts noting
        what the batch measures."""
        self.holder.learned = {}
        names = [r for r in dict.fromkeys(rigs) if r is not None]
        if not names or not self.active:
            return  # nothing will be estimated: no round trip
        try:
            shared = self.history.many(names)
        except redis.RedisError as exc:
            self._failed("read", exc)
            return
        self._ok()
        for rig, diameters in shared.items():
            # A rig Redis does not hold (never measured, or past the rigs' bound) has no
            # estimate for any worker; keeping this worker's own would make its frames
            # depend on which worker took them again.
            self.holder.adopt(rig, diameters)

    def save(self) -> None:
        """After a batch: append what it measured, each rig's in one atomic script call."""
        learned, self.holder.learned = self.holder.learned or {}, {}
        if not any(learned.values()):
            return
        try:
            self.history.remember_many(learned)
        except redis.RedisError as exc:
            self._failed("append", exc)
            return
        self._ok()

    def _failed(self, op: str, exc: redis.RedisError) -> None:
        telemetry.count(ERRORS, {"op": op})
        if not self.failing:
            log.warning(f"the rigs' shared {self.what} history is unavailable; going on "
                        "with this worker's own until it is back",
                        extra={"op": op, "error": f"{type(exc).__name__}: {exc}"})
        self.failing = True

    def _ok(self) -> None:
        if self.failing:
            log.info(f"the rigs' shared {self.what} history is back")
        self.failing = False
