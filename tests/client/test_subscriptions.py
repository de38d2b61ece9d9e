"""`client.subscriptions` (and the subscriptions' batch and configuration of `client.admin`) end to
end: subscriptions started, paged, charged, reported on and stopped by the real SQL, errors mapped
from its reasons, and the events a provider's service follows, in order even when transactions
commit out of it, woken by Realtime (the double behind the gateway, or a real Supabase in the live
suite) and never told an event by it."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from cli.dev.clock import pass_time
from mycelium_client import (
    AsyncMyceliumClient,
    Conflict,
    InsufficientCredits,
    InvalidArgument,
    MyceliumClient,
    MyceliumError,
    NotAuthorized,
    NotFound,
    PeriodKind,
    PeriodStatus,
    ProductUnit,
    RoleName,
    Subscription,
    SubscriptionEvent,
    SubscriptionEventKind,
    SubscriptionStatus,
)
from tests.client.doubles.realtime import RESTARTING, JoinScript
from tests.support.client import (
    FAST_RETRY,
    FAST_WATCH,
    PASSWORD,
    Account,
    Doubles,
    MakeAccount,
    Target,
    async_clients,
    listed,
    signed_in,
)
from tests.support.realtime import private_topics_closed

HOUR = ProductUnit.HOUR
WAIT = 10.0
# Neither a poll nor a resync within a test: only a signal from Realtime makes such a follower read.
NEVER = 3600.0


def balances(account: Account) -> tuple[Decimal, Decimal]:
    balance = account.client.credits.balance()
    return balance.balance, balance.held


def charge_all_due(service: MyceliumClient) -> None:
    """Whatever earlier tests left due, so that the batch a test runs finds its own."""
    while not service.admin.charge_due_subscriptions(max_periods=10000).done:
        pass


def refused(error: type[MyceliumError], reason: str, status: int, call: Callable[[], object]) -> None:
    with pytest.raises(error) as raised:
        call()
    assert (raised.value.reason, raised.value.status) == (reason, status)


def test_a_subscription_is_started_listed_charged_and_stopped(target: Target, account: MakeAccount) -> None:
    service = target.service()
    charge_all_due(service)
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "2", unit=HOUR)
    subscriptions = buyer.client.subscriptions

    started = subscriptions.start(product.id, 2, idempotency_key="slice-1")
    assert isinstance(started, Subscription) and started.status is SubscriptionStatus.ACTIVE
    assert (started.buyer_id, started.provider_id, started.product_id) == (buyer.id, provider.id, product.id)
    assert (started.quantity, started.unit, started.periods) == (2, ProductUnit.HOUR, 1)
    assert started.period is not None and started.period.amount == Decimal(4)
    assert started.period.status is PeriodStatus.HELD and started.period.kind is PeriodKind.PERIOD
    assert balances(buyer) == (Decimal(6), Decimal(4))
    # A retry with the same key is the same subscription, and holds nothing more.
    assert subscriptions.start(product.id, 2, idempotency_key="slice-1").id == started.id
    assert balances(buyer) == (Decimal(6), Decimal(4))
    second = subscriptions.start(product.id)
    assert second.idempotency_key and second.idempotency_key.startswith("mycelium-client-")

    # Paged newest first, as the buyer, the provider and the service see them.
    assert [s.id for s in subscriptions.list(page_size=1)] == [second.id, started.id]
    assert [s.id for s in provider.client.subscriptions.list(provider_id=provider.id)] == [
        second.id,
        started.id,
    ]
    assert [s.id for s in service.subscriptions.list(buyer_id=buyer.id, statuses=["active"])] == [
        second.id,
        started.id,
    ]
    assert subscriptions.get(started.id).period is None  # a read: the subscription's columns only

    # An hour passes; the batch pays the period and holds the next.
    with target.connect() as conn:
        pass_time(conn, started.id, timedelta(hours=1))
    batch = service.admin.charge_due_subscriptions()
    assert batch.done and batch.renewed >= 1 and batch.periods_charged >= 1 and batch.credits_charged >= 4
    first, renewal = subscriptions.periods(started.id)
    assert (first.seq, first.status, first.charged_amount) == (1, PeriodStatus.CHARGED, Decimal(4))
    assert (renewal.seq, renewal.status, renewal.starts_at) == (2, PeriodStatus.HELD, first.ends_at)
    assert balances(buyer) == (Decimal(0), Decimal(6))

    stopped = subscriptions.stop(started.id)
    assert stopped.status is SubscriptionStatus.STOPPED and stopped.ended_at is not None
    assert subscriptions.stop(started.id) == stopped  # a retry: nothing more moves
    provider.client.subscriptions.stop(second.id)
    assert balances(buyer) == (Decimal(0), Decimal(0))  # each running period: its started hour
    # All 10 spent, on three charged periods.
    spending = buyer.client.orders.spending_by_category()
    assert [(s.category, s.orders, s.periods, s.spent) for s in spending] == [
        (product.category, 0, 3, Decimal(10))
    ]
    assert [s.id for s in subscriptions.list(statuses=[SubscriptionStatus.STOPPED])] == [
        second.id,
        started.id,
    ]
    assert not service.admin.audit_ledger()


def test_refusals_carry_the_sql_reasons(target: Target, account: MakeAccount) -> None:
    provider, buyer, stranger = account(role=RoleName.FARMER), account(funded=3), account(funded=1)
    hourly = listed(provider, "2", unit=HOUR)
    subscriptions = buyer.client.subscriptions

    refused(InsufficientCredits, "insufficient_credits", 409, lambda: subscriptions.start(hourly.id, 2))
    refused(NotFound, "product_not_found", 404, lambda: subscriptions.start(uuid.uuid4()))
    refused(InvalidArgument, "invalid_quantity", 400, lambda: subscriptions.start(hourly.id, 0))
    refused(InvalidArgument, "own_product", 400, lambda: provider.client.subscriptions.start(hourly.id))
    scarce = listed(provider, "1", capacity=3)
    refused(Conflict, "not_subscribable", 409, lambda: subscriptions.start(scarce.id))
    running = subscriptions.start(hourly.id, idempotency_key="k")
    refused(Conflict, "duplicate_reference", 409, lambda: subscriptions.start(hourly.id, 2, "k"))
    refused(NotFound, "subscription_not_found", 404, lambda: stranger.client.subscriptions.stop(running.id))
    refused(NotFound, "subscription_not_found", 404, lambda: subscriptions.stop(uuid.uuid4()))
    refused(NotFound, "subscription_not_found", 404, lambda: stranger.client.subscriptions.get(running.id))
    refused(
        NotAuthorized, "not_authorized", 403, lambda: subscriptions.report_usage(running.id, "egress_gb", "1")
    )
    usage = provider.client.subscriptions
    refused(
        InvalidArgument, "unknown_usage_unit", 400, lambda: usage.report_usage(running.id, "egress_gb", "1")
    )
    with pytest.raises(NotAuthorized):
        buyer.client.admin.charge_due_subscriptions()  # the service's alone
    assert list(stranger.client.subscriptions.list()) == []
    assert list(stranger.client.subscriptions.events(subscription_id=running.id)) == []
    subscriptions.stop(running.id)
    refused(Conflict, "invalid_transition", 409, lambda: usage.report_usage(running.id, "x", "1"))
    with pytest.raises(NotAuthorized):
        target.client().subscriptions.low_balance_warnings()  # refused before sending: nobody signed in


def test_providers_report_usage_once_per_key_and_both_parties_read_it(
    target: Target, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    metered = listed(provider, "1", attributes={"usage_prices": {"egress_gb": "0.01"}}, unit=HOUR)
    running = buyer.client.subscriptions.start(metered.id)

    report = provider.client.subscriptions.report_usage(
        running.id, "egress_gb", "12.5", idempotency_key="m-1"
    )
    assert (report.unit, report.quantity, report.unit_price) == (
        "egress_gb",
        Decimal("12.5"),
        Decimal("0.01"),
    )
    assert report.reported_by == provider.id and report.charge_id is None
    again = provider.client.subscriptions.report_usage(running.id, "egress_gb", "12.5", idempotency_key="m-1")
    assert again == report
    refused(
        Conflict,
        "duplicate_reference",
        409,
        lambda: provider.client.subscriptions.report_usage(
            running.id, "egress_gb", "3", idempotency_key="m-1"
        ),
    )
    by_service = target.service().subscriptions.report_usage(running.id, "egress_gb", "0.5")
    assert by_service.reported_role == "service_role"
    with pytest.raises(InvalidArgument):
        provider.client.subscriptions.report_usage(running.id, "egress_gb", "0.0000001")  # refused here
    assert [u.id for u in buyer.client.subscriptions.usage(running.id)] == [report.id, by_service.id]
    assert len(provider.client.subscriptions.usage(running.id, uncharged=True)) == 2

    # Stopped, the usage is charged with the started hour: 1 + 13 * 0.01.
    buyer.client.subscriptions.stop(running.id)
    assert buyer.client.subscriptions.usage(running.id, uncharged=True) == []
    assert balances(buyer) == (Decimal("8.87"), Decimal(0))
    kinds = [p.kind for p in buyer.client.subscriptions.periods(running.id)]
    assert kinds == [PeriodKind.PERIOD, PeriodKind.USAGE]


def test_running_low_warns_and_the_configuration_reads_as_durations(
    target: Target, account: MakeAccount
) -> None:
    service = target.service()
    before = service.subscriptions.config()
    assert before.grace_period > timedelta(0) and before.suspension_period > timedelta(0)
    changed = service.admin.set_subscription_config(grace_period=timedelta(hours=2), low_balance_hours=10)
    try:
        assert (changed.grace_period, changed.low_balance_hours) == (timedelta(hours=2), 10)
        assert changed.suspension_period == before.suspension_period
        provider, buyer = account(role=RoleName.FARMER), account(funded=10)
        running = buyer.client.subscriptions.start(listed(provider, "1", unit=HOUR).id)
        [warning] = buyer.client.subscriptions.low_balance_warnings()
        assert (warning.cost_per_hour, warning.balance, warning.runway_hours) == (
            Decimal(1),
            Decimal(9),
            Decimal(9),
        )
        assert warning.threshold_hours == 10 and warning.user_id == buyer.id
        assert service.subscriptions.low_balance_warnings(buyer.id) == [warning]
        buyer.client.subscriptions.stop(running.id)
        refused(InvalidArgument, "invalid_argument", 400, lambda: service.admin.set_subscription_config())
    finally:
        service.admin.set_subscription_config(
            grace_period=before.grace_period, low_balance_hours=before.low_balance_hours
        )
    assert service.subscriptions.config().grace_period == before.grace_period


def test_events_page_in_order_and_a_provider_follows_them_as_they_commit(
    target: Target, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=HOUR)
    follower = provider.client.subscriptions.follow(
        provider_id=provider.id, poll_seconds=0.05, idle_seconds=10
    )
    first = buyer.client.subscriptions.start(product.id)
    second = buyer.client.subscriptions.start(product.id)
    provider.client.subscriptions.stop(first.id)

    followed = [next(follower) for _ in range(3)]
    assert [(e.subscription_id, e.event) for e in followed] == [
        (first.id, SubscriptionEventKind.STARTED),
        (second.id, SubscriptionEventKind.STARTED),
        (first.id, SubscriptionEventKind.STOPPED),
    ]
    assert followed[0].amount == Decimal(1) and followed[0].period_id == first.period.id  # type: ignore[union-attr]
    assert followed[2].changed_by == provider.id and followed[2].changed_role == "authenticated"
    # Paged, oldest first; resumed after an id; each party sees the same events.
    paged = list(buyer.client.subscriptions.events(buyer_id=buyer.id, page_size=1))
    assert paged == followed
    assert list(provider.client.subscriptions.events(subscription_id=first.id, after=followed[0].id)) == [
        followed[2]
    ]
    resumed = provider.client.subscriptions.follow(
        provider_id=provider.id, after=followed[1].id, poll_seconds=0.05, idle_seconds=0.1
    )
    assert list(resumed) == [followed[2]]
    buyer.client.subscriptions.stop(second.id)
    assert next(follower).event is SubscriptionEventKind.STOPPED


def test_an_event_committed_after_later_ones_is_still_followed(target: Target, account: MakeAccount) -> None:
    """A batch (here a stop in an open transaction) writes event n; a stop writes n + 1 and commits
    first, and later events follow: the follower delivers them, then n when it commits."""
    service = target.service()
    parties = [(account(role=RoleName.FARMER), account(funded=10)) for _ in range(3)]
    # Of three providers and buyers: no lock shared between the stops and the start.
    products = [listed(provider, "1", unit=HOUR) for provider, _ in parties]
    ours = [
        buyer.client.subscriptions.start(product.id)
        for (_, buyer), product in zip(parties[:2], products[:2], strict=True)
    ]
    follower = service.subscriptions.follow(poll_seconds=0.05, idle_seconds=10)

    def next_of(subscription_id: uuid.UUID) -> SubscriptionEventKind:
        return next(e for e in follower if e.subscription_id == subscription_id).event

    with target.connect() as batch:
        batch.execute("begin")
        batch.execute("select public.stop_subscription(%s)", (ours[0].id,))  # acting as the service
        service.subscriptions.stop(ours[1].id)
        assert next_of(ours[1].id) is SubscriptionEventKind.STOPPED
        # Polls go on while n is missing: it is not given up for that.
        later = parties[2][1].client.subscriptions.start(products[2].id)
        assert next_of(later.id) is SubscriptionEventKind.STARTED
        batch.execute("commit")
    assert next_of(ours[0].id) is SubscriptionEventKind.STOPPED
    parties[2][1].client.subscriptions.stop(later.id)


def test_async_subscriptions(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", attributes={"usage_prices": {"cpu_hours": "0.5"}}, unit=HOUR)

    async def scenario() -> None:
        async with async_clients(target, buyer, provider) as (as_buyer, as_provider, service):
            follower = await as_provider.subscriptions.follow(
                provider_id=provider.id, poll_seconds=0.05, idle_seconds=10
            )
            started = await as_buyer.subscriptions.start(product.id, 3)
            assert (await as_buyer.subscriptions.get(started.id)).quantity == 3
            assert [s.id async for s in as_buyer.subscriptions.list(page_size=1)] == [started.id]
            report = await as_provider.subscriptions.report_usage(started.id, "cpu_hours", "2")
            assert [u.id for u in await as_buyer.subscriptions.usage(started.id)] == [report.id]
            batch = await service.admin.charge_due_subscriptions(max_periods=1)
            assert batch.as_of.tzinfo is not None
            stopped = await as_buyer.subscriptions.stop(started.id)
            assert stopped.status is SubscriptionStatus.STOPPED
            assert [p.kind for p in await as_buyer.subscriptions.periods(started.id)] == [
                PeriodKind.PERIOD,
                PeriodKind.USAGE,
            ]
            events = [e.event async for e in as_provider.subscriptions.events(subscription_id=started.id)]
            assert events == [SubscriptionEventKind.STARTED, SubscriptionEventKind.STOPPED]
            assert [(await anext(follower)).event for _ in range(2)] == events
            # 7 credits left at 3 an hour: below the threshold (24 hours by default).
            [warning] = await as_buyer.subscriptions.low_balance_warnings()
            assert warning.runway_hours == Decimal("2.33")
            config = await service.subscriptions.config()
            same = await service.admin.set_subscription_config(low_balance_hours=config.low_balance_hours)
            assert same.low_balance_hours == config.low_balance_hours

    asyncio.run(scenario())
    assert balances(buyer) == (Decimal(6), Decimal(0))  # 3 for the started hour, 1 for the usage


# -- following through Realtime -----------------------------------------------------------------
class CountedReads(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Counts the answered reads of /subscription_events, sync or async, and waits for a count."""

    def __init__(self) -> None:
        self.inner, self.async_inner = httpx.HTTPTransport(), httpx.AsyncHTTPTransport()
        self.answered = 0
        self._changed = threading.Condition()

    def _count(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/subscription_events"):
            with self._changed:
                self.answered += 1
                self._changed.notify_all()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        self._count(request)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.async_inner.handle_async_request(request)
        await response.aread()
        self._count(request)
        return response

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.answered >= count, WAIT), f"{self.answered} reads"


def woken_follower(
    account: Account, client: MyceliumClient | None = None
) -> Generator[SubscriptionEvent, None, None]:
    """The provider's follower of their events that only Realtime wakes."""
    subscriptions = (client or account.client).subscriptions
    return subscriptions.follow(provider_id=account.id, poll_seconds=NEVER, resync_seconds=NEVER)


def taking(events: Iterator[SubscriptionEvent]) -> Callable[[], SubscriptionEvent]:
    """Takes the next event in a thread, at once (a follower nothing wakes waits for an hour); the
    function returned gives it, or fails after WAIT."""
    taken: queue.Queue[SubscriptionEvent] = queue.Queue()
    threading.Thread(target=lambda: taken.put(next(events)), daemon=True).start()

    def result() -> SubscriptionEvent:
        try:
            return taken.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no event within {WAIT} s") from None

    return result


def next_within(events: Iterator[SubscriptionEvent]) -> SubscriptionEvent:
    return taking(events)()


def forge(target: Target, topic: str, private: bool, subscription_id: uuid.UUID) -> None:
    """An event that never happened, broadcast as the feed's (through the database here, as anyone
    holding the anon key could through Realtime on a public topic)."""
    forged = {
        "id": 2**62,
        "subscription_id": str(subscription_id),
        "event": "stopped",
        "at": "2026-12-01T00:00Z",
    }
    with target.connect() as conn:
        conn.execute(
            "select realtime.send(%s::jsonb, 'subscription_event', %s, %s)",
            (json.dumps(forged), topic, private),
        )


def test_realtime_wakes_a_provider_following_their_events(target: Target, account: MakeAccount) -> None:
    """Reads: where now is, the first, and the one after the join; then only a signal makes one."""
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=HOUR)
    reads = CountedReads()
    follower = woken_follower(provider, signed_in(target, provider.email, reads))
    try:
        started = buyer.client.subscriptions.start(product.id)
        assert next_within(follower).subscription_id == started.id
        stopped = taking(follower)
        reads.wait_for(3)  # joined, and read after it: the stop is committed after every read so far
        # A broadcast says when to read, never what happened: only events read over REST arrive.
        forge(target, f"subscriptions:{provider.id}", True, started.id)
        buyer.client.subscriptions.stop(started.id)
        event = stopped()
        assert (event.subscription_id, event.event) == (started.id, SubscriptionEventKind.STOPPED)
    finally:
        follower.close()


def test_realtime_wakes_an_async_follower(target: Target, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=HOUR)
    reads = CountedReads()

    async def scenario() -> list[SubscriptionEventKind]:
        async with AsyncMyceliumClient(
            target.url,
            target.anon_key,
            retry=FAST_RETRY,
            watch=FAST_WATCH,
            http_client=httpx.AsyncClient(transport=reads),
        ) as client:
            await client.auth.sign_in(provider.email, PASSWORD)
            follower = await client.subscriptions.follow(
                provider_id=provider.id, poll_seconds=NEVER, resync_seconds=NEVER
            )
            started = await asyncio.to_thread(buyer.client.subscriptions.start, product.id)
            first = await asyncio.wait_for(anext(follower), WAIT)
            second = asyncio.ensure_future(anext(follower))
            await asyncio.to_thread(reads.wait_for, 3)
            await asyncio.to_thread(buyer.client.subscriptions.stop, started.id)
            try:
                stopped = await asyncio.wait_for(second, WAIT)
            finally:
                await follower.aclose()
            assert first.subscription_id == stopped.subscription_id == started.id
            return [first.event, stopped.event]

    assert asyncio.run(scenario()) == [SubscriptionEventKind.STARTED, SubscriptionEventKind.STOPPED]


def test_a_follower_refused_the_private_topic_is_woken_through_postgres_changes(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=HOUR)
    reads = CountedReads()
    with private_topics_closed(target.db_url):
        follower = woken_follower(provider, signed_in(target, provider.email, reads))
        try:
            started = buyer.client.subscriptions.start(product.id)
            first = next_within(follower)
            stopped = taking(follower)
            reads.wait_for(3)  # as in test_realtime_wakes_a_provider_following_their_events
            # Anyone may broadcast on this public topic: it wakes the follower, and that is all.
            forge(target, f"subscriptions-row:{provider.id}", False, started.id)
            buyer.client.subscriptions.stop(started.id)
            second = stopped()
        finally:
            follower.close()
    assert [(e.subscription_id, e.event) for e in (first, second)] == [
        (started.id, SubscriptionEventKind.STARTED),
        (started.id, SubscriptionEventKind.STOPPED),
    ]
    [binding] = next(
        frame["payload"]["config"]["postgres_changes"]
        for frame in local_doubles.realtime.frames("phx_join")
        if frame["topic"] == f"realtime:subscriptions-row:{provider.id}"
    )
    assert binding == {
        "event": "INSERT",
        "schema": "public",
        "table": "subscription_events",
        "filter": f"provider_id=eq.{provider.id}",
    }


def test_an_event_committed_while_the_follower_was_disconnected_is_read_when_it_rejoins(
    local_doubles: Doubles, account: MakeAccount
) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=HOUR)
    topic = f"subscriptions:{provider.id}"
    follower = woken_follower(provider)
    try:
        started = buyer.client.subscriptions.start(product.id)
        assert next_within(follower).subscription_id == started.id
        joined = len(local_doubles.realtime.join_times(topic, 1, WAIT))
        local_doubles.realtime.drop_connections()
        buyer.client.subscriptions.stop(started.id)  # its broadcast finds no one, or the rejoined channel
        assert next_within(follower).event is SubscriptionEventKind.STOPPED
        local_doubles.realtime.join_times(topic, joined + 1, WAIT)
    finally:
        follower.close()


def test_a_follower_polls_while_realtime_refuses_it(
    target: Target, local_doubles: Doubles, account: MakeAccount
) -> None:
    """Joins refused for a reason that may pass are retried, and meanwhile it reads every
    `poll_seconds` (the slow `resync_seconds` is for a joined channel)."""
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=HOUR)
    refusals = [JoinScript(refuse=RESTARTING)] * 1000
    local_doubles.realtime.script_joins(f"subscriptions:{provider.id}", *refusals)
    reads = CountedReads()
    subscriptions = signed_in(target, provider.email, reads).subscriptions
    follower = subscriptions.follow(provider_id=provider.id, poll_seconds=0.05, resync_seconds=NEVER)
    try:
        started = taking(follower)
        reads.wait_for(2)  # where now is, and the first read: the event comes after them
        running = buyer.client.subscriptions.start(product.id)
        assert started().subscription_id == running.id
    finally:
        follower.close()
    buyer.client.subscriptions.stop(running.id)


def test_a_follower_without_realtime_polls(local_doubles: Doubles, account: MakeAccount) -> None:
    provider, buyer = account(role=RoleName.FARMER), account(funded=10)
    product = listed(provider, "1", unit=HOUR)
    follower = provider.client.subscriptions.follow(
        provider_id=provider.id, realtime=False, poll_seconds=0.05
    )
    started = buyer.client.subscriptions.start(product.id)
    assert next_within(follower).subscription_id == started.id
    follower.close()
    assert not [f for f in local_doubles.realtime.frames("phx_join") if str(provider.id) in f["topic"]]
    buyer.client.subscriptions.stop(started.id)
