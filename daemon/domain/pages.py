"""Pages of the cursor-paged lists (results, specimens, unassigned frames, orders, audit).

Every store's ``page()`` returns ``(items, next)`` (cursors: ``daemon.store.paging``); every
page model has ``items`` and ``next`` and is built from that pair by :meth:`Paged.of`.
"""

from __future__ import annotations

from typing import Any, Self


class Paged:
    """Mixin of a page model (a pydantic model with ``items`` and ``next``)."""

    @classmethod
    def of(cls, page: tuple[list[Any], str | None], **extra: Any) -> Self:
        """The page of a store's ``(items, next)``; ``extra``: the model's other fields."""
        items, cursor = page
        return cls(items=items, next=cursor, **extra)  # type: ignore[call-arg]
