"""`mycelium_client.feeds`: every committed balance change straight from PostgreSQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from mycelium_client import BalanceSource
from mycelium_client.feeds import AsyncBalanceFeed, BalanceFeed
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
