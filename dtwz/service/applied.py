"""At most once: the transaction IDs a home has run, and what each one answered.

Every write request carries a transaction ID (``txn_id``). A home records the ID
*before* it runs the request, as a future its outcome will settle, so a retry
that arrives while the first attempt still runs waits for that same answer
instead of applying the writes a second time. A run that fails is forgotten, so
a retry runs it again. When objects migrate, the IDs applied to them go with
them (``remember``), so a retry that follows the objects is answered, not run.

The table holds the newest ``limit`` IDs, in memory (docs/PROTOCOL.md §8).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dtwz.errors import DtwzError
from dtwz.wire.messages import Message

APPLIED_MAX = 100_000  # transaction IDs remembered; the oldest go first
_M = TypeVar("_M", bound=Message)


class AppliedTransactions:
    """Outcomes of the requests run here (or running now), by transaction ID."""

    def __init__(self, stats: dict[str, int], limit: int = APPLIED_MAX) -> None:
        self._outcomes: OrderedDict[bytes, asyncio.Future[Message]] = OrderedDict()
        self._stats = stats  # the service's counters: "duplicates"
        self.limit = limit

    async def once(self, txn_id: bytes, run: Callable[[], Awaitable[_M]]) -> _M:
        """``run()``'s answer, running it only if ``txn_id`` has no outcome yet."""
        known = self._outcomes.get(txn_id)
        if known is not None:
            self._stats["duplicates"] += 1
            return await asyncio.shield(known)  # type: ignore[arg-type]
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._outcomes[txn_id] = future
        while len(self._outcomes) > self.limit:
            self._outcomes.popitem(last=False)
        try:
            result = await run()
        except BaseException as exc:
            # not applied: forget the ID so that a retry runs it again
            self._outcomes.pop(txn_id, None)
            future.set_exception(exc if isinstance(exc, Exception) else DtwzError("cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        future.set_result(result)
        return result

    def remember(self, txn_id: bytes, result: Message) -> None:
        """A transaction applied elsewhere (before its objects migrated here): a retry
        of it is answered with ``result``, not applied again."""
        if txn_id in self._outcomes:
            return
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        future.set_result(result)
        self._outcomes[txn_id] = future

    def items(self) -> list[tuple[bytes, asyncio.Future[Message]]]:
        """Every ID with its outcome, oldest first (a migration ships those it needs)."""
        return list(self._outcomes.items())
