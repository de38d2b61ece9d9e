"""`mycelium_client.feeds`: every committed balance change straight from PostgreSQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import psycopg

from mycelium_client import BalanceSource
from mycelium_client.feeds import CHANNEL, AsyncBalanceFeed, BalanceFeed
from tests.client.conftest import MakeAccount, Target


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
