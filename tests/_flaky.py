"""An AsyncClient whose write transactions fail on purpose, for the queue, counter and STM
tests: a recipe takes any object with the public client's methods, so a subclass that
misbehaves in one method shows what the recipe does when an answer never comes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from etcdkit import AsyncClient, Compare, ConnectionUnavailableError, Op, TxnResult


class FlakyClient(AsyncClient):
    """``lose_answers``: the next N write transactions are applied, but their caller gets
    :class:`ConnectionUnavailableError` (the answer was lost). ``drop_requests``: the next N
    raise it without being sent. ``answer_delay``: write transactions are applied at once, and
    their answer arrives this many seconds later. ``writes`` logs every write transaction."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.lose_answers = 0
        self.drop_requests = 0
        self.answer_delay = 0.0
        self.applied = asyncio.Event()  # set when a delayed write has been applied
        self.writes: list[tuple[list[Compare], list[Op]]] = []

    async def __aenter__(self) -> FlakyClient:
        await super().__aenter__()
        return self

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        if all(op.kind == "range" for op in (*success, *failure)):
            return await super().txn(compare, success, failure)
        self.writes.append((list(compare), list(success)))
        if self.drop_requests:
            self.drop_requests -= 1
            raise ConnectionUnavailableError("test: the request never left")
        result = await super().txn(compare, success, failure)
        if self.lose_answers:
            self.lose_answers -= 1
            raise ConnectionUnavailableError("test: applied, but the answer was lost")
        if self.answer_delay:
            self.applied.set()
            await asyncio.sleep(self.answer_delay)
        return result

    def deletes(self) -> int:
        """How many write transactions deleted something (a queue's takes)."""
        return sum(1 for _, ops in self.writes if any(op.kind == "delete" for op in ops))
