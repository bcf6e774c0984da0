"""Graceful stop on SIGTERM/SIGINT, the same way in every process of the tree."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def stop_while_starting(what: str) -> None:
    """Until :func:`on_stop_signals` installs the process's own stop, end it on SIGTERM or
    SIGINT with exit status 0 (``SystemExit``: ``finally`` blocks and ``atexit`` run; main
    thread only). A process that already serves its metrics is visible to ops and to its
    supervisor; a stop sent then is a stop, not a kill by signal (status -15) half-way
    through its start, and it must not wait for a start that may wait on Redis."""

    def exit_now(signum: int, _frame: object) -> None:
        log.info(f"{what} stopped while starting", extra={"signal": signal.Signals(signum).name})
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_now)
    signal.signal(signal.SIGINT, exit_now)


def on_stop_signals(stop: Callable[[], None], what: str) -> None:
    """Call ``stop()`` on SIGTERM or SIGINT (main thread only), logging which signal came."""

    def handler(signum: int, _frame: object) -> None:
        log.info(f"{what} stopping", extra={"signal": signal.Signals(signum).name})
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
