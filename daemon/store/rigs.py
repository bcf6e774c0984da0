"""Each rig's running red-cell diameters, shared by every API process through Redis.

A pushed frame with no scale of its own is quality-checked at its rig's running red-cell
estimate (``daemon.imaging.scale``: the median of the rig's last diameters). The API's
decoding children measure, the API keeps: kept in one API process's memory, two replicas
(or a restarted one) each had their own history, so one rig's frames passed or failed QC
by which replica took them. Here the history is one hash field per rig
(``keys.RBC_HISTORY_KEY``), appended to by one script (``scripts/remember_diameters.lua``):
concurrent pushes of one rig all land, in at most ``history`` diameters a rig and
``max_rigs`` rigs (the least recently measured rig's history goes first), so a client
naming new rig ids cannot grow Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from daemon.store import scripts
from daemon.store.keys import RBC_HISTORY_KEY, RBC_RIGS_KEY


class RedCellHistory:
    """Rigs' red-cell diameters (frame pixels, oldest first), bounded, in Redis."""

    def __init__(self, client: redis.Redis, history: int, max_rigs: int) -> None:
        """``history``, ``max_rigs``: the rigs' running estimate's own bounds
        (``daemon.imaging.scale.HISTORY``, ``MAX_RIGS``, which this layer does not import)."""
        self.client = client
        self.history = history
        self.max_rigs = max_rigs
        self._remember = client.register_script(scripts.REMEMBER_DIAMETERS)

    def diameters(self, rig: str) -> list[float]:
        """The rig's recent diameters, oldest first ([] for a rig never measured)."""
        return _parse(self.client.hget(RBC_HISTORY_KEY, rig))

    def remember(self, rig: str, diameters: Iterable[float]) -> list[float]:
        """Append ``diameters`` to the rig's history (atomically, whoever else appends);
        returns the history after it."""
        new = [repr(float(d)) for d in diameters]
        if not new:
            return self.diameters(rig)
        kept = self._remember(keys=[RBC_HISTORY_KEY, RBC_RIGS_KEY],
                              args=[rig, self.history, self.max_rigs, *new])
        return _parse(kept)


def _parse(value: bytes | str | None) -> list[float]:
    if not value:
        return []
    text = value.decode() if isinstance(value, bytes) else value
    return [float(v) for v in text.split()]
