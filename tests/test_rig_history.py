"""One running red-cell scale estimate per rig, shared by every worker through Redis (issue 10
item 2): another worker, or the same one restarted, rescales a rig's frames by the history
the first one measured; a batch reads and appends its rigs' histories once; the rigs are
bounded; a Redis that refuses the history costs no frame."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import redis

from daemon import telemetry
from daemon.imaging.scale import HISTORY, MAX_RIGS
from daemon.imaging.synthetic import encode, smear_field
from daemon.store import scripts
from daemon.store.keys import RBC_HISTORY_KEY, RBC_RIGS_KEY
from daemon.store.results import ResultStore
from daemon.store.rigs import RedCellHistory
from daemon.worker.worker import Worker
from tests.test_scale import enlarge, scaled_settings

ENLARGEMENT = 3.0  # the rigs' cameras see the cells 3x the models' scale


@pytest.fixture
def settings(make_settings, tiny_models, tmp_path):
    """Models whose scale is a plain field's red cells (about 21 px across)."""
    image, _ = smear_field(np.random.default_rng(5), white_cells=2, red_cells=40)
    return scaled_settings(make_settings(), tiny_models, tmp_path, image)


def rich(seed: int) -> bytes:
    """A 3x field with enough red cells to measure (about 60 px across)."""
    image, _ = smear_field(np.random.default_rng(seed), white_cells=1, red_cells=40)
    return encode(enlarge(image, ENLARGEMENT), quality=90)


def sparse(seed: int = 11) -> bytes:
    """A 3x field with too few red cells (4) to measure: rescaled by its rig's estimate only."""
    image, _ = smear_field(np.random.default_rng(seed), white_cells=2, red_cells=4)
    return encode(enlarge(image, ENLARGEMENT), quality=90)


def queue(worker: Worker, frame_id: str, rig: str, data: bytes, **kwargs: object) -> None:
    worker.queue.enqueue(frame_id, "S1", f"/in/{frame_id}.jpg", rig, data, **kwargs)


def drain(worker: Worker) -> None:
    while worker.step(block_ms=100):
        pass
    worker.flush()


@pytest.mark.parametrize("second_id", ["w2", "w1"], ids=["another_worker", "restarted"])
def test_a_rigs_estimate_is_one_for_every_worker_and_survives_a_restart(settings, second_id):
    first = Worker(settings, "w1")
    for i in range(3):
        queue(first, f"a{i}", "rig-A", rich(20 + i))
    drain(first)
    planned = first.analyzer.rescaler.planned_factor(None, "rig-A")
    assert planned == pytest.approx(1 / ENLARGEMENT, rel=0.1)
    shared = RedCellHistory(first.client, HISTORY, MAX_RIGS).diameters("rig-A")
    assert len(shared) == 3 and shared == first.analyzer.rescaler.diameters("rig-A")

    # Another worker, or this one restarted (a new process: nothing of rig A in memory).
    second = Worker(settings, second_id)
    assert second.analyzer.rescaler.planned_factor(None, "rig-A") is None
    queue(second, "sparse", "rig-A", sparse())
    drain(second)
    result = ResultStore(second.client).get("sparse")
    assert result is not None and result.status == "done", result
    # Before, the second worker had no estimate: "assumed", analysed at 3x, scale_unknown.
    assert result.scale.source == "estimated" and result.scale.factor == planned
    assert second.analyzer.rescaler.planned_factor(None, "rig-A") == planned


def test_a_batch_reads_its_rigs_histories_once_and_appends_once_a_rig(settings, redis_client):
    worker = Worker(settings, "w1")
    model_um = worker.analyzer.rescaler.model_um
    assert model_um is not None
    for i, rig in enumerate(["rig-A", "rig-A", "rig-B", "rig-B"]):
        queue(worker, f"f{i}", rig, rich(20 + i))
    queue(worker, "given", "rig-C", rich(30), um_per_pixel=model_um / ENLARGEMENT)
    batch = worker.queue.read("w1", 8, 100)
    assert len(batch) == 5
    # Every command the server runs, with its arguments (a real Redis, nothing stubbed).
    redis_client.config_set("slowlog-log-slower-than", 0)
    redis_client.config_set("slowlog-max-len", 10_000)
    # Loaded as after a worker's first append (a server that lacks it answers NOSCRIPT
    # once, and the calls are sent again after SCRIPT LOAD: ``scripts.run_many``).
    redis_client.script_load(scripts.REMEMBER_DIAMETERS)
    redis_client.slowlog_reset()
    worker.process(batch)
    worker.flush()
    commands = [entry["command"].decode(errors="replace")
                for entry in redis_client.slowlog_get(10_000)]
    history = [c.split() for c in commands if RBC_HISTORY_KEY in c.split()]
    by_name = {name: [c for c in history if c[0].upper() == name]
               for name in ("HMGET", "EVALSHA", "HGET", "HSET")}
    assert len(history) == sum(map(len, by_name.values())), history
    assert [sorted(c[2:]) for c in by_name["HMGET"]] == [["rig-A", "rig-B"]]  # not rig-C's
    assert len(by_name["EVALSHA"]) == 2  # one atomic append a rig, not one a frame
    # The append script's own commands (the slowlog lists them too): one of each a call.
    assert len(by_name["HGET"]) == len(by_name["HSET"]) == 2
    shared = RedCellHistory(redis_client, HISTORY, MAX_RIGS)
    assert len(shared.diameters("rig-A")) == len(shared.diameters("rig-B")) == 2
    assert shared.diameters("rig-C") == []


def test_the_workers_rig_histories_stay_bounded_in_rigs(settings, redis_client):
    worker = Worker(settings, "w1")
    worker.analyzer.rescaler.max_rigs = 2
    worker.rig_scales.history = RedCellHistory(worker.client, HISTORY, max_rigs=2)
    for i, rig in enumerate(["rig-1", "rig-2", "rig-3"]):
        queue(worker, f"f{i}", rig, rich(20 + i))
        drain(worker)  # a batch each: rig-1 is the least recently measured
    assert sorted(redis_client.hkeys(RBC_HISTORY_KEY)) == [b"rig-2", b"rig-3"]
    assert redis_client.zcard(RBC_RIGS_KEY) == 2
    assert worker.analyzer.rescaler.diameters("rig-1") == []
    assert len(worker.analyzer.rescaler.diameters("rig-3")) == 1


def test_a_redis_that_refuses_the_history_costs_no_frame(settings, redis_client, tmp_path,
                                                         caplog):
    """The shared history's client meets no server (Redis gone): every frame is still done,
    rescaled by the worker's own history; the failure is logged once and counted; once
    Redis answers again the shared history is used."""
    worker = Worker(settings, "w1")
    gone = redis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), socket_timeout=1)
    worker.rig_scales.history = RedCellHistory(gone, HISTORY, MAX_RIGS)
    caplog.set_level(logging.INFO, logger="daemon.worker.rigs")
    queue(worker, "a0", "rig-A", rich(20))
    queue(worker, "a1", "rig-A", rich(21))
    drain(worker)
    queue(worker, "sparse", "rig-A", sparse())
    drain(worker)
    store = ResultStore(worker.client)
    results = [store.get(i) for i in ("a0", "a1", "sparse")]
    assert all(r is not None and r.status == "done" for r in results), results
    assert results[2].scale.source == "estimated"  # the worker's own history of rig A
    assert results[2].scale.factor == pytest.approx(1 / ENLARGEMENT, rel=0.1)
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in caplog.records]
    errors = telemetry.LOCAL.get_sample_value
    assert errors("leukoscope_rig_history_errors_total", {"op": "read"}) == 2
    assert errors("leukoscope_rig_history_errors_total", {"op": "append"}) == 1
    assert redis_client.hlen(RBC_HISTORY_KEY) == 0

    worker.rig_scales.history = RedCellHistory(worker.client, HISTORY, MAX_RIGS)  # back
    queue(worker, "a2", "rig-A", rich(22))
    drain(worker)
    assert any("is back" in r.getMessage() for r in caplog.records)
    assert store.get("a2").status == "done"
    # Redis's history, not the outage's: what was measured meanwhile is not sent later.
    shared = RedCellHistory(redis_client, HISTORY, MAX_RIGS).diameters("rig-A")
    assert len(shared) == 1 and worker.analyzer.rescaler.diameters("rig-A") == shared


def test_a_pushed_frames_diameter_is_shared_once_not_again_by_the_worker(settings,
                                                                          redis_client):
    """The API's quality control measures a pushed frame and appends its diameter to the
    rig's history; the worker measures the same frame again. It used to append it too, so
    every pushed frame filled two of its rig's places. A frame from the folder (no API
    measure) is still appended by the worker."""
    from tests.test_push import _serve, post

    settings.api.max_upload_bytes = 8 << 20
    history = RedCellHistory(redis_client, HISTORY, MAX_RIGS)
    with _serve(settings) as url:
        code, body = post(f"{url}/frames?specimen_id=P-1&name=a.jpg&rig_id=rig-P", rich(30))
        assert code == 202 and body["status"] == "new", body
    assert len(history.diameters("rig-P")) == 1  # the API's measure
    worker = Worker(settings, "w1")
    queue(worker, "folder", "rig-P", rich(31))  # as capture queues a watched folder's file
    drain(worker)
    results = ResultStore(worker.client)
    assert results.get(body["frame_id"]).status == "done"
    assert results.get("folder").status == "done"
    # One diameter for the pushed frame (the API's), one for the folder's (the worker's).
    assert len(history.diameters("rig-P")) == 2
