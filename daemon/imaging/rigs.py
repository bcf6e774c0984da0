"""Per-rig running histories in a process's memory, bounded in values and in rigs.

The red-cell scale (``scale.Rescaler``) and the stain hue (``stain.StainCalibrator``) each
keep, per rig, its last few measurements; a client naming ever new rig ids must not grow
them, so the least recently used rig goes first.
"""

from __future__ import annotations

from collections import OrderedDict, deque


def rig_history(rigs: OrderedDict[str, deque[float]], rig: str, history: int,
                max_rigs: int) -> deque[float]:
    """``rig``'s history in ``rigs`` (a new one of at most ``history`` values if it had
    none), marked most recently used; the least recently used rigs beyond ``max_rigs`` are
    dropped."""
    values = rigs.pop(rig, None) or deque(maxlen=history)
    rigs[rig] = values  # most recently used last
    while len(rigs) > max_rigs:
        rigs.popitem(last=False)
    return values
