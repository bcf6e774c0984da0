"""``leukoscope run``: capture, N workers and the API as one supervised process tree.

Each part runs as its own process (``leukoscope <role>``) so a crash in one (a model, a
decoder) cannot take the others down. A child that dies is logged and restarted with
exponential backoff; SIGTERM/SIGINT stops all children gracefully within 10 s.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from daemon.settings import Settings
from daemon.shutdown import on_stop_signals
from daemon.store import counters
from daemon.store.connection import connect, start_embedded, stop_embedded

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
STOP_GRACE_SECONDS = 8.0


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

    def _command(self, child: Child) -> list[str]:
        command = [sys.executable, "-m", "daemon", child.role, *child.args]
        if self.config_path:
            command += ["--config", self.config_path]
        return command

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(self._command(child), env=self.env)
        child.started_at = time.monotonic()
        log.info("child started", extra={"child": child.name, "child_pid": child.process.pid})

    def _on_exit(self, child: Child, code: int) -> None:
        # Backoff grows with quick successive crashes and resets after a minute of uptime.
        if time.monotonic() - child.started_at > 60:
            child.restarts = 0
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**child.restarts)
        child.restarts += 1
        child.next_start = time.monotonic() + delay
        child.process = None
        log.error(
            "child exited; restarting",
            extra={"child": child.name, "exit_code": code, "restart_in_seconds": delay},
        )
        try:
            counters.record(
                self.client,
                counters.counter("leukoscope_worker_restarts_total", {"role": child.role}),
            )
        except Exception:  # metrics must never stop a restart
            log.warning("could not record restart metric")

    def port_in_use(self) -> str | None:
        """Why the API could not listen, checked before anything starts (None: it can)."""
        host, port = self.settings.api.host, self.settings.api.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                return f"cannot listen on {host}:{port} ({exc.strerror}); is another " \
                    "leukoscope running? Set api.port or stop it"
        return None

    def run(self) -> int:
        # A second daemon on the same port would crash-loop its API child forever: refuse.
        problem = self.port_in_use()
        if problem:
            log.error(problem)
            print(f"leukoscope run: {problem}", file=sys.stderr)
            return 2
        if not self.settings.redis.url:
            redis_socket, self.started_redis = start_embedded(self.settings.redis_dir)
            self.env["LEUKOSCOPE_REDIS__URL"] = f"unix://{redis_socket}"
            self.settings.redis.url = self.env["LEUKOSCOPE_REDIS__URL"]
        self.client = connect(self.settings)

        on_stop_signals(lambda: setattr(self, "stopping", True), "supervisor")
        for child in self.children:
            self._start(child)
        while not self.stopping:
            for child in self.children:
                if child.process is None:
                    if time.monotonic() >= child.next_start:
                        self._start(child)
                    continue
                code = child.process.poll()
                if code is not None and not self.stopping:
                    self._on_exit(child, code)
            time.sleep(0.2)
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child did not stop in time; killing", extra={"child_pid": process.pid})
                process.kill()
                process.wait()
        if self.started_redis:
            stop_embedded(self.settings.redis_dir)
        log.info("stopped")


def run_all(settings: Settings, config_path: str | None) -> int:
    return Supervisor(settings, config_path).run()
