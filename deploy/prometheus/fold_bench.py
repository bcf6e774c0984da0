"""What folding exited processes' metric files (daemon.telemetry.fold_exited) saves a scrape.

Starts N short child processes in a fresh multiprocess metrics folder, each announcing itself,
observing four stage times and counting a restart, as a worker would, and hands each exited
child to ``telemetry.process_exited``, as the supervisor does (with ``--keep``: only to
prometheus_client's ``mark_process_dead``, as before the fold). Prints the folder's files and
disk bytes, the median of five scrapes of the folder, and the mean time of one fold.

    .venv/bin/python deploy/prometheus/fold_bench.py 200
    .venv/bin/python deploy/prometheus/fold_bench.py 200 --keep
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD = """
from daemon import telemetry
telemetry.announce("worker")
for stage in ("decode", "segment", "classify", "store"):
    telemetry.observe("leukoscope_stage_seconds", 0.01, {"stage": stage})
telemetry.count("leukoscope_worker_restarts_total", {"role": "worker"})
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("children", type=int)
    parser.add_argument("--keep", action="store_true", help="mark_process_dead only, no fold")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from daemon import telemetry

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        telemetry.use_multiprocess_dir(folder)
        folds = []
        for _ in range(args.children):
            child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, env=dict(os.environ))
            if child.wait() != 0:
                raise SystemExit("a child failed")
            start = time.perf_counter()
            if args.keep:
                multiprocess.mark_process_dead(child.pid, str(folder))
            else:
                telemetry.process_exited(child.pid)
            folds.append(time.perf_counter() - start)
        files = [path for path in folder.iterdir() if path.suffix == ".db"]
        disk = sum(path.stat().st_blocks * 512 for path in files)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(telemetry.collector())
        scrapes = []
        for _ in range(5):
            start = time.perf_counter()
            generate_latest(registry)
            scrapes.append(time.perf_counter() - start)
    how = "mark_process_dead only" if args.keep else "folded"
    print(f"{args.children} children, {how}: {len(files)} metric files, {disk / 1024:.0f} KiB "
          f"on disk, scrape {statistics.median(scrapes) * 1000:.1f} ms (median of 5), "
          f"{statistics.mean(folds) * 1000:.1f} ms per exited child")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
