"""Watched-folder capture: take finished image files from the inbox and queue them on Redis.

Entry points: :func:`capture.service.run_capture` (the ``leukoscope capture`` process) and
:class:`capture.service.CaptureService` (the same loop, startable in a thread).
"""

from capture.service import CaptureService, run_capture

__all__ = ["CaptureService", "run_capture"]
