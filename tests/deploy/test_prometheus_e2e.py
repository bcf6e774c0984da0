"""End to end: a real Prometheus scrapes a running daemon; every dashboard expression and
every recording rule must return data through Prometheus's HTTP API.

Needs the `running_daemon` fixture (tests/conftest.py: a `leukoscope run` that has processed
frames, exposing `.api_url`) and Debian's prometheus package (the test fails, not skips,
when the binary is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    from tests.deploy.dashboard import dashboard_expressions
except ImportError:  # tests/deploy is on sys.path (rootdir-relative import mode)
    from dashboard import dashboard_expressions

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
SCRAPES_BEFORE_QUERYING = 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rfc3339(stamp: str) -> float:
    """Unix time of Prometheus's RFC 3339 timestamps (nanoseconds cut to microseconds)."""
    import datetime
    import re

    if not stamp or stamp.startswith("0001-"):
        return 0.0
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _get(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def query(self, expr: str) -> list[dict]:
        reply = _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


def _keep_frames_flowing(daemon: Any, round_: int) -> None:
    """Re-deliver archived originals under new names so rates are live while we scrape; one
    of them is pushed over HTTP with its pixel size, so the configured-scale series exist."""
    inbox, data_dir = getattr(daemon, "inbox", None), getattr(daemon, "data_dir", None)
    if inbox is None or data_dir is None:
        return
    originals = sorted((Path(data_dir) / "archive").rglob("*.jpg"))[:2]
    for i, original in enumerate(originals):
        folder = Path(inbox) / "S-prom"
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f"r{round_}-{i}.jpg.part"
        shutil.copyfile(original, part)
        part.rename(folder / f"r{round_}-{i}.jpg")
    if originals:
        query = urllib.parse.urlencode(
            {"specimen_id": "S-prom", "name": f"p{round_}.jpg", "um_per_pixel": "0.5"})
        request = urllib.request.Request(
            f"{daemon.api_url}/frames?{query}", data=originals[0].read_bytes(), method="POST",
            headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202, response.read()


@pytest.fixture(scope="module")
def prometheus(running_daemon: Any, prometheus_bin: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    root = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlsplit(running_daemon.api_url).netloc
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
        "scrape_configs": [{"job_name": "leukoscope", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = root / "prometheus.log"
    process = subprocess.Popen(
        [prometheus_bin, f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "GOMAXPROCS": "1"},
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 90
        round_ = 0
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{log.read_text()[-3000:]}")
            try:
                scraped = server.scalar('count_over_time(up{job="leukoscope"}[1m])')
                healthy = server.scalar('up{job="leukoscope"}') == 1
            except OSError:
                scraped, healthy = 0, False
            if scraped >= SCRAPES_BEFORE_QUERYING and healthy:
                break
            if time.monotonic() > deadline:
                targets = _get(f"{server.url}/api/v1/targets")
                pytest.fail(f"prometheus did not scrape {target} {SCRAPES_BEFORE_QUERYING} "
                            f"times: {json.dumps(targets)[:2000]}")
            _keep_frames_flowing(running_daemon, round_)
            round_ += 1
            time.sleep(1)
        # A few rule evaluations after the last frames: wait until every rule group has
        # been evaluated 3 times since now (Prometheus's own lastEvaluation), not a sleep.
        since = time.time()

        def evaluated_after(t: float) -> bool:
            groups = _get(f"{server.url}/api/v1/rules")["data"]["groups"]
            return bool(groups) and all(
                _rfc3339(g.get("lastEvaluation", "")) > t for g in groups)

        for _ in range(3):
            deadline_eval = time.monotonic() + 30
            while not evaluated_after(since):
                if time.monotonic() > deadline_eval:
                    pytest.fail("prometheus did not evaluate its rules")
                time.sleep(0.2)
            since = time.time()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _rules(name: str) -> list[dict]:
    return [r for g in yaml.safe_load((RULES / name).read_text())["groups"] for r in g["rules"]]


def test_every_dashboard_expression_returns_data(prometheus: Prometheus) -> None:
    empty = [expr for expr in dashboard_expressions() if not prometheus.query(expr)]
    assert not empty, "dashboard expressions with no data:\n" + "\n".join(empty)


def test_every_recording_rule_returns_data(prometheus: Prometheus) -> None:
    empty = []
    for rule in _rules("recording.yml"):
        if not prometheus.query(rule["expr"]):
            empty.append(f"{rule['record']}: {rule['expr']}")
        elif not prometheus.query(rule["record"]):
            empty.append(f"{rule['record']} (expression has data, recorded series not yet)")
    assert not empty, "recording rules with no data:\n" + "\n".join(empty)


def test_all_rules_load_and_evaluate_cleanly(prometheus: Prometheus) -> None:
    groups = _get(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    expected = {r.get("record") or r.get("alert") for n in ("recording.yml", "alerts.yml")
                for r in _rules(n)}
    assert expected <= loaded, f"not loaded: {expected - loaded}"
    bad = [f"{r['name']}: {r.get('lastError')}" for g in groups for r in g["rules"]
           if r["health"] != "ok"]
    assert not bad, bad


def test_healthy_daemon_fires_no_critical_alert(prometheus: Prometheus) -> None:
    firing = [a for a in _get(f"{prometheus.url}/api/v1/alerts")["data"]["alerts"]
              if a["state"] == "firing" and a["labels"].get("severity") == "critical"]
    assert not firing, firing
