"""`mycelium_client.feeds`: every committed balance change straight from PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from mycelium_client import BalanceSource, ProductUnit, RoleName
from mycelium_client.feeds import CHANNEL, AsyncBalanceFeed, BalanceFeed
from tests.support.client import MakeAccount, Target, listed


def test_the_feed_delivers_committed_changes(target: Target, account: MakeAccount) -> None:
    sender, recipient = account(funded=8), account()
    with BalanceFeed(target.db_url, user_ids=[sender.id, recipient.id]) as feed:
        sender.client.credits.transfer(recipient.id, "0.000001")
        changes = list(feed.changes(timeout=2))
    assert {(change.user_id, change.balance) for change in changes} == {
        (sender.id, Decimal("7.999999")),
        (recipient.id, Decimal("0.000001")),
    }
    assert all(change.source is BalanceSource.FEED and change.updated_at.tzinfo for change in changes)


def test_the_feed_carries_the_burn_rate_and_a_subscription_starting_or_stopping(
    target: Target, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=12)
    product = listed(provider, "1.5", unit=ProductUnit.HOUR)
    with BalanceFeed(target.db_url, user_ids=[buyer.id]) as feed:
        started = buyer.client.subscriptions.start(product.id, quantity=2)  # 3 an hour, 9 left
        buyer.client.subscriptions.stop(started.id)  # one started hour: the whole hold
        changes = [(c.balance, c.held, c.burn_rate, c.runway_hours) for c in feed.changes(timeout=2)]
    # The hold; the stop's capture; then the subscription ended, the same account, nothing running.
    assert changes[0] == (Decimal(9), Decimal(3), Decimal(3), Decimal(3))
    assert changes[-1] == (Decimal(9), Decimal(0), Decimal(0), None)


def test_the_async_feed(target: Target, account: MakeAccount) -> None:
    sender, recipient = account(funded=2), account()

    async def scenario() -> list[Decimal]:
        async with AsyncBalanceFeed(target.db_url, user_ids=[recipient.id]) as feed:
            await asyncio.to_thread(sender.client.credits.transfer, recipient.id, 1)
            await asyncio.to_thread(sender.client.credits.transfer, recipient.id, 1)
            return [change.balance async for change in feed.changes(timeout=2)]

    assert asyncio.run(scenario()) == [1, 2]


def test_the_database_notifies_only_while_a_feed_listens(target: Target, account: MakeAccount) -> None:
    """NOTIFY costs every commit a database-wide lock: without a registered feed, none is sent."""
    sender, recipient = account(funded=3), account()
    with psycopg.connect(target.db_url, autocommit=True) as bystander:
        bystander.execute(f"listen {CHANNEL}")
        sender.client.credits.transfer(recipient.id, 1)
        assert list(bystander.notifies(timeout=0.5)) == []

        with BalanceFeed(target.db_url, user_ids=[recipient.id]) as feed:
            sender.client.credits.transfer(recipient.id, 1)
            assert [change.balance for change in feed.changes(timeout=2)] == [2]
        assert len(list(bystander.notifies(timeout=0.5))) == 2  # the bystander heard both accounts

        sender.client.credits.transfer(recipient.id, 1)
        assert list(bystander.notifies(timeout=0.5)) == []


def test_a_feed_that_died_without_leaving_is_forgotten(target: Target) -> None:
    with psycopg.connect(target.db_url, autocommit=True) as crashed:
        crashed.execute("select mycelium_private.start_balance_feed()")
        pid = crashed.info.backend_pid
    with BalanceFeed(target.db_url), psycopg.connect(target.db_url) as conn:
        registered = conn.execute(
            "select backend_pid from mycelium_private.balance_feed_listeners"
        ).fetchall()
        assert (pid,) not in registered


@pytest.fixture
def unprivileged_db_url(target: Target) -> Iterator[str]:
    """A database login that may LISTEN but not register a feed (no mycelium_private)."""
    role, password = f"feed_reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with target.connect() as conn:
        conn.execute(
            sql.SQL("create role {} login password {}").format(sql.Identifier(role), sql.Literal(password))
        )
    try:
        yield make_conninfo(target.db_url, user=role, password=password)
    finally:
        with target.connect() as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_a_feed_that_cannot_register_closes_its_connection(
    unprivileged_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[psycopg.Connection[Any]] = []
    connect = psycopg.connect

    def recorded(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(psycopg, "connect", recorded)
    feed = BalanceFeed(unprivileged_db_url)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        feed.start()
    # Not taken for registered: trying again fails again, instead of waiting for what never comes.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        list(feed.changes(timeout=0.1))
    assert len(opened) == 2 and all(conn.closed for conn in opened)
    feed.close()


def test_an_async_feed_that_cannot_register_closes_its_connection(
    unprivileged_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[psycopg.AsyncConnection[Any]] = []
    connect = psycopg.AsyncConnection.connect

    async def recorded(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        opened.append(await connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", recorded)

    async def scenario() -> None:
        feed = AsyncBalanceFeed(unprivileged_db_url)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await feed.start()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            [change async for change in feed.changes(timeout=0.1)]
        await feed.close()

    asyncio.run(scenario())
    assert len(opened) == 2 and all(conn.closed for conn in opened)
