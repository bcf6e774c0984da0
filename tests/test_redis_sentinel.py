"""Redis high availability (issue 16): a real master, replica and sentinel (Debian's
redis-server in sentinel mode); the whole daemon (`leukoscope run`: capture, a worker, the
API) finds the master through the sentinel, the master is SIGKILLed with frames in flight,
the sentinel promotes the replica, and every frame before and after ends with one result."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import (
    free_port,
    http_json,
    start_daemon,
    synthetic_jpeg,
    wait_for,
    write_frame,
)

MASTER = "lks-test"
REDIS = shutil.which("redis-server")


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def redis_ha(root: Path) -> Iterator[dict]:
    """master + replica + one sentinel (quorum 1) on loopback; stopped afterwards."""
    if REDIS is None:
        pytest.skip("redis-server is not installed")
    root.mkdir(parents=True)
    master, replica, sentinel = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen] = []
    try:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        processes.append(_spawn([REDIS, "--port", str(master), "--dir", str(root), *common],
                                root / "master.log"))
        processes.append(_spawn([REDIS, "--port", str(replica), "--dir", str(root), *common,
                                 "--replicaof", "127.0.0.1", str(master)], root / "replica.log"))
        conf = root / "sentinel.conf"  # sentinel rewrites its own file: keep it writable
        conf.write_text("\n".join([
            f"port {sentinel}", "bind 127.0.0.1", f"dir {root}",
            f"sentinel monitor {MASTER} 127.0.0.1 {master} 1",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 10000", ""]))
        probe = _spawn([REDIS, str(conf), "--sentinel"], root / "sentinel.log")
        processes.append(probe)
        wait_for(lambda: _answers(master) and _answers(replica), 20, "master and replica")
        deadline = time.monotonic() + 10
        while not _answers(sentinel):
            if probe.poll() is not None or time.monotonic() > deadline:
                pytest.skip("this redis-server cannot run as a sentinel: "
                            + (root / "sentinel.log").read_text()[-300:])
            time.sleep(0.05)
        watcher = redis.Redis(port=sentinel, decode_responses=True)
        wait_for(lambda: watcher.sentinel_slaves(MASTER), 30, "the sentinel to see the replica")
        wait_for(lambda: redis.Redis(port=replica).info("replication").get(
            "master_link_status") == "up", 30, "the replica in sync")
        yield {"master": master, "replica": replica, "sentinel": sentinel,
               "watcher": watcher, "processes": processes}
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


def _sources(daemon) -> list[str]:
    return [Path(item["source"]).name for item in daemon.results()]


def test_the_daemon_keeps_storing_results_across_a_sentinel_failover(
        tmp_path: Path, tiny_models) -> None:
    with redis_ha(tmp_path / "ha") as ha:
        sentinel = {"master": MASTER, "nodes": [f"127.0.0.1:{ha['sentinel']}"]}
        daemon = start_daemon(tmp_path / "daemon", tiny_models, redis={"sentinel": sentinel},
                              specimens={"idle_complete_seconds": None})
        try:
            assert not (daemon.data_dir / "redis" / "redis.sock").exists()  # no embedded one
            before = [f"before-{i}.jpg" for i in range(6)]
            for i, name in enumerate(before):
                write_frame(daemon.inbox / "S-HA", name, synthetic_jpeg(i))
            wait_for(lambda: set(before) <= set(_sources(daemon)), 90, "results before")
            # Frames in flight when the master dies: written, being queued and analysed.
            during = [f"during-{i}.jpg" for i in range(6)]
            for i, name in enumerate(during):
                write_frame(daemon.inbox / "S-HA", name, synthetic_jpeg(100 + i))
            old_master = ha["processes"][0]
            old_master.send_signal(signal.SIGKILL)
            old_master.wait(timeout=10)
            wait_for(lambda: int(ha["watcher"].sentinel_get_master_addr_by_name(MASTER)[1])
                     == ha["replica"], 60, "the sentinel to promote the replica")
            after = [f"after-{i}.jpg" for i in range(4)]
            for i, name in enumerate(after):
                write_frame(daemon.inbox / "S-HA", name, synthetic_jpeg(200 + i))

            def all_stored() -> bool:
                try:
                    return set(before + during + after) <= set(_sources(daemon))
                except (AssertionError, OSError):
                    return False  # the API waits for the new master a moment

            wait_for(all_stored, 120, "every frame stored on the promoted replica")
            sources = _sources(daemon)
            assert sorted(sources) == sorted(set(sources))  # each stored once
            promoted = redis.Redis(port=ha["replica"])
            assert promoted.info("replication")["role"] == "master"
            assert promoted.exists("lks:frames")  # the daemon's data lives there now
            code, spec = http_json(f"{daemon.api_url}/specimens/S-HA")
            assert code == 200 and spec["frames_done"] == len(before + during + after)
            # Every original moves to the archive once its result is stored, failover or not.
            archive = daemon.data_dir / "archive" / "S-HA"
            wait_for(lambda: sorted(p.name for p in archive.glob("*.jpg")) == sorted(
                before + during + after), 60, "every original archived")
            assert not list((daemon.inbox / "S-HA").glob("*.jpg"))
            assert daemon.process.poll() is None  # nothing crashed on the way
        finally:
            assert daemon.stop() == 0
            os.sync()


def test_sentinel_settings_name_the_key(tmp_path: Path) -> None:
    from daemon.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="redis.sentinel.nodes"):
        load_settings(None, data_dir=str(tmp_path),
                      redis={"sentinel": {"master": "m", "nodes": ["no-port"]}})
    with pytest.raises(ConfigError, match="redis"):
        load_settings(None, data_dir=str(tmp_path),
                      redis={"url": "redis://x", "sentinel": {"master": "m",
                                                              "nodes": ["h:26379"]}})


def test_a_sentinel_url_is_the_same_as_the_settings_block(tmp_path: Path) -> None:
    from daemon.settings import ConfigError, load_settings

    settings = load_settings(None, data_dir=str(tmp_path), redis={
        "url": "rediss+sentinel://app:p%40ss@s1:26379,[::1]:26380/lks/2"
               "?sentinel_password=sp&ssl_ca_certs=/etc/ca.pem"})
    conf = settings.redis.sentinel
    assert settings.redis.url is None and conf is not None
    assert (conf.master, conf.db, conf.username, conf.password) == ("lks", 2, "app", "p@ss")
    assert conf.addresses() == [("s1", 26379), ("::1", 26380)]
    assert conf.sentinel_password == "sp" and conf.ssl and str(conf.ssl_ca_certs) == "/etc/ca.pem"
    for bad in ("redis+sentinel://s1:26379", "redis+sentinel://s1:x/lks",
                "redis+sentinel://s1:26379/lks?tls=1"):
        with pytest.raises(ConfigError, match="redis: .*url"):
            load_settings(None, data_dir=str(tmp_path), redis={"url": bad})


def test_a_sentinel_url_reaches_the_master(tmp_path: Path) -> None:
    from daemon.settings import load_settings
    from daemon.store.connection import connect, embedded

    with redis_ha(tmp_path / "ha") as ha:
        settings = load_settings(None, data_dir=str(tmp_path / "data"), redis={
            "url": f"redis+sentinel://127.0.0.1:{ha['sentinel']}/{MASTER}"})
        assert not embedded(settings)
        client = connect(settings)
        client.set("lks:test:via-url", "1")
        assert redis.Redis(port=ha["master"]).get("lks:test:via-url") == b"1"


def test_a_tls_sentinel_url_reaches_a_tls_master(tmp_path: Path) -> None:
    """rediss+sentinel://: the sentinel and the master speak only TLS (a CA of the test's
    own); the daemon's client asks the sentinel over TLS and writes to the master over TLS."""
    from daemon.settings import load_settings
    from daemon.store.connection import connect
    from tests.test_redis_resilience import _tls_server_binary, _write_certificates

    binary = _tls_server_binary()
    root = tmp_path / "tls-ha"
    root.mkdir()
    ca, cert, key = _write_certificates(root)
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
           str(ca), "--tls-auth-clients", "no"]
    master, sentinel = free_port(), free_port()
    processes = [_spawn([binary, "--port", "0", "--tls-port", str(master), "--bind", "127.0.0.1",
                         "--requirepass", "secret", "--save", "", "--appendonly", "no",
                         "--dir", str(root), *tls], root / "master.log")]
    conf = root / "sentinel.conf"
    conf.write_text("\n".join([
        "port 0", f"tls-port {sentinel}", "bind 127.0.0.1", f"dir {root}",
        f"tls-cert-file {cert}", f"tls-key-file {key}", f"tls-ca-cert-file {ca}",
        "tls-auth-clients no", "tls-replication yes",
        f"sentinel monitor {MASTER} 127.0.0.1 {master} 1",
        f"sentinel auth-pass {MASTER} secret", ""]))
    processes.append(_spawn([binary, str(conf), "--sentinel"], root / "sentinel.log"))
    try:
        def sentinel_knows() -> bool:
            if processes[1].poll() is not None:
                pytest.skip("this redis-server cannot run a TLS sentinel: "
                            + (root / "sentinel.log").read_text()[-300:])
            try:
                probe = redis.Redis(port=sentinel, ssl=True, ssl_ca_certs=str(ca),
                                    socket_timeout=1, decode_responses=True)
                return bool(probe.sentinel_get_master_addr_by_name(MASTER))
            except redis.RedisError:
                return False

        wait_for(sentinel_knows, 30, "the TLS sentinel to answer")
        settings = load_settings(None, data_dir=str(tmp_path / "data"), redis={
            "url": f"rediss+sentinel://:secret@127.0.0.1:{sentinel}/{MASTER}"
                   f"?ssl_ca_certs={ca}"})
        connect(settings).set("lks:test:via-tls-sentinel", "1")
        direct = redis.Redis(port=master, password="secret", ssl=True, ssl_ca_certs=str(ca))
        assert direct.get("lks:test:via-tls-sentinel") == b"1"
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
