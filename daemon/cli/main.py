"""The ``leukoscope`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from daemon import __version__, telemetry
from daemon.domain.ids import valid_name
from daemon.ops.logs import setup_logging
from daemon.settings import ConfigError, Settings, load_settings
from daemon.shutdown import stop_while_starting

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace, role: str) -> Settings:
    settings = load_settings(args.config)
    setup_logging(settings.logging.level, settings.logging.format, role)
    return settings


def _process(settings: Settings, role: str) -> Settings:
    """A long-running part starts: it counts itself alive and, alone on its host, serves its
    own metrics (the API renders them on /metrics itself). A stop signal before the part
    installs its own stop ends it with status 0 (uvicorn, the API's server, has its own)."""
    if role != "api":
        stop_while_starting(role)
    telemetry.announce(role)
    if settings.metrics.port and role != "api":
        try:
            telemetry.serve(settings.metrics.port, settings.metrics.host)
        except OSError as exc:  # metrics must never stop the work itself
            log.error(
                "cannot serve metrics; running without", extra={
                    "host": settings.metrics.host, "port": settings.metrics.port,
                    "error": str(exc)})
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.ops.supervisor import run_all

    return run_all(_settings(args, "supervisor"), args.config)


def cmd_capture(args: argparse.Namespace) -> int:
    from capture.service import run_capture

    return run_capture(_process(_settings(args, "capture"), "capture"))


def cmd_worker(args: argparse.Namespace) -> int:
    from daemon.worker.worker import default_worker_id, run_worker

    settings = _process(_settings(args, f"worker-{args.index}"), "worker")
    return run_worker(settings, args.id or default_worker_id(args.index))


def cmd_api(args: argparse.Namespace) -> int:
    from daemon.api.app import run_api

    return run_api(_process(_settings(args, "api"), "api"))


def cmd_lis(args: argparse.Namespace) -> int:
    from daemon.lis.listener import run_listener

    return run_listener(_process(_settings(args, "lis"), "lis"))


def cmd_classify(args: argparse.Namespace) -> int:
    from daemon.cli.classify import classify_files
    from daemon.inference.analyzer import Analyzer

    settings = _settings(args, "classify")
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"leukoscope classify: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    analyzer = Analyzer.from_settings(settings)
    done, rejected = classify_files(analyzer, paths, batch=settings.workers.batch_frames,
                                    um_per_pixel=settings.capture.um_per_pixel)
    if done + rejected == 0:
        print("leukoscope classify: no image files found", file=sys.stderr)
        return 2
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from daemon.cli.bench import run_bench

    return run_bench(
        _settings(args, "bench"), args.config, args.frames, args.json, args.images, args.rounds,
        args.size, args.enlargement, args.device, args.rate, args.timeout, args.warmup,
    )


def cmd_reliability(args: argparse.Namespace) -> int:
    from daemon.cli.reliability import run_reliability

    return run_reliability(_settings(args, "reliability"), args.scenarios, args.flood, args.json,
                           args.queue_frames)


def cmd_qc(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from capture.intake import assess_at_model_scale, qc_rescaler
    from daemon.cli.classify import image_files
    from daemon.imaging.frames import FrameRejected, decode_rgb

    settings = _settings(args, "qc")
    rescaler = qc_rescaler(settings)  # as capture measures: at the models' scale
    measured: dict[str, list[float]] = {}
    failed = 0
    for path in image_files([Path(p) for p in args.paths]):
        try:
            quality = assess_at_model_scale(decode_rgb(path.read_bytes()),
                                            settings.capture.um_per_pixel, rescaler,
                                            settings.capture.qc, "qc")
        except (OSError, FrameRejected) as exc:
            print(json.dumps({"source": str(path), "ok": False, "error": str(exc)}))
            failed += 1
            continue
        failed += not quality.ok
        for name, value in quality.values.items():
            measured.setdefault(name, []).append(value)
        if not args.summary:
            print(json.dumps({"source": str(path), "ok": quality.ok, "reason": quality.reason,
                              "values": quality.values}))
    if args.summary:
        count = len(next(iter(measured.values()), []))
        print(f"{count} frames measured, {failed} would be rejected with capture.qc as set")
        print(f"{'measure':20s} {'min':>9s} {'p1':>9s} {'p50':>9s} {'p99':>9s} {'max':>9s}")
        for name, values in measured.items():
            q = np.percentile(values, [0, 1, 50, 99, 100])
            print(f"{name:20s} " + " ".join(f"{v:9.4g}" for v in q))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.cli.status import print_status

    return print_status(_settings(args, "status"), args.url, args.key)


def cmd_keygen(args: argparse.Namespace) -> int:
    from daemon.api.auth import keygen

    if not valid_name(args.name):
        print("leukoscope keygen: NAME must be 1-64 of [A-Za-z0-9_.-]", file=sys.stderr)
        return 2
    key, line = keygen(args.name, args.role)
    print(f"API key for {args.name} ({args.role}), shown once; give it to the client now:")
    print(f"  {key}")
    print("Add this line under auth.keys in the configuration (only the digest is stored):")
    print(f"  {line}")
    return 0


def cmd_export_labels(args: argparse.Namespace) -> int:
    from daemon.cli.export_labels import export_labels
    from daemon.store.connection import connect

    settings = _settings(args, "export-labels")
    written = export_labels(settings, connect(settings), Path(args.out), args.specimen or None)
    print(f"{written} verified cell crops written under {args.out} (labels.csv lists them)")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    """List the parked (dead-letter) LIS messages, or put some back in the outbox."""
    import datetime
    import time

    from daemon.store import outbox
    from daemon.store.connection import connect

    settings = _settings(args, "outbox")
    client = connect(settings)
    if args.action == "list":
        found = outbox.parked(client)
        for entry in found:
            at = datetime.datetime.fromtimestamp(entry.parked_at, datetime.UTC)
            print(f"{entry.specimen_id}\t{at:%Y-%m-%dT%H:%M:%SZ}\t{entry.attempts} attempts\t"
                  f"{entry.reason or ''}")
        print(f"{len(found)} parked LIS message(s)", file=sys.stderr)
        return 0
    targets = [e.specimen_id for e in outbox.parked(client)] if args.all else args.specimens
    if not targets:
        print("leukoscope outbox retry: name SPECIMEN ids or --all", file=sys.stderr)
        return 2
    missing = [s for s in targets if not outbox.retry(client, s, time.time())]
    for specimen_id in missing:
        print(f"leukoscope outbox retry: {specimen_id} has no parked message", file=sys.stderr)
    print(f"{len(targets) - len(missing)} message(s) back in the outbox")
    return 1 if missing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leukoscope",
        description="White-cell segmentation and ALL subtype classification beside a microscope."
        " For research use only. Not for use in diagnostic procedures.",
    )
    parser.add_argument("--version", action="version", version=f"leukoscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=None, help="configuration file (YAML)")
        p.set_defaults(func=func)
        return p

    command("run", cmd_run, "capture + workers + API as one supervised process tree")
    command("capture", cmd_capture, "watch the inbox and queue frames")
    worker = command("worker", cmd_worker, "analyse queued frames")
    worker.add_argument("--index", type=int, default=0, help="worker number on this host")
    worker.add_argument("--id", default=None, help="consumer name (default: <host>-w<index>)")
    command("api", cmd_api, "serve status, results and metrics over HTTP")
    command("lis", cmd_lis, "accept LIS orders (OML^O33, ORM^O01) over MLLP (lis.listen)")
    classify = command(
        "classify", cmd_classify, "classify image files in-process (no Redis); prints JSON Lines"
    )
    classify.add_argument("paths", nargs="+", help="image files or folders")
    bench = command("bench", cmd_bench, "measure bare-model and through-daemon throughput")
    bench.add_argument("--frames", type=int, default=200)
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--rounds", type=int, default=3, help="daemon runs, each between bare runs")
    bench.add_argument(
        "--images", default=None, help="folder of images to use (default: synthetic)"
    )
    bench.add_argument("--size", default=None,
                       help="synthetic fields of WIDTHxHEIGHT pixels (default 224x224)")
    bench.add_argument("--enlargement", type=float, default=1.0,
                       help="synthetic cells this many times the models' scale (no um/px given)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None,
                       help="workers' device (default: from config)")
    bench.add_argument("--rate", type=float, default=None,
                       help="open loop: offer frames at this many per second")
    bench.add_argument("--warmup", type=int, default=0,
                       help="frames analysed first and not counted, in the bare loop and "
                            "through the daemon (on CUDA each new input shape costs seconds "
                            "once per worker)")
    bench.add_argument("--timeout", type=float, default=600,
                       help="seconds to wait for a round's results before counting the rest missing")
    reliability = command("reliability", cmd_reliability,
                          "hostile input (dropped and pushed), workers and Redis killed, a poison "
                          "frame, a flood: outcomes, memory bounds (exit 1 when one fails)")
    reliability.add_argument(
        "--scenarios", nargs="+",
        default=["hostile", "push-hostile", "worker-kill", "poison", "redis-kill", "flood",
                 "slow-clients", "audit-week"],
        choices=["hostile", "push-hostile", "worker-kill", "poison", "redis-kill", "flood",
                 "slow-clients", "audit-week", "queue-memory", "specimen-memory"])
    reliability.add_argument("--flood", type=int, default=10_000, help="frames in the flood")
    reliability.add_argument("--queue-frames", type=int, default=1000,
                             help="queue-memory: 1920x1280 camera frames queued with no worker")
    reliability.add_argument("--json", action="store_true", help="print one JSON object")
    keygen = command("keygen", cmd_keygen, "make an API key and print its auth.keys line")
    keygen.add_argument("name", help="who uses the key (shown in the audit trail)")
    keygen.add_argument("role", choices=["ingest", "read", "reviewer", "admin"])
    qc = command("qc", cmd_qc, "measure frame quality (focus, exposure, stain) as the workers do")
    qc.add_argument("paths", nargs="+", help="image files or folders")
    qc.add_argument("--summary", action="store_true", help="percentiles instead of one line a file")
    export = command("export-labels", cmd_export_labels,
                     "write verified cells' crops and reviewed labels for leukoscope train")
    export.add_argument("--out", required=True, help="folder (train --data layout)")
    export.add_argument("--specimen", action="append", help="only these specimens (repeatable)")
    status = command("status", cmd_status, "print the daemon's /status as a table")
    status.add_argument("--url", default=None, help="API base URL (default: from config)")
    status.add_argument("--key", default=None,
                        help="API key with role read (default: $LEUKOSCOPE_API_KEY)")
    box = command("outbox", cmd_outbox,
                  "list parked (dead-letter) LIS messages, or send them again (retry)")
    box.add_argument("action", choices=["list", "retry"])
    box.add_argument("specimens", nargs="*", help="specimen ids to retry")
    box.add_argument("--all", action="store_true", help="retry every parked message")
    try:
        from daemon.training.cli import add_training_commands
    except ImportError:  # training code not installed
        pass
    else:
        add_training_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"leukoscope: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
