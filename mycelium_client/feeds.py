"""Balance changes of every user straight from PostgreSQL, for trusted services with a database
login (dashboards of all balances): LISTEN on the channel the `balance_feed` migration notifies.
It needs psycopg, the `feeds` extra: `pip install 'mycelium[feeds]'`.

No Realtime server in between: a change arrives when its transaction commits, in commit order.
Connect with a URL such as `postgresql://postgres:...@db:5432/postgres` (never give one to a
browser or an untrusted service: the feed shows every user's balance).

    with BalanceFeed(db_url) as feed:
        for change in feed:
            ...
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from types import TracebackType
from typing import Self

try:
    import psycopg
except ModuleNotFoundError as missing:
    # An extra, not a dependency: a service that only calls the API does not install a driver.
    raise ModuleNotFoundError(
        "mycelium_client.feeds reads from PostgreSQL with psycopg: pip install 'mycelium[feeds]'",
        name=missing.name,
    ) from missing

from mycelium_client.amounts import loads
from mycelium_client.errors import ConfigurationError
from mycelium_client.models import BalanceChange, BalanceSource

CHANNEL = "mycelium_balance_changed"
# The database notifies only while a feed is registered (NOTIFY costs every commit a global lock).
REGISTER = f"listen {CHANNEL}; select mycelium_private.start_balance_feed()"
UNREGISTER = "select mycelium_private.stop_balance_feed()"


def _change(payload: str) -> BalanceChange:
    return BalanceChange.model_validate({**loads(payload), "source": BalanceSource.FEED})


def _wanted(user_ids: Collection[uuid.UUID | str] | None) -> frozenset[uuid.UUID] | None:
    return None if user_ids is None else frozenset(uuid.UUID(str(user)) for user in user_ids)


def _check(db_url: str) -> str:
    if not db_url:
        raise ConfigurationError("a database URL is required for a balance feed", reason="missing_setting")
    return db_url


class BalanceFeed:
    """Every committed balance change (or only those of `user_ids`), as `BalanceChange`s."""

    def __init__(self, db_url: str, *, user_ids: Collection[uuid.UUID | str] | None = None) -> None:
        self._db_url, self._wanted = _check(db_url), _wanted(user_ids)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def start(self) -> Self:
        """Connect and LISTEN: changes committed from now on are delivered."""
        if self._conn is None:
            # Kept only once registered: a failed start leaves no connection, and the next one
            # tries again rather than waiting on a channel nothing will notify.
            conn = psycopg.connect(self._db_url, autocommit=True)
            try:
                conn.execute(REGISTER.encode(), prepare=False)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self

    def changes(self, timeout: float | None = None) -> Iterator[BalanceChange]:
        """Changes as they come; with a `timeout`, stops after that many seconds without one."""
        conn = self.start()._conn
        assert conn is not None
        while True:
            received = False
            for notify in conn.notifies(timeout=timeout, stop_after=1):
                received = True
                change = _change(notify.payload)
                if self._wanted is None or change.user_id in self._wanted:
                    yield change
            if not received:
                return

    def __iter__(self) -> Iterator[BalanceChange]:
        return self.changes()

    def close(self) -> None:
        if self._conn is not None:
            if not self._conn.closed:
                self._conn.execute(UNREGISTER)
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncBalanceFeed:
    """The async twin of `BalanceFeed`: `async with AsyncBalanceFeed(url) as feed: async for ...`."""

    def __init__(self, db_url: str, *, user_ids: Collection[uuid.UUID | str] | None = None) -> None:
        self._db_url, self._wanted = _check(db_url), _wanted(user_ids)
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def start(self) -> Self:
        if self._conn is None:
            conn = await psycopg.AsyncConnection.connect(self._db_url, autocommit=True)
            try:
                await conn.execute(REGISTER.encode(), prepare=False)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self

    async def changes(self, timeout: float | None = None) -> AsyncIterator[BalanceChange]:
        conn = (await self.start())._conn
        assert conn is not None
        while True:
            received = False
            async for notify in conn.notifies(timeout=timeout, stop_after=1):
                received = True
                change = _change(notify.payload)
                if self._wanted is None or change.user_id in self._wanted:
                    yield change
            if not received:
                return

    def __aiter__(self) -> AsyncIterator[BalanceChange]:
        return self.changes()

    async def close(self) -> None:
        if self._conn is not None:
            if not self._conn.closed:
                await self._conn.execute(UNREGISTER)
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
