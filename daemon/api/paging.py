"""The query parameters of every cursor-paged route (``/results``, ``/specimens``,
``/specimens/unassigned``, ``/orders``, ``/audit``): one cursor, one page size.

The cursors themselves are made and checked in ``daemon.store.paging``; a cursor we did not
hand out is a 400 (``daemon.api.app``). No ``from __future__ import annotations`` here:
FastAPI reads the dependency's signature at runtime.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

MAX_PAGE = 1000  # items per page at most (``/results``: ``api.max_page``)

After = Annotated[
    str | None, Query(max_length=48, description="the `next` cursor of the previous page")
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page at most")]


@dataclass(frozen=True)
class PageQuery:
    after: str | None
    limit: int


def page_query(after: After = None, limit: Limit = 100) -> PageQuery:
    return PageQuery(after, limit)


# A route parameter ``page: Page`` takes ``?after=...&limit=...``.
Page = Annotated[PageQuery, Depends(page_query)]
