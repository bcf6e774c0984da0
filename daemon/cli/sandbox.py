"""A throwaway installation under a temporary folder, for ``bench`` and ``reliability``.

Both start a whole daemon (``python -m daemon run``) of their own: an embedded Redis and an
inbox under ``root``, the API on a free local port, and none of the caller's
``LEUKOSCOPE_*`` environment, so a developer's settings cannot leak into the measurement.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

from daemon.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(settings: Settings, root: Path, log_level: str) -> tuple[Path, int]:
    """Write ``root/config.yaml`` for a daemon living in ``root``; returns (file, API port)."""
    port = free_port()
    config = settings.model_dump(mode="json")
    config.update(data_dir=str(root / "var"))
    config["redis"]["url"] = None
    config["capture"]["directory"] = str(root / "inbox")
    config["api"].update(host="127.0.0.1", port=port)
    config["logging"]["level"] = log_level
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def clean_env() -> dict[str, str]:
    """This process's environment without ``LEUKOSCOPE_*``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LEUKOSCOPE_")}
