"""Orders from the LIS and their link to specimens.

``lks:order:<placer order number>`` holds the Order's JSON; ``lks:specimen:<id>:order`` the
placer order number of the specimen it names; ``lks:orders`` logs every order received for
cursor paging. An order may arrive before the specimen's first frame or after its last; a
specimen completed while unordered waits in the outbox (``outbox_state: unordered``, scored
+inf) and is released for MLLP delivery when its order arrives. Past
``specimens.retention_days`` an order leaves with its specimen, or alone when its specimen
never came (:func:`forget_unmatched`).
"""

from __future__ import annotations

import logging

import redis

from daemon.domain.orders import Order, OrderEvent
from daemon.store import paging, scripts
from daemon.store.keys import ORDER_KEY, ORDERS_LOG, OUTBOX_KEY, SPECIMEN_KEY, SPECIMEN_ORDER_KEY

log = logging.getLogger(__name__)

UNORDERED_STATE = "unordered"  # outbox_state of a completed specimen waiting for its order


class OrderConflict(ValueError):
    """The specimen is already linked to another order."""


class OrderStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def save(self, order: Order) -> bool:
        """Store ``order`` and link its specimen; returns True if the specimen has results.

        The same placer order number again replaces the order (an update from the LIS); a
        specimen already linked to a *different* order raises OrderConflict.
        """
        link = SPECIMEN_ORDER_KEY.format(order.specimen_id)
        current = self.client.get(link)
        if current is not None and current.decode() != order.placer_order_number:
            raise OrderConflict(
                f"specimen {order.specimen_id} is already ordered by "
                f"{current.decode()!r}, not {order.placer_order_number!r}"
            )
        pipe = self.client.pipeline(transaction=True)
        pipe.set(ORDER_KEY.format(order.placer_order_number), order.model_dump_json())
        pipe.set(link, order.placer_order_number)
        pipe.xadd(ORDERS_LOG, {"placer_order_number": order.placer_order_number,
                               "specimen_id": order.specimen_id})
        pipe.exists(SPECIMEN_KEY.format(order.specimen_id))
        has_frames = bool(pipe.execute()[-1])
        self.release(order.specimen_id)
        log.info("order received", extra={"specimen_id": order.specimen_id,
                                          "placer_order_number": order.placer_order_number,
                                          "source": order.source})
        return has_frames

    def release(self, specimen_id: str) -> None:
        """A completed specimen held as unordered goes to the MLLP outbox now."""
        key = SPECIMEN_KEY.format(specimen_id)
        if self.client.hget(key, "outbox_state") == UNORDERED_STATE.encode():
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(OUTBOX_KEY, {specimen_id: _now(self.client)}, xx=True)
            pipe.hset(key, "outbox_state", "pending")
            pipe.execute()

    def get(self, placer_order_number: str) -> Order | None:
        raw = self.client.get(ORDER_KEY.format(placer_order_number))
        return Order.model_validate_json(raw) if raw else None

    def for_specimen(self, specimen_id: str) -> Order | None:
        placer = self.client.get(SPECIMEN_ORDER_KEY.format(specimen_id))
        return self.get(placer.decode()) if placer else None

    def page(self, after: str | None, limit: int) -> tuple[list[OrderEvent], str]:
        entries = paging.entries_after(self.client, ORDERS_LOG, after, limit)
        items = []
        for entry_id, fields in entries:
            order = self.get(fields[b"placer_order_number"].decode())
            if order is not None:
                items.append(OrderEvent(cursor=entry_id.decode(), order=order))
        return items, paging.next_cursor(entries, after)


def forget_unmatched(client: redis.Redis, older_than: float, batch: int = 100) -> list[str]:
    """Delete the orders received before ``older_than`` (Unix s) whose specimen is not in
    Redis (never scanned, or forgotten with its order already); returns their placer order
    numbers. The orders log loses the entries that no longer stand for a stored order: the
    forgotten ones, and earlier entries of an order the LIS re-sent for another specimen."""
    script = client.register_script(scripts.FORGET_ORDER)
    forgotten = []
    for entries in paging.batches_before(client, ORDERS_LOG, older_than, batch):
        calls = []
        for entry_id, fields in entries:
            placer, specimen_id = (fields[b"placer_order_number"].decode(),
                                   fields[b"specimen_id"].decode())
            keys = [ORDER_KEY.format(placer), ORDERS_LOG, SPECIMEN_KEY.format(specimen_id),
                    SPECIMEN_ORDER_KEY.format(specimen_id)]
            calls.append((script, keys, [placer, specimen_id, entry_id.decode(),
                                         repr(float(older_than))]))
        for (_, fields), outcome in zip(entries, scripts.run_many(client, calls), strict=True):
            if outcome == b"forgotten":
                forgotten.append(fields[b"placer_order_number"].decode())
    return forgotten


def hold_unordered(client: redis.Redis, specimen_id: str) -> None:
    """Park a completed, unordered specimen in the outbox until its order arrives."""
    pipe = client.pipeline(transaction=True)
    pipe.zadd(OUTBOX_KEY, {specimen_id: "+inf"}, xx=True)
    pipe.hset(SPECIMEN_KEY.format(specimen_id), "outbox_state", UNORDERED_STATE)
    pipe.exists(SPECIMEN_ORDER_KEY.format(specimen_id))
    if pipe.execute()[-1]:  # the order arrived meanwhile: release at once
        OrderStore(client).release(specimen_id)


def _now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6
