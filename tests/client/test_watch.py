"""`credits.watch`: from a real transfer to a delivered `BalanceChange`, over the Realtime double
(fed by the real database) behind the gateway, or a real Supabase Realtime in the live suite."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from mycelium_client import (
    AsyncMyceliumClient,
    BalanceChange,
    BalanceSource,
    BalanceWatch,
    LowBalanceWarning,
    MyceliumError,
    NotFound,
    ProductUnit,
    RoleName,
    ServiceUnavailable,
)
from tests.client.doubles.realtime import RESTARTING, TOKEN_EXPIRED, JoinScript, policy_refusal
from tests.support.client import FAST_RETRY, FAST_WATCH, PASSWORD, Doubles, MakeAccount, Target, listed
from tests.support.realtime import private_topics_closed
from tests.support.telemetry import Logged

WAIT = 10.0
# FAST_WATCH's rejoin delays after 1, 2, 3... failures in a row: doubling, up to its maximum.
BACKOFF = [0.2, 0.4, FAST_WATCH.max_backoff_seconds]


def next_change(watch: object, source: BalanceSource | None = None) -> BalanceChange:
    assert isinstance(watch, BalanceWatch)
    while True:
        change = watch.get(timeout=WAIT)
        if source is None or change.source is source:
            return change


def balance_reaching(watch: BalanceWatch, balance: Decimal | int) -> BalanceChange:
    while True:
        change = watch.get(timeout=WAIT)
        if change.balance == balance:
            return change


def assert_backed_off(joins: list[float]) -> None:
    """Each join came at least the backoff after the one before: a lower bound, which a slow
    machine only makes easier to meet."""
    waits = [later - earlier for earlier, later in itertools.pairwise(joins)]
    assert all(waited >= delay for waited, delay in zip(waits, BACKOFF, strict=False)), waits


class FailingBalanceReads(httpx.BaseTransport):
    """PostgREST's answer `status`/`body` to the next `failing` balance reads (set it any time):
    PostgREST without its database, or refusing a token; everything else goes through."""

    def __init__(self, status: int, body: dict[str, Any], failing: int = 0) -> None:
        self.inner, self.status, self.body, self.failing = httpx.HTTPTransport(), status, body, failing

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/credit_balances") and self.failing > 0:
            self.failing -= 1
            return httpx.Response(self.status, json=self.body)
        return self.inner.handle_request(request)


UNAVAILABLE = (503, {"code": "PGRST001", "message": "Database client error"})
TOKEN_REFUSED = (401, {"code": "PGRST301", "message": "JWT expired"})


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


def test_resubscribes_after_a_dropped_connection(
    local_doubles: Doubles, account: MakeAccount, logged: Logged
) -> None:
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
    joined = logged.events("realtime_joined")
    assert [e["rejoin"] for e in joined[:2]] == [False, True]
    assert all(e["level"] == "info" and e["topic"] == f"realtime:balance:{recipient.id}" for e in joined)
    assert logged.events("realtime_retry")  # after the drop


def test_falls_back_to_postgres_changes_when_the_private_topic_is_refused(
    target: Target, local_doubles: Doubles, account: MakeAccount, logged: Logged
) -> None:
    sender, recipient = account(funded=3), account()
    with private_topics_closed(target.db_url), recipient.client.credits.watch() as watch:
        watch.get(timeout=WAIT)
        sender.client.credits.transfer(recipient.id, "0.5")
        change = watch.get(timeout=WAIT)
    assert change.source is BalanceSource.POSTGRES_CHANGES and change.balance == Decimal("0.5")
    assert change.user_id == recipient.id
    [fallback] = logged.events("realtime_fallback")
    assert fallback["refused_topic"] == f"realtime:balance:{recipient.id}"
    assert fallback["topic"] == f"realtime:balance-row:{recipient.id}"
    joined = logged.events("realtime_joined")
    assert [(e["mode"], e["rejoin"]) for e in joined] == [("postgres_changes", False)]


def test_the_postgres_changes_mode_ignores_broadcasts_anyone_may_send(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    """Its topic is public: a forged `balance_changed` sent there (here through the database, as
    any holder of the anon key could through Realtime) must not reach the watcher."""
    sender, recipient = account(funded=3), account()
    forged = {
        "user_id": str(recipient.id),
        "balance": "1000000",
        "held": "0",
        "updated_at": "2026-12-02T00:00Z",
    }
    with private_topics_closed(target.db_url), recipient.client.credits.watch() as watch:
        watch.get(timeout=WAIT)
        with target.connect() as conn:
            conn.execute(
                "select realtime.send(%s::jsonb, 'balance_changed', %s, false)",
                (json.dumps(forged), f"balance-row:{recipient.id}"),
            )
        sender.client.credits.transfer(recipient.id, "0.5")
        change = watch.get(timeout=WAIT)
    assert change.source is BalanceSource.POSTGRES_CHANGES and change.balance == Decimal("0.5")


def test_only_your_own_balance_is_delivered(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    """A watcher asking for someone else's balance: the private topic is refused (RLS on
    realtime.messages) and their account row is invisible (RLS on credit_accounts)."""
    spy, victim = account(), account(funded=1)
    with pytest.raises(NotFound):
        spy.client.credits.watch(user_id=victim.id).start(timeout=WAIT)


def test_refreshes_its_access_token(target: Target, local_doubles: Doubles, account: MakeAccount) -> None:
    """Tokens that live 3 s: supabase-py refreshes the session before expiry and the watch gives
    the channel the new token, and the double (which closes channels whose token expired) keeps
    delivering."""
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
    # Pushed to the open channel, or, when the refresh lands right at expiry and the double has
    # closed the channel already, sent with the rejoin: a newer token reached the server either way.
    given = [
        frame["payload"]["access_token"]
        for event in ("access_token", "phx_join")
        for frame in local_doubles.realtime.frames(event)
        if frame.get("topic") == f"realtime:balance:{user_id}"
    ]
    assert first_token in given and set(given) - {first_token}


@pytest.mark.parametrize(
    ("answer", "reads"),
    [(UNAVAILABLE, 2 * FAST_RETRY.attempts), (TOKEN_REFUSED, 2)],  # two resyncs fail, retries included
    ids=["rest-unavailable", "rest-token-refused"],
)
def test_a_failed_balance_read_is_retried_in_the_same_mode(
    target: Target, account: MakeAccount, answer: tuple[int, dict[str, Any]], reads: int
) -> None:
    sender = account(funded=3)
    user_id, email = target.create_user()
    rest = FailingBalanceReads(*answer, failing=reads)
    client = target.client(http_client=httpx.Client(transport=rest))
    client.auth.sign_in(email, PASSWORD)
    with client.credits.watch() as watch:
        assert watch.get(timeout=WAIT).source is BalanceSource.RESYNC
        sender.client.credits.transfer(user_id, 1)
        change = watch.get(timeout=WAIT)
    assert rest.failing == 0
    assert change.source is BalanceSource.BROADCAST and change.balance == 1


def test_rest_unavailable_at_a_reconnect_is_retried(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    sender = account(funded=10)
    user_id, email = target.create_user()
    rest = FailingBalanceReads(*UNAVAILABLE)
    client = target.client(http_client=httpx.Client(transport=rest))
    client.auth.sign_in(email, PASSWORD)
    with client.credits.watch() as watch:
        assert watch.get(timeout=WAIT).balance == 0
        rest.failing = 2 * FAST_RETRY.attempts
        local_doubles.realtime.drop_connections()
        sender.client.credits.transfer(user_id, 4)
        assert watch.get(timeout=WAIT).balance == 4  # only after a resync succeeded
        assert rest.failing == 0
        sender.client.credits.transfer(user_id, 1)
        change = watch.get(timeout=WAIT)
    assert change.source is BalanceSource.BROADCAST and change.balance == 5


@pytest.mark.parametrize("reason", [TOKEN_EXPIRED, RESTARTING], ids=["token", "restarting"])
def test_a_join_refused_for_another_reason_than_the_policy_is_retried_with_backoff(
    local_doubles: Doubles, account: MakeAccount, reason: str, logged: Logged
) -> None:
    sender, recipient = account(funded=2), account()
    topic = f"balance:{recipient.id}"
    local_doubles.realtime.script_joins(topic, *[JoinScript(refuse=reason)] * 3)
    with recipient.client.credits.watch() as watch:
        assert watch.get(timeout=WAIT).balance == 0
        sender.client.credits.transfer(recipient.id, 2)
        change = watch.get(timeout=WAIT)
    assert change.source is BalanceSource.BROADCAST and change.balance == 2
    assert_backed_off(local_doubles.realtime.join_times(topic, 4, WAIT))
    refusals = [e["cause"] for e in logged.events("realtime_retry")]
    assert refusals == [f"Realtime refused realtime:{topic}: {reason}"] * 3
    assert [e["rejoin"] for e in logged.events("realtime_joined")] == [False]


def test_a_channel_the_server_keeps_closing_is_rejoined_with_backoff(
    local_doubles: Doubles, account: MakeAccount
) -> None:
    sender, recipient = account(funded=2), account()
    topic = f"balance:{recipient.id}"
    local_doubles.realtime.script_joins(topic, *[JoinScript(close=RESTARTING)] * 3)
    with recipient.client.credits.watch() as watch:
        joins = local_doubles.realtime.join_times(topic, 4, WAIT)
        sender.client.credits.transfer(recipient.id, 2)
        assert balance_reaching(watch, 2).user_id == recipient.id
    assert_backed_off(joins)


def test_a_watch_that_cannot_subscribe_says_why(local_doubles: Doubles, account: MakeAccount) -> None:
    recipient = account()
    local_doubles.realtime.script_joins(f"balance:{recipient.id}", *[JoinScript(refuse=TOKEN_EXPIRED)] * 50)
    with pytest.raises(ServiceUnavailable) as timed_out:
        recipient.client.credits.watch().start(timeout=1)
    assert timed_out.value.reason == "realtime_timeout" and TOKEN_EXPIRED in str(timed_out.value)


class CallbackFailed(Exception):
    pass


def test_a_failing_callback_is_raised_when_the_block_ends(account: MakeAccount) -> None:
    sender, recipient = account(funded=5), account()
    failed = threading.Event()

    def callback(change: BalanceChange) -> None:
        if change.balance == 2:
            failed.set()
            raise CallbackFailed(f"no room for {change.balance}")

    # Raised by the watch's __exit__, as the block ends.
    with pytest.raises(CallbackFailed, match="no room for 2"), recipient.client.credits.watch(callback):
        sender.client.credits.transfer(recipient.id, 2)
        assert failed.wait(WAIT)


def test_a_callback_failing_with_an_os_error_ends_the_watch_too(account: MakeAccount) -> None:
    """Not taken for a dropped connection and retried in silence."""
    sender, recipient = account(funded=5), account()
    failed = threading.Event()

    def callback(change: BalanceChange) -> None:
        if change.balance == 2:
            failed.set()
            raise OSError("disk full")

    with recipient.client.credits.watch(callback) as watch:
        sender.client.credits.transfer(recipient.id, 2)
        assert failed.wait(WAIT)
        with pytest.raises(OSError, match="disk full"):
            watch.get(timeout=WAIT)  # the watch has ended, with the callback's error


def test_a_failing_async_callback_is_raised_when_the_block_ends(target: Target, account: MakeAccount) -> None:
    sender, recipient = account(funded=5), account()

    async def scenario() -> None:
        async with AsyncMyceliumClient(
            target.url, target.anon_key, retry=FAST_RETRY, watch=FAST_WATCH
        ) as client:
            await client.auth.sign_in(recipient.email, PASSWORD)
            failed = asyncio.Event()

            async def callback(change: BalanceChange) -> None:
                if change.balance == 2:
                    failed.set()
                    raise CallbackFailed(f"no room for {change.balance}")

            with pytest.raises(CallbackFailed, match="no room for 2"):
                async with client.credits.watch(callback):
                    await asyncio.to_thread(sender.client.credits.transfer, recipient.id, 2)
                    await failed.wait()

    asyncio.run(asyncio.wait_for(scenario(), WAIT))


def test_the_error_that_ends_a_watch_is_raised_once(local_doubles: Doubles, account: MakeAccount) -> None:
    """Ended by a rejoin whose bindings are not granted as asked: raised by `get`, not again when
    the block ends."""
    recipient, other = account(), account()
    realtime = local_doubles.realtime
    realtime.script_joins(
        f"balance:{recipient.id}", JoinScript(refuse=policy_refusal(f"balance:{recipient.id}"))
    )
    realtime.script_joins(
        f"balance-row:{recipient.id}", JoinScript(), JoinScript(grant={"filter": f"user_id=eq.{other.id}"})
    )
    with recipient.client.credits.watch() as watch:
        assert watch.get(timeout=WAIT).source is BalanceSource.RESYNC
        realtime.drop_connections()
        with pytest.raises(MyceliumError) as ended:
            watch.get(timeout=WAIT)
    assert ended.value.reason == "realtime_bindings"


@pytest.mark.parametrize(
    "granted",
    [
        {"filter": "user_id=eq.00000000-0000-0000-0000-000000000000"},
        {"event": "*"},
        {"table": "credit_holds"},
    ],
    ids=["filter", "event", "table"],
)
def test_postgres_changes_bindings_granted_other_than_asked_fail_the_subscription(
    local_doubles: Doubles, account: MakeAccount, granted: dict[str, str]
) -> None:
    recipient = account()
    realtime = local_doubles.realtime
    realtime.script_joins(
        f"balance:{recipient.id}", JoinScript(refuse=policy_refusal(f"balance:{recipient.id}"))
    )
    realtime.script_joins(f"balance-row:{recipient.id}", JoinScript(grant=granted))
    with pytest.raises(MyceliumError) as refused:
        recipient.client.credits.watch().start(timeout=WAIT)
    assert refused.value.reason == "realtime_bindings"


@contextlib.contextmanager
def low_balance_hours(target: Target, hours: int) -> Iterator[None]:
    """A known threshold of the low-balance warning for the block, put back afterwards."""
    service = target.service()
    before = service.subscriptions.config().low_balance_hours
    service.admin.set_subscription_config(low_balance_hours=hours)
    try:
        yield
    finally:
        service.admin.set_subscription_config(low_balance_hours=before)


def test_a_running_subscription_sets_the_burn_rate_and_a_low_balance_is_warned(
    target: Target, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=ProductUnit.HOUR)
    warnings: list[LowBalanceWarning] = []
    with (
        low_balance_hours(target, 24),
        buyer.client.credits.watch(on_low_balance=warnings.append) as watch,
    ):
        first = watch.get(timeout=WAIT)
        assert (first.burn_rate, first.runway_hours) == (Decimal(0), None)
        started = buyer.client.subscriptions.start(product.id, quantity=2)  # 2 an hour, 8 left: 4 hours
        held = balance_reaching(watch, 8)
        assert (held.source, held.burn_rate, held.runway_hours) == (
            BalanceSource.BROADCAST,
            Decimal(2),
            Decimal(4),
        )
        buyer.client.subscriptions.stop(started.id)  # one started hour: the hold, all of it
        while (change := watch.get(timeout=WAIT)).burn_rate != 0:
            pass
    # The stop moved credits, then ended the subscription: its last change says nothing runs.
    assert (change.balance, change.held, change.runway_hours) == (Decimal(8), Decimal(0), None)
    # Delivered before the stop's changes, which came after it.
    assert [(w.user_id, w.balance, w.cost_per_hour, w.runway_hours, w.threshold_hours) for w in warnings] == [
        (buyer.id, Decimal(8), Decimal(2), Decimal(4), 24)
    ]
    assert buyer.client.credits.balance().burn_rate == 0


def test_async_watch_warns_an_async_callback(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=3)
    product = listed(provider, "1", unit=ProductUnit.HOUR)

    async def scenario() -> tuple[list[LowBalanceWarning], Decimal | None]:
        warnings: list[LowBalanceWarning] = []

        async def warned(warning: LowBalanceWarning) -> None:
            warnings.append(warning)

        async with AsyncMyceliumClient(
            target.url, target.anon_key, retry=FAST_RETRY, watch=FAST_WATCH
        ) as client:
            await client.auth.sign_in(buyer.email, PASSWORD)
            async with client.credits.watch(on_low_balance=warned) as watch:
                started = await client.subscriptions.start(product.id)
                async for change in watch:
                    if change.balance == 2:
                        break
                await client.subscriptions.stop(started.id)
                async for change in watch:
                    if change.burn_rate == 0 and change.source is BalanceSource.BROADCAST:
                        break
            return warnings, change.runway_hours

    with low_balance_hours(target, 24):
        warnings, runway = asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert [(w.balance, w.runway_hours) for w in warnings] == [(Decimal(2), Decimal(2))] and runway is None


def test_the_postgres_changes_mode_delivers_warnings_too(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=5)
    product = listed(provider, "2", unit=ProductUnit.HOUR)
    warnings: list[LowBalanceWarning] = []
    with (
        low_balance_hours(target, 24),
        private_topics_closed(target.db_url),
        buyer.client.credits.watch(on_low_balance=warnings.append) as watch,
    ):
        watch.get(timeout=WAIT)
        started = buyer.client.subscriptions.start(product.id)  # 2 an hour, 3 left: 1.5 hours
        held = balance_reaching(watch, 3)
        buyer.client.subscriptions.stop(started.id)
        while watch.get(timeout=WAIT).held != 0:  # the stop: after the warning, in commit order
            pass
    # The row has no burn rate: the watch read the account after it, and it has.
    assert (held.source, held.burn_rate, held.runway_hours) == (
        BalanceSource.POSTGRES_CHANGES,
        Decimal(2),
        Decimal("1.5"),
    )
    assert [(w.user_id, w.runway_hours) for w in warnings] == [(buyer.id, Decimal("1.5"))]
