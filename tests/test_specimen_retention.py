"""Specimens leave Redis past specimens.retention_days (store/specimens.py forget_completed),
with their review, late frames and order; a specimen whose LIS message is still owed stays.
Real Redis, real scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from daemon import telemetry
from daemon.domain.orders import Order
from daemon.domain.results import CellResult, FrameResult
from daemon.ops.housekeeping import Housekeeper
from daemon.settings import ConfigError, Settings, load_settings
from daemon.store import audit, outbox
from daemon.store.keys import (
    CELL_REVIEW_KEY,
    LATE_KEY,
    ORDERS_LOG,
    PARKED_KEY,
    SPECIMEN_FRAMES_KEY,
    SPECIMEN_KEY,
    SPECIMEN_ORDER_KEY,
)
from daemon.store.orders import OrderStore, forget_unmatched
from daemon.store.results import ResultStore
from daemon.store.review import ReviewStore
from daemon.store.specimens import SpecimenStore, forget_completed


def frame(frame_id: str, specimen: str) -> FrameResult:
    now = time.time()
    cell = CellResult(bbox=[0, 0, 4, 4], area_px=16, class_="pre_b",
                      probabilities={"benign": 0.1, "early_pre_b": 0.1, "pre_b": 0.7, "pro_b": 0.1})
    return FrameResult(frame_id=frame_id, specimen_id=specimen, source=f"/inbox/{specimen}/x.jpg",
                       rig_id="rig-1", status="done", captured_at=now, completed_at=now,
                       cells=[cell])


def order(placer: str, specimen: str) -> Order:
    return Order(placer_order_number=placer, filler_order_number=specimen,
                 specimen_id=specimen, source="fhir", received_at=time.time())


def opened_ids(specimens: SpecimenStore, status: str | None = None) -> list[str]:
    return [s.specimen_id for s in specimens.page(status, None, 100)[0]]


def test_old_complete_specimens_are_forgotten_but_not_one_owed_to_the_lis(
        redis_client: redis.Redis) -> None:
    results = ResultStore(redis_client)
    plain = SpecimenStore(redis_client)
    mllp = SpecimenStore(redis_client, mllp_enabled=True)
    orders = OrderStore(redis_client)
    for specimen in ("OLD", "OWED", "PARKED", "OPEN", "REORDERED", "SKEWED", "RECENT"):
        results.store(frame(f"{specimen}-1", specimen))
    orders.save(order("P-OLD", "OLD"))
    orders.save(order("P-SHARED", "REORDERED"))
    assert plain.complete("OLD", "api") == "completed"
    results.store(frame("OLD-late", "OLD"))  # a late frame
    ReviewStore(redis_client).reclassify("OLD", "OLD-1", 0, "benign", "pre_b", "dr-a")
    assert mllp.complete("OWED", "api") == "completed"  # in the MLLP outbox
    assert mllp.complete("PARKED", "api") == "completed"
    outbox.park(redis_client, "PARKED", "AR", time.time())
    assert plain.complete("REORDERED", "api") == "completed"
    # completed by a process whose clock runs a minute ahead of Redis's
    assert plain.complete("SKEWED", "api", now=time.time() + 60) == "completed"
    # the LIS re-sent the placer number for another specimen: that order is not REORDERED's
    orders.save(order("P-SHARED", "NEXT"))
    time.sleep(0.01)  # completion-log ids are milliseconds: the cutoff falls between
    cutoff = time.time()
    time.sleep(0.01)
    assert plain.complete("RECENT", "api") == "completed"

    done = forget_completed(redis_client, cutoff)
    assert sorted(done.specimen_ids) == ["OLD", "REORDERED"] and done.owed == 2
    assert plain.get("OLD") is None and plain.get("OWED") is not None
    for key in (SPECIMEN_KEY, LATE_KEY, SPECIMEN_FRAMES_KEY, CELL_REVIEW_KEY, SPECIMEN_ORDER_KEY):
        assert not redis_client.exists(key.format("OLD")), key
    assert orders.get("P-OLD") is None
    assert orders.get("P-SHARED").specimen_id == "NEXT"  # names another specimen: kept
    assert opened_ids(plain) == ["OWED", "PARKED", "OPEN", "SKEWED", "RECENT"]
    assert opened_ids(plain, "complete") == ["OWED", "PARKED", "SKEWED", "RECENT"]
    assert results.get("OLD-1") is not None  # results go on their own clock

    # nothing new: the same pass forgets nothing; once delivered (out of the outbox) or the
    # parked message dropped, the owed ones go too
    assert forget_completed(redis_client, cutoff).specimen_ids == []
    outbox.drop(redis_client, "OWED")
    redis_client.zrem(PARKED_KEY, "PARKED")
    assert sorted(forget_completed(redis_client, cutoff).specimen_ids) == ["OWED", "PARKED"]
    assert opened_ids(plain) == ["OPEN", "SKEWED", "RECENT"]
    # by its own clock SKEWED completed after the cutoff: it goes once both clocks agree
    assert forget_completed(redis_client, time.time() + 61).specimen_ids == ["SKEWED", "RECENT"]

    # a frame for a forgotten id opens a new specimen; the old entries do not come back
    results.store(frame("OLD-2", "OLD"))
    assert opened_ids(plain) == ["OPEN", "OLD"]
    assert plain.get("OLD").frames_done == 1


def test_the_housekeeper_forgets_audits_and_counts(make_settings: Callable[..., Settings],
                                                    redis_client: redis.Redis) -> None:
    settings = make_settings(specimens={"retention_days": 0.5 / 86400})  # half a second
    results, specimens = ResultStore(redis_client), SpecimenStore(redis_client)
    results.store(frame("A-1", "A"))
    assert specimens.complete("A", "api") == "completed"
    keeper = Housekeeper(settings, redis_client)
    before = telemetry.LOCAL.get_sample_value("leukoscope_specimens_forgotten_total")
    assert before == 0.0  # exported from the start, not only after the first one
    keeper.step()
    assert specimens.get("A") is not None  # completed under half a second ago
    time.sleep(0.6)
    keeper._next_specimen_retention = 0.0  # the pass runs every 10 minutes
    keeper.step()
    assert specimens.get("A") is None
    assert telemetry.LOCAL.get_sample_value("leukoscope_specimens_forgotten_total") == before + 1
    entries, _ = audit.page(redis_client, None, 10)
    assert [(e.action, e.specimen_id) for e in entries] == [("specimen.forgotten", "A")]


def test_no_retention_keeps_specimens_and_zero_is_refused(
        make_settings: Callable[..., Settings], redis_client: redis.Redis) -> None:
    ResultStore(redis_client).store(frame("A-1", "A"))
    SpecimenStore(redis_client).complete("A", "api")
    Housekeeper(make_settings(), redis_client).step()
    assert SpecimenStore(redis_client).get("A") is not None
    with pytest.raises(ConfigError, match=r"specimens.retention_days: Input should be greater"):
        load_settings(None, specimens={"retention_days": 0})


def test_an_order_whose_specimen_never_came_is_forgotten_after_as_long(
        redis_client: redis.Redis) -> None:
    orders, specimens = OrderStore(redis_client), SpecimenStore(redis_client)
    results = ResultStore(redis_client)
    orders.save(order("P-NEVER", "NEVER"))  # no frame ever came
    orders.save(order("P-SCANNED", "SCANNED"))  # its specimen is in Redis
    results.store(frame("SCANNED-1", "SCANNED"))
    orders.save(order("P-MOVED", "FIRST"))
    orders.save(order("P-MOVED", "SECOND"))  # re-sent for another specimen
    time.sleep(0.01)
    cutoff = time.time()
    time.sleep(0.01)
    orders.save(order("P-LATER", "LATER"))

    assert forget_unmatched(redis_client, cutoff) == ["P-NEVER", "P-MOVED"]
    assert orders.get("P-NEVER") is None and orders.get("P-MOVED") is None
    assert orders.for_specimen("SCANNED").placer_order_number == "P-SCANNED"
    events, _ = orders.page(None, 10)
    assert [e.order.placer_order_number for e in events] == ["P-SCANNED", "P-LATER"]
    assert redis_client.xlen(ORDERS_LOG) == 2  # the log lost the forgotten orders' entries
    assert forget_unmatched(redis_client, cutoff) == []

    # once its specimen is forgotten, the order goes with it and the log entry after it
    specimens.complete("SCANNED", "api")
    forget_completed(redis_client, time.time() + 1)
    assert orders.get("P-SCANNED") is None
    assert forget_unmatched(redis_client, time.time() + 1) == ["P-LATER"]
    assert redis_client.xlen(ORDERS_LOG) == 0
