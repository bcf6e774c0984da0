"""The query parameters of every cursor-paged route (``/results``, ``/specimens``,
``/specimens/unassigned``, ``/orders``, ``/audit``): one cursor, one page size.

The cursors themselves are made and checked in ``daemon.store.paging``; a cursor we did not
hand out is a 400 (``daemon.api.app``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

MAX_PAGE = 1000  # items per page at most (``/results``: ``api.max_page``)

After = Annotated[
    str | None, Query(max_length=48, description="the `next` cursor of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page at most")]
