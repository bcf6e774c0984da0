"""``leukoscope reliability`` scenarios that kill workers holding frames (issue 16).

* ``worker-kill``: N ordinary fields queued at once (the worker held with SIGSTOP until they
  are, as a busy worker would be); the worker is SIGKILLed several times,
  each time while it holds frames delivered to it for the first time (read from XPENDING
  with the worker frozen by SIGSTOP, so the kill is known to take them with it), as soon as
  the restarted worker has taken new ones. Every field must end ``done``, stored once.
* ``poison``: ordinary fields and one 3840x2160 field that "no worker survives", all queued
  while the worker waits (SIGSTOP), so the poison is read in a batch with neighbours. Nothing in
  the daemon is changed for it: this scenario plays the kernel's OOM killer (a cgroup memory
  limit that the frame's analysis crosses) and SIGKILLs whichever worker is analysing that
  frame: first in its batch, then each time a worker starts it alone (its count in
  ``lks:solo`` grows). The frame must end ``failed`` after ``queue.max_deliveries`` attempts
  alone, its neighbours ``done``, nothing stored twice.

Both report the kills (pid, frames held), the supervisor's restarts and the seconds from
the drop to the last result.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from daemon.cli.reliability_daemon import (
    Daemon,
    camera_jpeg,
    child_pids,
    deliver,
    role_of,
    smear_jpeg,
)
from daemon.store import heartbeats, keys
from daemon.store.queue import FrameQueue, Held

POLL_SECONDS = 0.02


def _workers(daemon: Daemon) -> dict[int, str | None]:
    """Live worker pids (children of the supervisor) -> their consumer name, from the
    heartbeat each worker writes (None until a restarted worker has beaten)."""
    live = [pid for pid in child_pids(daemon.process.pid) if role_of(pid) == "worker"]
    client = daemon.redis()
    try:
        beats = {int(m["pid"]): str(m["id"]) for m in heartbeats.members(client, keys.WORKERS_KEY)
                 if "pid" in m}
    finally:
        client.close()
    named = {pid: beats.get(pid) for pid in live}
    if len(live) == 1 and named[live[0]] is None:
        # One worker: its consumer name is the same in every life (host-w0).
        names = set(beats.values())
        named[live[0]] = names.pop() if len(names) == 1 else None
    return named


def kill_holding(daemon: Daemon, queue: FrameQueue, want: Callable[[list[Held]], bool],
                 timeout: float, done: Callable[[], bool]) -> dict | None:
    """SIGKILL the first worker whose held entries satisfy ``want``; checked again with the
    worker frozen (SIGSTOP), so what it held is what it died with. None if ``done()`` turns
    true first (nothing left to kill it with); TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    next_done_check = 0.0
    while time.monotonic() < deadline:
        for pid, consumer in _workers(daemon).items():
            if consumer is None:
                continue
            if not want([h for h in queue.held() if h.consumer == consumer]):
                continue
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            mine = [h for h in queue.held() if h.consumer == consumer]
            if want(mine):
                os.kill(pid, signal.SIGKILL)
                return {"pid": pid, "consumer": consumer, "held": len(mine),
                        "held_first_delivery": sum(h.deliveries == 1 for h in mine),
                        "at_seconds": time.monotonic()}
            os.kill(pid, signal.SIGCONT)
        if time.monotonic() >= next_done_check:  # lists every result: not each poll
            next_done_check = time.monotonic() + 0.5
            if done():
                return None
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no worker held what was wanted within {timeout:.0f} s")


def queued_while_frozen(daemon: Daemon, queue: FrameQueue, count: int,
                        deliver_all: Callable[[], None], timeout: float = 120) -> None:
    """Run ``deliver_all`` with the workers held (SIGSTOP) until ``count`` more frames are
    queued, as busy workers would be: their next reads take full batches (a read a worker
    was blocked in when frozen may already have been handed the first frame by Redis)."""
    frozen = list(_workers(daemon))
    backlog = queue.backlog()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        deliver_all()
        deadline = time.monotonic() + timeout
        while queue.backlog() < backlog + count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


def _outcomes(items: list[dict], folder: str) -> tuple[dict[str, list[dict]], int]:
    """Results of ``folder``'s files by file name, and how many names were stored twice."""
    by_name: dict[str, list[dict]] = {}
    for item in items:
        if f"/{folder}/" in item["source"]:
            by_name.setdefault(item["source"].rsplit("/", 1)[-1], []).append(item)
    return by_name, sum(len(v) - 1 for v in by_name.values())


def worker_kill(daemon: Daemon, frames: int = 120, kills: int = 4) -> dict:
    folder = "WORKER-KILL"
    client = daemon.redis()
    queue = FrameQueue(client)
    before = len(daemon.results())
    restarts_before = daemon.restarts()
    started = time.monotonic()
    queued_while_frozen(daemon, queue, frames, lambda: [
        deliver(daemon.root / "inbox" / folder, f"f-{i:03d}.jpg", smear_jpeg(20_000 + i))
        for i in range(frames)])

    killed_with: set[str] = set()

    def mine_fresh(held: list[Held]) -> bool:
        # frames delivered for the first time and not held at an earlier kill (a restarted
        # worker still holds those, once, until it re-reads them): each good frame dies with
        # a worker at most once, as when workers die now and then (a frame killed every time
        # it is tried is the poison scenario's)
        return any(h.deliveries == 1 and f"/{folder}/" in h.source
                   and h.frame_id not in killed_with for h in held)

    def finished() -> bool:
        return len(daemon.results()) >= before + frames

    record = []
    try:
        for _ in range(kills):
            kill = kill_holding(daemon, queue, mine_fresh, 300, finished)
            if kill is None:
                break
            killed_with.update(h.frame_id for h in queue.held())
            kill["at_seconds"] = round(kill["at_seconds"] - started, 1)
            record.append(kill)
        items = daemon.wait_results(before + frames, 600)
    finally:
        client.close()
    elapsed = time.monotonic() - started
    by_name, duplicates = _outcomes(items, folder)
    statuses = [r["status"] for rs in by_name.values() for r in rs]
    done = sum(s == "done" for s in statuses)
    restarts = daemon.restarts() - restarts_before
    return {
        "frames": frames, "kills": len(record), "killed": record,
        "frames_held_by_killed_workers": sum(k["held"] for k in record),
        "stored": len(by_name), "done": done, "failed": statuses.count("failed"),
        "duplicates": duplicates, "worker_restarts": restarts,
        "seconds_to_all_done": round(elapsed, 1),
        "checks": {
            f"{kills} kills, each holding frames": len(record) == kills and all(
                k["held_first_delivery"] > 0 for k in record),
            "every frame stored": len(by_name) == frames,
            "every frame done": done == frames,
            "none stored twice": duplicates == 0,
            "a restart per kill": restarts >= len(record),
        },
    }


def poison(daemon: Daemon, settings_max_deliveries: int, good: int = 15) -> dict:
    folder = "POISON"
    name = "field-03-poison-3840x2160.jpg"  # sorts among its neighbours
    client = daemon.redis()
    queue = FrameQueue(client)
    before = len(daemon.results())
    restarts_before = daemon.restarts()
    inbox = daemon.root / "inbox" / folder
    data = camera_jpeg(7000, 3840, 2160)
    def deliver_all() -> None:
        for i in range(good):
            deliver(inbox, f"field-{i:02d}.jpg", smear_jpeg(7100 + i))
            if i == 2:
                deliver(inbox, name, data)

    # Every file queued before the worker reads: the poison is read in a batch with
    # neighbours, which its first crash takes down too.
    started = time.monotonic()
    queued_while_frozen(daemon, queue, good + 1, deliver_all)
    poison_id: list[str] = []
    seen_attempts: list[int] = []  # empty until the first kill

    def analysing_poison(held: list[Held]) -> bool:
        mine = [h for h in held if h.source.endswith(f"/{folder}/{name}")]
        if not mine:
            return False
        poison_id[:] = [mine[0].frame_id]
        if not seen_attempts:
            return True  # in its first batch: the batch dies with it
        # redelivered: the worker analyses it alone after its neighbours; the OOM comes
        # when that analysis starts (its count of attempts alone grows)
        return queue.solo_attempts(mine[0].frame_id) > seen_attempts[0]

    def finished() -> bool:
        return len(daemon.results()) >= before + good + 1

    record = []
    try:
        for _ in range(settings_max_deliveries + 1):
            kill = kill_holding(daemon, queue, analysing_poison, 300, finished)
            if kill is None:
                break
            seen_attempts[:] = [queue.solo_attempts(poison_id[0]) if poison_id else 0]
            kill["at_seconds"] = round(kill["at_seconds"] - started, 1)
            kill["poison_attempts_alone"] = seen_attempts[0]
            record.append(kill)
        items = daemon.wait_results(before + good + 1, 600)
    finally:
        client.close()
    elapsed = time.monotonic() - started
    by_name, duplicates = _outcomes(items, folder)
    verdict = by_name.get(name, [{}])[0]
    goods = [r for n, rs in by_name.items() if n != name for r in rs]
    return {
        "good_frames": good, "poison": f"{name} ({len(data) / 2**20:.1f} MiB)",
        "kills": len(record), "killed": record,
        "neighbours_killed_with_it": max(0, record[0]["held"] - 1) if record else 0,
        "poison_outcome": verdict.get("status"), "poison_error": verdict.get("error"),
        "good_done": sum(r["status"] == "done" for r in goods),
        "duplicates": duplicates, "worker_restarts": daemon.restarts() - restarts_before,
        "seconds_to_all_outcomes": round(elapsed, 1),
        "checks": {
            "poison killed a worker 1 + max_deliveries times":
                len(record) == settings_max_deliveries + 1,
            "poison failed, alone": verdict.get("status") == "failed"
                and "alone" in (verdict.get("error") or ""),
            "every good frame done": len(goods) == good
                and all(r["status"] == "done" for r in goods),
            "none stored twice": duplicates == 0,
        },
    }

