"""``leukoscope run``: capture, N workers and the API as one supervised process tree.

Each part runs as its own process (``leukoscope <role>``) so a crash in one (a model, a
decoder) cannot take the others down. A child that dies is logged and restarted with
exponential backoff; SIGTERM/SIGINT stops all children gracefully within 10 s, and the exit
code says whether they all stopped cleanly (0) or not (1).

Self-healing: with the embedded Redis, the supervisor checks every second that its server
process lives and starts it again (from its AOF) when it died; the children ride the outage
out with their retries. Children are started with ``PR_SET_PDEATHSIG`` (Linux): if the
supervisor itself is killed, they get SIGTERM and stop, so no orphan holds the API port or
the queue against the next ``leukoscope run`` (which also waits, bounded, for the port).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon import telemetry
from daemon.settings import Settings
from daemon.shutdown import on_stop_signals
from daemon.store.connection import embedded, embedded_running, start_embedded, stop_embedded

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
STOP_GRACE_SECONDS = 8.0
REDIS_CHECK_SECONDS = 1.0
PORT_WAIT_SECONDS = 15.0  # a previous daemon's children stopping (PDEATHSIG) free the port
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody to outlive
            os._exit(1)

    return preexec


@dataclass
class Child:
    role: str
    args: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return " ".join([self.role, *self.args])


class Supervisor:
    def __init__(self, settings: Settings, config_path: str | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.stopping = False
        self.started_redis = False
        self.env = dict(os.environ)
        self.children = [Child("capture", [])]
        self.children += [
            Child("worker", ["--index", str(i)]) for i in range(settings.workers.count)
        ]
        self.children.append(Child("api", []))
        if settings.lis.listen is not None:  # the MLLP order listener (daemon/lis/listener.py)
            self.children.append(Child("lis", []))
        self._preexec = die_with_parent()
        self.settings_embedded = False
        self.redis_restarts = 0
        self._next_redis_check = 0.0

    def _command(self, child: Child) -> list[str]:
        command = [sys.executable, "-m", "daemon", child.role, *child.args]
        if self.config_path:
            command += ["--config", self.config_path]
        return command

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(self._command(child), env=self.env,
                                         preexec_fn=self._preexec)
        child.started_at = time.monotonic()
        log.info("child started", extra={"child": child.name, "child_pid": child.process.pid})

    def _on_exit(self, child: Child, code: int) -> None:
        # Backoff grows with quick successive crashes and resets after a minute of uptime.
        if time.monotonic() - child.started_at > 60:
            child.restarts = 0
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**child.restarts)
        child.restarts += 1
        child.next_start = time.monotonic() + delay
        assert child.process is not None
        telemetry.process_exited(child.process.pid)
        child.process = None
        log.error(
            "child exited; restarting",
            extra={"child": child.name, "exit_code": code, "restart_in_seconds": delay},
        )
        telemetry.count("leukoscope_worker_restarts_total", {"role": child.role})

    def port_in_use(self, wait: float = 0.0) -> str | None:
        """Why the API could not listen, checked before anything starts (None: it can).

        Waits up to ``wait`` seconds for the port to come free (an earlier daemon's API
        stopping after its supervisor was killed)."""
        host, port = self.settings.api.host, self.settings.api.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        deadline = time.monotonic() + wait
        while True:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                    return None
                except OSError as exc:
                    problem = (f"cannot listen on {host}:{port} ({exc.strerror}); is another "
                               "leukoscope running? Set api.port or stop it")
            if time.monotonic() >= deadline:
                return problem
            time.sleep(0.25)

    def check_redis(self) -> None:
        """Start the embedded Redis again if its process died (nothing else would)."""
        if self.settings_embedded and time.monotonic() >= self._next_redis_check:
            self._next_redis_check = time.monotonic() + REDIS_CHECK_SECONDS
            if embedded_running(self.settings.redis_dir):
                return
            log.error("embedded redis is not running; starting it again")
            try:
                _, started = start_embedded(self.settings.redis_dir)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                log.error("embedded redis did not start; retrying", extra={"error": str(exc)})
                return
            self.started_redis = self.started_redis or started
            self.redis_restarts += 1
            log.warning("embedded redis restarted", extra={"restarts": self.redis_restarts})
            telemetry.count("leukoscope_worker_restarts_total", {"role": "redis"})

    def run(self) -> int:
        # A second daemon on the same port would crash-loop its API child forever: refuse.
        problem = self.port_in_use(wait=PORT_WAIT_SECONDS)
        if problem:
            log.error(problem)
            print(f"leukoscope run: {problem}", file=sys.stderr)
            return 2
        # One multiprocess metrics folder for this tree (daemon.telemetry): the children
        # inherit it through the environment; the API renders it. The children serve no
        # metrics port of their own.
        telemetry.use_multiprocess_dir(self.settings.metrics_dir)
        self.env[telemetry.ENV] = os.environ[telemetry.ENV]
        self.env["LEUKOSCOPE_METRICS__PORT"] = "0"
        telemetry.announce("supervisor")
        self.settings_embedded = embedded(self.settings)  # not with redis.url or .sentinel
        if self.settings_embedded:
            redis_socket, self.started_redis = start_embedded(self.settings.redis_dir)
            self.env["LEUKOSCOPE_REDIS__URL"] = f"unix://{redis_socket}"
            self.settings.redis.url = self.env["LEUKOSCOPE_REDIS__URL"]

        on_stop_signals(lambda: setattr(self, "stopping", True), "supervisor")
        for child in self.children:
            self._start(child)
        while not self.stopping:
            self.check_redis()
            for child in self.children:
                if child.process is None:
                    if time.monotonic() >= child.next_start:
                        self._start(child)
                    continue
                code = child.process.poll()
                if code is not None and not self.stopping:
                    self._on_exit(child, code)
            time.sleep(0.2)
        return self.shutdown()

    def shutdown(self) -> int:
        """Stop every child; 0 when all exited cleanly, 1 when one failed or was killed."""
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        code = 0
        for child in running:
            process = child.process
            assert process is not None
            try:
                exit_code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child did not stop in time; killing", extra={"child_pid": process.pid})
                process.kill()
                process.wait()
                exit_code = -signal.SIGKILL
            telemetry.process_exited(process.pid)
            if exit_code not in (0, -signal.SIGTERM):  # SIGTERM before its handler: asked to
                log.error("child did not stop cleanly", extra={"child": child.name,
                                                                "exit_code": exit_code})
                code = 1
        if self.started_redis:
            stop_embedded(self.settings.redis_dir)
        log.info("stopped", extra={"exit_code": code})
        return code


def run_all(settings: Settings, config_path: str | None) -> int:
    return Supervisor(settings, config_path).run()
