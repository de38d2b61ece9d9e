"""`credits.watch`: from a real transfer to a delivered `BalanceChange`, over the Realtime double
(fed by the real database) behind the gateway, or a real Supabase Realtime in the live suite."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from mycelium_client import AsyncMyceliumClient, BalanceChange, BalanceSource, NotFound
from tests.client.conftest import FAST_RETRY, FAST_WATCH, PASSWORD, Doubles, MakeAccount, Target

WAIT = 10.0


def next_change(watch: object, source: BalanceSource | None = None) -> BalanceChange:
    from mycelium_client import BalanceWatch

    assert isinstance(watch, BalanceWatch)
    while True:
        change = watch.get(timeout=WAIT)
        if source is None or change.source is source:
            return change


def test_a_transfer_reaches_both_watchers(account: MakeAccount) -> None:
    sender, recipient = account(funded=20), account()
    with sender.client.credits.watch() as sent, recipient.client.credits.watch() as received:
        first = sent.get(timeout=WAIT)  # the balance at subscription time
        assert first.source is BalanceSource.RESYNC and first.balance == 20
        assert received.get(timeout=WAIT).balance == 0
        sender.client.credits.transfer(recipient.id, "7.000001")
        out = sent.get(timeout=WAIT)
        into = received.get(timeout=WAIT)
    assert out.source is BalanceSource.BROADCAST and out.balance == Decimal("12.999999")
    assert into.user_id == recipient.id and into.balance == Decimal("7.000001") and into.held == 0
    assert out.updated_at.tzinfo is not None


def test_a_callback_receives_changes(account: MakeAccount) -> None:
    sender, recipient = account(funded=5), account()
    seen: list[BalanceChange] = []
    with recipient.client.credits.watch(seen.append):
        sender.client.credits.transfer(recipient.id, 2)
        deadline = time.monotonic() + WAIT
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert [change.balance for change in seen] == [0, 2]


def test_async_watch(target: Target, account: MakeAccount) -> None:
    sender, recipient = account(funded=9), account()

    async def scenario() -> list[BalanceChange]:
        async with AsyncMyceliumClient(
            target.url, target.anon_key, retry=FAST_RETRY, watch=FAST_WATCH
        ) as client:
            await client.auth.sign_in(recipient.email, PASSWORD)
            changes: list[BalanceChange] = []
            async with client.credits.watch() as watch:
                await asyncio.to_thread(sender.client.credits.transfer, recipient.id, "1.5")
                await asyncio.to_thread(sender.client.credits.transfer, recipient.id, "2.25")
                async for change in watch:
                    changes.append(change)
                    if len(changes) == 3:
                        break
            return changes

    changes = asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert [change.balance for change in changes] == [0, Decimal("1.5"), Decimal("3.75")]


def test_large_amounts_arrive_exactly(target: Target, account: MakeAccount) -> None:
    rich, recipient = account(), account()
    target.service().admin.grant_credits(rich.id, "999999999999999.999999", "a lot")
    with recipient.client.credits.watch() as watch:
        watch.get(timeout=WAIT)
        rich.client.credits.transfer(recipient.id, "123456789012345.123457")
        change = watch.get(timeout=WAIT)
    assert change.balance == Decimal("123456789012345.123457")  # 21 digits: no float holds that


def test_resubscribes_after_a_dropped_connection(local_doubles: Doubles, account: MakeAccount) -> None:
    sender, recipient = account(funded=10), account()
    with recipient.client.credits.watch() as watch:
        assert watch.get(timeout=WAIT).balance == 0
        joins = len(local_doubles.realtime.frames("phx_join"))
        local_doubles.realtime.drop_connections()
        sender.client.credits.transfer(recipient.id, 4)  # while the watcher is disconnected
        changed = watch.get(timeout=WAIT)
        assert changed.balance == 4  # delivered by the resync after rejoining (or the broadcast)
        sender.client.credits.transfer(recipient.id, 1)
        assert watch.get(timeout=WAIT).balance == 5
    assert len(local_doubles.realtime.frames("phx_join")) > joins


def test_falls_back_to_postgres_changes_when_the_private_topic_is_refused(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    sender, recipient = account(funded=3), account()
    with target.connect() as conn:  # a project whose policies do not open balance topics
        conn.execute("alter policy mycelium_balance_broadcast_own on realtime.messages using (false)")
    try:
        with recipient.client.credits.watch() as watch:
            watch.get(timeout=WAIT)
            sender.client.credits.transfer(recipient.id, "0.5")
            change = watch.get(timeout=WAIT)
    finally:
        with target.connect() as conn:
            conn.execute(
                "alter policy mycelium_balance_broadcast_own on realtime.messages using ("
                "realtime.topic() = 'balance:' || (select auth.uid())::text and extension = 'broadcast')"
            )
    assert change.source is BalanceSource.POSTGRES_CHANGES and change.balance == Decimal("0.5")
    assert change.user_id == recipient.id


def test_only_your_own_balance_is_delivered(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    """A watcher asking for someone else's balance: the private topic is refused (RLS on
    realtime.messages) and their account row is invisible (RLS on credit_accounts)."""
    spy, victim = account(), account(funded=1)
    with pytest.raises(NotFound):
        spy.client.credits.watch(user_id=victim.id).start(timeout=WAIT)


def test_refreshes_its_access_token(target: Target, local_doubles: Doubles, account: MakeAccount) -> None:
    """Tokens that live 3 s: supabase-py refreshes the session before expiry, the watch pushes
    the new token to its channel, and the double (which closes channels whose token expired)
    keeps delivering."""
    sender = account(funded=5)
    user_id, email = target.create_user()
    auth = local_doubles.auth
    auth.token_lifetime_seconds = 3
    try:
        client = target.client()
        first_token = client.auth.sign_in(email, PASSWORD).access_token
        with client.credits.watch() as watch:
            watch.get(timeout=WAIT)
            time.sleep(4.5)  # past the first token's expiry
            sender.client.credits.transfer(user_id, 1)
            assert watch.get(timeout=WAIT).balance == 1
    finally:
        auth.token_lifetime_seconds = 3600
    pushed = [frame["payload"]["access_token"] for frame in local_doubles.realtime.frames("access_token")]
    assert pushed and first_token not in pushed
