"""Count the SQL statements a process sends to PostgreSQL, as asyncpg round trips.

Every prepared-statement execution, every simple query (BEGIN, COMMIT, the pool's reset on
release) and every row of an `executemany` counts as one statement.
"""

from __future__ import annotations

from typing import Any

import asyncpg


class StatementCounter:
    def __init__(self) -> None:
        self.statements = 0


class CountingConnection(asyncpg.Connection):  # type: ignore[misc]
    counter = StatementCounter()

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109
        if not args:  # with args asyncpg goes through _execute, counted there
            CountingConnection.counter.statements += 1
        result: str = await super().execute(query, *args, timeout=timeout)
        return result

    async def _execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.counter.statements += 1
        return await super()._execute(*args, **kwargs)  # type: ignore[misc]

    async def _executemany(self, query: str, args: Any, *rest: Any, **kwargs: Any) -> Any:
        args = list(args)
        CountingConnection.counter.statements += len(args)
        return await super()._executemany(query, args, *rest, **kwargs)  # type: ignore[misc]


async def counting_pool(database_url: str, *, max_size: int = 10) -> asyncpg.Pool:
    """Like `billing.ledger.open_pool`, with every statement counted in
    `CountingConnection.counter`."""
    return await asyncpg.create_pool(
        database_url, min_size=1, max_size=max_size, connection_class=CountingConnection
    )
