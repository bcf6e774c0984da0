"""``python -m capture [--config FILE]``: the capture process alone (same as ``leukoscope
capture``)."""

from __future__ import annotations

import argparse
import logging
import sys

from capture.service import run_capture
from daemon.settings import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capture")
    parser.add_argument("--config", default=None, help="configuration file (YAML)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.logging.level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run_capture(settings)


if __name__ == "__main__":
    sys.exit(main())
