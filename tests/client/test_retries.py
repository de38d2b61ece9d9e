"""Network failures: a connection dropped between request and response, after the server has
applied the request. Money calls are retried with the same idempotency key and applied once;
a call that is not idempotent is not retried; reads are retried with backoff."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import httpx
import pytest

from mycelium_client import AsyncMyceliumClient, MyceliumClient, ServiceUnavailable, TransactionKind
from tests.support.client import (
    FAST_RETRY,
    PASSWORD,
    AsyncDropsResponses,
    DropsResponses,
    MakeAccount,
    Target,
    Unavailable,
    signed_in,
)


def test_a_transfer_whose_response_was_lost_is_applied_once(target: Target, account: MakeAccount) -> None:
    sender, recipient = account(funded=10), account()
    transport = DropsResponses("/rpc/transfer_credits", drops=2)
    movement = signed_in(target, sender.email, transport).credits.transfer(recipient.id, "2.5")
    assert transport.sent == 3  # applied by the first, replayed by the next two
    assert movement.amount == Decimal("2.5") and movement.balance_after == Decimal("7.5")
    outgoing = list(sender.client.credits.history(kinds=[TransactionKind.TRANSFER_OUT]))
    assert [entry.transfer_id for entry in outgoing] == [movement.transfer_id]
    assert recipient.client.credits.balance().balance == Decimal("2.5")


def test_async_transfer_whose_response_was_lost_is_applied_once(target: Target, account: MakeAccount) -> None:
    sender, recipient = account(funded=10), account()
    transport = AsyncDropsResponses("/rpc/transfer_credits", drops=1)

    async def scenario() -> Decimal | None:
        async with AsyncMyceliumClient(
            target.url, target.anon_key, retry=FAST_RETRY, http_client=httpx.AsyncClient(transport=transport)
        ) as client:
            await client.auth.sign_in(sender.email, PASSWORD)
            movement = await client.credits.transfer(recipient.id, 4, idempotency_key=f"k-{uuid.uuid4()}")
            return movement.balance_after

    assert asyncio.run(scenario()) == 6 and transport.sent == 2
    assert sender.client.credits.balance().balance == 6


def test_a_grant_whose_response_was_lost_is_applied_once(target: Target, account: MakeAccount) -> None:
    user = account()
    transport = DropsResponses("/rpc/grant_credits", drops=1)
    service = target.client(service_role=True, http_client=httpx.Client(transport=transport))
    service.admin.grant_credits(user.id, 5, "welcome")
    assert transport.sent == 2 and user.client.credits.balance().balance == 5


def test_a_call_that_is_not_idempotent_is_not_retried(target: Target) -> None:
    transport = DropsResponses("/rpc/set_credit_config", drops=1)
    service = target.client(service_role=True, http_client=httpx.Client(transport=transport))
    name = target.client().credits.config().credit_display_name
    with pytest.raises(ServiceUnavailable) as raised:
        service.admin.set_credit_config(credit_display_name=name)  # applied, but we cannot know: say so
    assert transport.sent == 1 and "may have been applied" in raised.value.message


def test_reads_are_retried_with_backoff(target: Target) -> None:
    transport = Unavailable(times=2)
    client = target.client(http_client=httpx.Client(transport=transport))
    assert client.credits.config().credit_currency_code
    assert transport.sent == 3


def test_an_unreachable_service_is_unavailable() -> None:
    client = MyceliumClient("http://127.0.0.1:9", "key", retry=FAST_RETRY)
    with pytest.raises(ServiceUnavailable) as raised:
        client.credits.config()
    assert raised.value.reason == "network_error"
    client.close()
