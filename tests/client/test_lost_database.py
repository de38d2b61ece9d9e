"""PostgreSQL going down under a request: PostgREST answers 400 with an empty code (libpq's own
error carries no SQLSTATE). That is no answer from the database, not a refused request: a money
call is retried with its idempotency key and applied once; any other call says it may have been
applied. (The bank test in tests/reliability meets the real answer when it crashes PostgreSQL.)"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from mycelium_client import ServiceUnavailable, TransactionKind
from tests.support.client import MakeAccount, Target, signed_in
from tests.support.faults import LosesDatabase


def test_a_transfer_the_database_died_under_is_retried_and_applied_once(
    target: Target, account: MakeAccount
) -> None:
    sender, recipient = account(funded=10), account()
    transport = LosesDatabase("/rpc/transfer_credits", times=1)
    movement = signed_in(target, sender.email, transport).credits.transfer(recipient.id, "2.5")
    assert transport.sent == 2  # applied by the first (whose answer was lost), replayed by the second
    assert movement.balance_after == Decimal("7.5")
    outgoing = list(sender.client.credits.history(kinds=[TransactionKind.TRANSFER_OUT]))
    assert [entry.transfer_id for entry in outgoing] == [movement.transfer_id]


def test_a_call_that_is_not_idempotent_says_it_may_have_been_applied(target: Target) -> None:
    transport = LosesDatabase("/rpc/set_credit_config", times=1)
    service = target.client(service_role=True, http_client=httpx.Client(transport=transport))
    name = target.client().credits.config().credit_display_name
    with pytest.raises(ServiceUnavailable) as raised:
        service.admin.set_credit_config(credit_display_name=name)
    assert transport.sent == 1
    assert (
        raised.value.reason == "database_connection_lost" and "may have been applied" in raised.value.message
    )
