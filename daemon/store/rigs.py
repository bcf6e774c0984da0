"""Each rig's running red-cell diameters and stain hues, shared by every API process and
worker through Redis.

A frame with no scale of its own is quality-checked (API) and rescaled (worker) at its rig's
running red-cell estimate (``daemon.imaging.scale``: the median of the rig's last
diameters). Kept in each process's memory, two API replicas or two workers (or a restarted
one) each had their own history, so one rig's frames passed QC, or were brought to the
models' scale, by which process took them. Here the history is one hash field per rig
(``keys.RBC_HISTORY_KEY``), appended to by one script (``scripts/remember_diameters.lua``):
concurrent pushes of one rig all land, in at most ``history`` diameters a rig and
``max_rigs`` rigs (the least recently measured rig's history goes first), so a client
naming new rig ids cannot grow Redis. The workers' stain calibration
(``daemon.imaging.stain``) keeps each rig's recent stain hues the same way, under its own keys
(``keys.STAIN_HISTORY_KEY``): one rig's frames are turned alike whichever worker takes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis

from daemon.store import scripts
from daemon.store.keys import (
    RBC_HISTORY_KEY,
    RBC_RIGS_KEY,
    STAIN_HISTORY_KEY,
    STAIN_RIGS_KEY,
)


class RigHistory:
    """Rigs' recent values of one measure (oldest first), bounded, in Redis."""

    HISTORY_KEY: str
    RIGS_KEY: str

    def __init__(self, client: redis.Redis, history: int, max_rigs: int) -> None:
        """``history``, ``max_rigs``: the rigs' running estimate's own bounds
        (``daemon.imaging.scale.HISTORY``, ``MAX_RIGS``, which this layer does not import)."""
        self.client = client
        self.history = history
        self.max_rigs = max_rigs
        self._remember = client.register_script(scripts.REMEMBER_DIAMETERS)

    def diameters(self, rig: str) -> list[float]:
        """The rig's recent diameters, oldest first ([] for a rig never measured)."""
        return _parse(self.client.hget(self.HISTORY_KEY, rig))

    def remember(self, rig: str, diameters: Iterable[float]) -> list[float]:
        """Append ``diameters`` to the rig's history (atomically, whoever else appends);
        returns the history after it."""
        new = [repr(float(d)) for d in diameters]
        if not new:
            return self.diameters(rig)
        kept = self._remember(keys=[self.HISTORY_KEY, self.RIGS_KEY],
                              args=[rig, self.history, self.max_rigs, *new])
        return _parse(kept)

    def many(self, rigs: Iterable[str]) -> dict[str, list[float]]:
        """Several rigs' histories in one round trip (HMGET): a worker's batch reads the
        rigs it holds frames of once, not once a frame."""
        names = list(dict.fromkeys(rigs))
        if not names:
            return {}
        values = self.client.hmget(self.HISTORY_KEY, names)
        return {rig: _parse(value) for rig, value in zip(names, values, strict=True)}

    def remember_many(self, diameters: Mapping[str, Iterable[float]]) -> None:
        """Append each rig's new ``diameters``, one script call a rig, all in one round
        trip (``scripts.run_many``); each call is atomic as :meth:`remember` is."""
        calls = []
        for rig, values in diameters.items():
            new = [repr(float(d)) for d in values]
            if new:
                calls.append((self._remember, [self.HISTORY_KEY, self.RIGS_KEY],
                              [rig, self.history, self.max_rigs, *new]))
        scripts.run_many(self.client, calls)


class RedCellHistory(RigHistory):
    """Rigs' red-cell diameters (frame pixels, oldest first)."""

    HISTORY_KEY, RIGS_KEY = RBC_HISTORY_KEY, RBC_RIGS_KEY


class StainHueHistory(RigHistory):
    """Rigs' stain hues (degrees, oldest first)."""

    HISTORY_KEY, RIGS_KEY = STAIN_HISTORY_KEY, STAIN_RIGS_KEY


def _parse(value: bytes | str | None) -> list[float]:
    if not value:
        return []
    text = value.decode() if isinstance(value, bytes) else value
    return [float(v) for v in text.split()]
