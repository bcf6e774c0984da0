"""Graceful stop on SIGTERM/SIGINT, the same way in every process of the tree."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def on_stop_signals(stop: Callable[[], None], what: str) -> None:
    """Call ``stop()`` on SIGTERM or SIGINT (main thread only), logging which signal came."""

    def handler(signum: int, _frame: object) -> None:
        log.info(f"{what} stopping", extra={"signal": signal.Signals(signum).name})
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
