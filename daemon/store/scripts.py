"""The Redis scripts (``scripts/*.lua``), read once at import.

Each script is atomic on the server, which is how the store keeps its exactly-once rules:
a frame is queued once, its result is stored, counted and folded into its specimen once, a
specimen completes once. Register a script per client with ``client.register_script``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


def _read(name: str) -> str:
    return (files(__package__) / "scripts" / f"{name}.lua").read_text(encoding="utf-8")


ENQUEUE = _read("enqueue")
ADMIT = _read("admit")
FOLD_SPECIMEN = _read("fold_specimen")
STORE_RESULT = _read("store_result").replace("-- SPECIMEN UPDATE --\n", FOLD_SPECIMEN)
COMPLETE_SPECIMEN = _read("complete_specimen")
FORGET_SPECIMEN = _read("forget_specimen")
FORGET_ORDER = _read("forget_order")
ADMIT_RIGS = _read("admit_rigs")
FOLD_FIELDS = _read("fold_fields")
REVIEW_CELL = _read("review_cell")
VERIFY_SPECIMEN = _read("verify_specimen")
REMEMBER_DIAMETERS = _read("remember_diameters")


def run_many(client: redis.Redis, calls: Sequence[tuple[Script, list, list]]) -> list[Any]:
    """The replies of several script calls [(script, keys, args)], sent in one round trip.

    redis-py's pipelines send SCRIPT EXISTS before every execute that holds a script call: a
    second round trip per batch. Here a script is loaded only when the server answers
    NOSCRIPT (a restarted Redis); those calls did not run, so they are sent again. Any other
    error is raised once every call has run, as a pipeline does.
    """
    replies = _send(client, calls)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            client.script_load(script.script)
        for i, reply in zip(missing, _send(client, [calls[i] for i in missing]), strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _send(client: redis.Redis, calls: Sequence[tuple[Script, list, list]]) -> list[Any]:
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return pipe.execute(raise_on_error=False)
