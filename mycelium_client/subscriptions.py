"""`client.subscriptions`: products that run until stopped, paid while they run. A buyer starts an
`hour` or `month` product (its first period is held from their balance at once) and stops it
(the running period is charged by the started hour, the rest given back); the service's batch
(`admin.charge_due_subscriptions`, run by `mycelium upkeep`) pays each period when it ends and
holds the next, or moves an unpaid subscription to grace, suspension and cancellation. Providers
report metered usage, and follow the events of their subscriptions to start and stop workloads
(read over REST, and woken by Realtime: see `EventCursor` and `EventSignals`).

Starting, stopping and reporting usage are retried safely on network errors: starting and
reporting carry idempotency keys; stopping a stopped subscription returns it and moves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import TypeAlias

from mycelium_client._http import (
    OBJECT,
    AsyncTransport,
    Call,
    SyncTransport,
    async_pages,
    newest_first_after,
    pages,
    rows,
    rpc,
)
from mycelium_client._identity import Identity, Project
from mycelium_client._realtime import EventSignals, LoopThread, WatchSettings
from mycelium_client.amounts import AmountLike, amount
from mycelium_client.credits import UserRef, new_idempotency_key
from mycelium_client.errors import InvalidArgument, NotFound
from mycelium_client.models import (
    LowBalanceWarning,
    Subscription,
    SubscriptionConfig,
    SubscriptionEvent,
    SubscriptionPeriod,
    SubscriptionStatus,
    SubscriptionUsage,
)

SubscriptionRef = uuid.UUID | str
DEFAULT_PAGE_SIZE = 100
# How often `follow` reads new events without Realtime, and with it (besides a read on each
# event's signal: in case Realtime lost one), and how long it waits for an event id it has not
# seen while later ones are visible (see EventCursor) before taking it for a rolled back one.
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_RESYNC_SECONDS = 60.0
DEFAULT_GAP_SECONDS = 60.0

# The namespaces define a method `list`: their annotations name these instead of `list[...]`.
Periods: TypeAlias = list[SubscriptionPeriod]
UsageReports: TypeAlias = list[SubscriptionUsage]
Warnings: TypeAlias = list[LowBalanceWarning]


# -- requests, shared by both namespaces --------------------------------------------------------
def start_call(product_id: UserRef, quantity: int, idempotency_key: str | None) -> Call[Subscription]:
    # The key makes starting idempotent (the SQL replays the subscription for the same key,
    # product and quantity), so it is safe to retry with the same body.
    return rpc(
        "start_subscription",
        Subscription.model_validate,
        safe=True,
        product_id=str(product_id),
        quantity=quantity,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def stop_call(subscription_id: SubscriptionRef) -> Call[Subscription]:
    # Stopping a stopped subscription returns it and moves nothing: safe to retry.
    return rpc(
        "stop_subscription", Subscription.model_validate, safe=True, subscription_id=str(subscription_id)
    )


def get_call(subscription_id: SubscriptionRef) -> Call[Subscription]:
    params = {"select": "*", "id": f"eq.{subscription_id}"}

    def one(found: list[object]) -> Subscription:
        # As the subscription functions say it of one the caller may not see, or that is not.
        if not found:
            raise NotFound(f"no subscription {subscription_id}", reason="subscription_not_found", status=404)
        return Subscription.model_validate(found[0])

    return Call("GET", "/subscriptions", one, params)


def _in(values: Iterable[str]) -> str:
    return "in.(" + ",".join(values) + ")"


def subscription_pages(
    buyer_id: UserRef | None,
    provider_id: UserRef | None,
    product_id: UserRef | None,
    statuses: Iterable[SubscriptionStatus | str] | None,
    page_size: int,
) -> Callable[[Subscription | None], Call[list[Subscription]]]:
    """The call for each page, newest first, after the last subscription of the previous page."""
    params = {"select": "*", "order": "created_at.desc,id.desc", "limit": str(page_size)}
    for column, value in (("buyer_id", buyer_id), ("provider_id", provider_id), ("product_id", product_id)):
        if value is not None:
            params[column] = f"eq.{value}"
    if statuses is not None:
        params["status"] = _in(SubscriptionStatus(status).value for status in statuses)

    def page_call(after: Subscription | None) -> Call[list[Subscription]]:
        keyset = {} if after is None else newest_first_after(after.created_at, after.id)
        return Call("GET", "/subscriptions", rows(Subscription), params | keyset)

    return page_call


def periods_call(subscription_id: SubscriptionRef) -> Call[list[SubscriptionPeriod]]:
    params = {"select": "*", "subscription_id": f"eq.{subscription_id}", "order": "seq"}
    return Call("GET", "/subscription_periods", rows(SubscriptionPeriod), params)


def report_usage_call(
    subscription_id: SubscriptionRef, unit: str, quantity: AmountLike, idempotency_key: str | None
) -> Call[SubscriptionUsage]:
    # The key makes the report idempotent per subscription: safe to retry with the same body.
    return rpc(
        "report_usage",
        SubscriptionUsage.model_validate,
        safe=True,
        subscription_id=str(subscription_id),
        unit=unit,
        quantity=amount(quantity, "quantity"),
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def usage_call(subscription_id: SubscriptionRef, uncharged: bool) -> Call[list[SubscriptionUsage]]:
    params = {"select": "*", "subscription_id": f"eq.{subscription_id}", "order": "reported_at,id"}
    if uncharged:
        params["charge_id"] = "is.null"
    return Call("GET", "/subscription_usage", rows(SubscriptionUsage), params)


def event_filters(
    subscription_id: SubscriptionRef | None, buyer_id: UserRef | None, provider_id: UserRef | None
) -> dict[str, str]:
    filters = {}
    for column, value in (
        ("subscription_id", subscription_id),
        ("buyer_id", buyer_id),
        ("provider_id", provider_id),
    ):
        if value is not None:
            filters[column] = f"eq.{value}"
    return filters


def events_after_call(filters: dict[str, str], after: int, page_size: int) -> Call[list[SubscriptionEvent]]:
    """Events with an id above `after`, oldest first."""
    params = {"select": "*", **filters, "id": f"gt.{after}", "order": "id", "limit": str(page_size)}
    return Call("GET", "/subscription_events", rows(SubscriptionEvent), params)


def last_event_call(filters: dict[str, str]) -> Call[int]:
    """The id of the last event visible (0: none yet): where following from now starts."""
    params = {"select": "id", **filters, "order": "id.desc", "limit": "1"}
    return Call("GET", "/subscription_events", lambda found: int(found[0]["id"]) if found else 0, params)


def warnings_call(user: uuid.UUID) -> Call[list[LowBalanceWarning]]:
    params = {"select": "*", "user_id": f"eq.{user}", "order": "at.desc,id.desc"}
    return Call("GET", "/low_balance_warnings", rows(LowBalanceWarning), params)


def config_call() -> Call[SubscriptionConfig]:
    return Call(
        "GET", "/subscription_config", SubscriptionConfig.model_validate, {"select": "*"}, accept=OBJECT
    )


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise InvalidArgument(f"{name} must be more than 0 seconds, not {value!r}", reason="invalid_argument")
    return value


class EventCursor:
    """Where a follower of subscription events is: every event it delivered, once, in id order as
    far as it can tell.

    Event ids come from a sequence, given out when an event is written but visible only when its
    transaction commits: a batch that wrote event 7 may commit after a stop wrote and committed
    event 8. Reading `id > last delivered` would skip 7 for good, and a provider would never stop
    a workload its buyer stopped paying for. So the cursor reads from `low`, below which every id
    was delivered or given up, delivers what it has not delivered yet, and gives up an id only
    when later ones have been visible for `gap_seconds` (a transaction rolled back, or a row the
    caller may not see: ids are shared by every subscription). These reads are the Postgres feed,
    and the only source of the events delivered; Realtime (`EventSignals`) only says when to read."""

    def __init__(
        self, filters: dict[str, str], after: int, page_size: int, gap_seconds: float, poll_seconds: float
    ) -> None:
        self.filters, self.low, self.page_size = filters, after, page_size
        self.gap_seconds = _positive(gap_seconds, "gap_seconds")
        self.poll_seconds = _positive(poll_seconds, "poll_seconds")
        self._delivered: set[int] = set()  # ids above low
        self._missing_since: dict[int, float] = {}  # ids above low not seen yet, since when

    def page_call(self, last: SubscriptionEvent | None) -> Call[list[SubscriptionEvent]]:
        """A page of one read: from `low`, then after the last event of the previous page."""
        return events_after_call(self.filters, self.low if last is None else last.id, self.page_size)

    def take(self, event: SubscriptionEvent, now: float) -> bool:
        """Whether to deliver `event` (read at `now`): it was not delivered yet."""
        fresh = event.id > self.low and event.id not in self._delivered
        if fresh:
            self._delivered.add(event.id)
            self._missing_since.pop(event.id, None)
            for missing in range(self.low + 1, event.id):
                if missing not in self._delivered:
                    self._missing_since.setdefault(missing, now)
        self._advance(now)
        return fresh

    def _advance(self, now: float) -> None:
        """Move `low` past the ids delivered, and those missing for `gap_seconds`."""
        while True:
            following = self.low + 1
            if following in self._delivered:
                self._delivered.remove(following)
            elif (
                following in self._missing_since and now - self._missing_since[following] >= self.gap_seconds
            ):
                del self._missing_since[following]
            else:
                return
            self.low = following


class FollowSchedule:
    """When a follower reads next (what both twins' `follow` share): at once after a signal from
    Realtime (an event, a (re)join); else after `resync_seconds` while Realtime is joined, or
    `poll_seconds` (the cursor's) while it is not (refused, reconnecting, or not asked for); and
    never after `idle_seconds` without an event, if given (one last read, then the end)."""

    def __init__(
        self,
        cursor: EventCursor,
        idle_seconds: float | None,
        resync_seconds: float,
        signals: EventSignals | None,
    ) -> None:
        self.cursor, self.idle_seconds, self.signals = cursor, idle_seconds, signals
        self.resync_seconds = resync_seconds  # checked by `follow`, before its first read
        self._quiet_since = time.monotonic()

    def take(self, event: SubscriptionEvent) -> bool:
        now = time.monotonic()
        fresh = self.cursor.take(event, now)
        if fresh:
            self._quiet_since = now
        return fresh

    def wait_seconds(self) -> float | None:
        """How long to wait for a signal before the next read; None: idle long enough, stop."""
        joined = self.signals is not None and self.signals.subscribed.is_set()
        wait = self.resync_seconds if joined else self.cursor.poll_seconds
        if self.idle_seconds is None:
            return wait
        left = self.idle_seconds - (time.monotonic() - self._quiet_since)
        return min(wait, left) if left > 0 else None


def event_signals(
    project: Project,
    identity: Identity,
    settings: WatchSettings,
    provider_id: UserRef | None,
    signal: Callable[[], None],
) -> EventSignals | None:
    """The Realtime channel that wakes a follower of `provider_id`'s events (a follower of
    everything it may see, or one that asked for no Realtime, has no topic: it polls)."""
    if provider_id is None:
        return None
    provider = provider_id if isinstance(provider_id, uuid.UUID) else uuid.UUID(str(provider_id))
    return EventSignals(project.websocket_url, provider, identity.bearer, settings, signal)


# -- the namespaces ----------------------------------------------------------------------------
class Subscriptions:
    def __init__(
        self, transport: SyncTransport, identity: Identity, project: Project, watch_settings: WatchSettings
    ) -> None:
        self._transport, self._identity = transport, identity
        self._project, self._watch_settings = project, watch_settings

    def start(
        self, product_id: UserRef, quantity: int = 1, idempotency_key: str | None = None
    ) -> Subscription:
        """Start an `hour` or `month` product, which runs until stopped; its first period is held
        from your balance at once (InsufficientCredits otherwise). Retried safely: the same
        idempotency key (yours, or one made up here) is sent every time."""
        return self._transport.send(start_call(product_id, quantity, idempotency_key))

    def stop(self, subscription_id: SubscriptionRef) -> Subscription:
        """As its buyer, its provider or the service: the running period is charged by the started
        hour (a monthly one prorated), the rest of its hold goes back to the buyer."""
        return self._transport.send(stop_call(subscription_id))

    def get(self, subscription_id: SubscriptionRef) -> Subscription:
        """One subscription you bought or provide (the service and admins: any)."""
        return self._transport.send(get_call(subscription_id))

    def list(
        self,
        *,
        buyer_id: UserRef | None = None,
        provider_id: UserRef | None = None,
        product_id: UserRef | None = None,
        statuses: Iterable[SubscriptionStatus | str] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[Subscription]:
        """The subscriptions you may see (those you bought and those of your products; the service
        and admins: all), narrowed by the filters given, newest first, fetched a keyset page at a
        time as you iterate."""
        page_call = subscription_pages(buyer_id, provider_id, product_id, statuses, page_size)
        return pages(lambda last: self._transport.send(page_call(last)), page_size)

    def periods(self, subscription_id: SubscriptionRef) -> Periods:
        """A subscription's periods, first to last."""
        return self._transport.send(periods_call(subscription_id))

    def report_usage(
        self,
        subscription_id: SubscriptionRef,
        unit: str,
        quantity: AmountLike,
        idempotency_key: str | None = None,
    ) -> SubscriptionUsage:
        """As the provider or the service: `quantity` of a metered `unit` used by a running
        subscription, priced now at the product's usage price for it and charged at the period's
        end, once per idempotency key (give one per measurement, so a retry is not counted twice)."""
        return self._transport.send(report_usage_call(subscription_id, unit, quantity, idempotency_key))

    def usage(self, subscription_id: SubscriptionRef, *, uncharged: bool = False) -> UsageReports:
        """A subscription's usage reports, oldest first (`uncharged`: only those not charged yet)."""
        return self._transport.send(usage_call(subscription_id, uncharged))

    def events(
        self,
        *,
        subscription_id: SubscriptionRef | None = None,
        buyer_id: UserRef | None = None,
        provider_id: UserRef | None = None,
        after: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[SubscriptionEvent]:
        """The events you may see (of subscriptions you bought or provide; the service: all),
        narrowed by the filters given, oldest first from the first id after `after`, fetched a
        page at a time as you iterate."""
        filters = event_filters(subscription_id, buyer_id, provider_id)

        def page(last: SubscriptionEvent | None) -> list[SubscriptionEvent]:
            return self._transport.send(
                events_after_call(filters, after if last is None else last.id, page_size)
            )

        return pages(page, page_size)

    def follow(
        self,
        *,
        provider_id: UserRef | None = None,
        after: int | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        idle_seconds: float | None = None,
        gap_seconds: float = DEFAULT_GAP_SECONDS,
        page_size: int = DEFAULT_PAGE_SIZE,
        realtime: bool = True,
        resync_seconds: float = DEFAULT_RESYNC_SECONDS,
    ) -> Generator[SubscriptionEvent, None, None]:
        """New events as they are committed, for a provider's service (`provider_id`: those of
        its subscriptions; else all you may see): from now on, or after the event id `after`
        (keep the id of the last event you handled, and resume after it). Read over REST when
        Realtime signals an event on the provider's topic (`realtime`, with `provider_id`; the
        channel runs in a background thread while you iterate), every `resync_seconds` while it is
        joined, and every `poll_seconds` while it is not. Ends after `idle_seconds` without an
        event, if given; see `EventCursor` for the order, `FollowSchedule` for the reads. `close()`
        it when done (or let it end), which stops the channel."""
        filters = event_filters(None, None, provider_id)
        cursor = EventCursor(filters, after or 0, page_size, gap_seconds, poll_seconds)
        _positive(resync_seconds, "resync_seconds")
        if after is None:
            cursor.low = self._transport.send(last_event_call(filters))
        return self._followed(cursor, idle_seconds, resync_seconds, provider_id if realtime else None)

    def _followed(
        self,
        cursor: EventCursor,
        idle_seconds: float | None,
        resync_seconds: float,
        provider_id: UserRef | None,
    ) -> Generator[SubscriptionEvent, None, None]:
        wake = threading.Event()
        signals = event_signals(self._project, self._identity, self._watch_settings, provider_id, wake.set)
        schedule = FollowSchedule(cursor, idle_seconds, resync_seconds, signals)
        thread = LoopThread("mycelium-subscription-events")
        if signals is not None:
            thread.start(signals.run())
        try:
            while True:
                wake.clear()  # a signal during the read: read again
                for event in pages(
                    lambda last: self._transport.send(cursor.page_call(last)), cursor.page_size
                ):
                    if schedule.take(event):
                        yield event
                if (wait := schedule.wait_seconds()) is None:
                    return
                wake.wait(wait)
        finally:
            thread.stop()

    def low_balance_warnings(self, user_id: UserRef | None = None) -> Warnings:
        """Your warnings that your balance will soon no longer pay for your running subscriptions,
        newest first (the service and admins: `user_id`'s)."""
        return self._transport.send(warnings_call(self._identity.user_or(user_id)))

    def config(self) -> SubscriptionConfig:
        """The grace and suspension periods and the low-balance threshold (admins change them
        with `admin.set_subscription_config`)."""
        return self._transport.send(config_call())


class AsyncSubscriptions:
    """The async twin of `Subscriptions`: the same methods, awaited (`list`, `events` and `follow`
    iterated with `async for`)."""

    def __init__(
        self, transport: AsyncTransport, identity: Identity, project: Project, watch_settings: WatchSettings
    ) -> None:
        self._transport, self._identity = transport, identity
        self._project, self._watch_settings = project, watch_settings

    async def start(
        self, product_id: UserRef, quantity: int = 1, idempotency_key: str | None = None
    ) -> Subscription:
        return await self._transport.send(start_call(product_id, quantity, idempotency_key))

    async def stop(self, subscription_id: SubscriptionRef) -> Subscription:
        return await self._transport.send(stop_call(subscription_id))

    async def get(self, subscription_id: SubscriptionRef) -> Subscription:
        return await self._transport.send(get_call(subscription_id))

    def list(
        self,
        *,
        buyer_id: UserRef | None = None,
        provider_id: UserRef | None = None,
        product_id: UserRef | None = None,
        statuses: Iterable[SubscriptionStatus | str] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Subscription]:
        page_call = subscription_pages(buyer_id, provider_id, product_id, statuses, page_size)
        return async_pages(lambda last: self._transport.send(page_call(last)), page_size)

    async def periods(self, subscription_id: SubscriptionRef) -> Periods:
        return await self._transport.send(periods_call(subscription_id))

    async def report_usage(
        self,
        subscription_id: SubscriptionRef,
        unit: str,
        quantity: AmountLike,
        idempotency_key: str | None = None,
    ) -> SubscriptionUsage:
        return await self._transport.send(report_usage_call(subscription_id, unit, quantity, idempotency_key))

    async def usage(self, subscription_id: SubscriptionRef, *, uncharged: bool = False) -> UsageReports:
        return await self._transport.send(usage_call(subscription_id, uncharged))

    def events(
        self,
        *,
        subscription_id: SubscriptionRef | None = None,
        buyer_id: UserRef | None = None,
        provider_id: UserRef | None = None,
        after: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[SubscriptionEvent]:
        filters = event_filters(subscription_id, buyer_id, provider_id)

        async def page(last: SubscriptionEvent | None) -> list[SubscriptionEvent]:
            return await self._transport.send(
                events_after_call(filters, after if last is None else last.id, page_size)
            )

        return async_pages(page, page_size)

    async def follow(
        self,
        *,
        provider_id: UserRef | None = None,
        after: int | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        idle_seconds: float | None = None,
        gap_seconds: float = DEFAULT_GAP_SECONDS,
        page_size: int = DEFAULT_PAGE_SIZE,
        realtime: bool = True,
        resync_seconds: float = DEFAULT_RESYNC_SECONDS,
    ) -> AsyncGenerator[SubscriptionEvent, None]:
        """`async for event in await subscriptions.follow(provider_id=...)`: awaited, it has read
        where now is, so an event committed after it returns is delivered. The Realtime channel
        runs as a task on your event loop while you iterate."""
        filters = event_filters(None, None, provider_id)
        cursor = EventCursor(filters, after or 0, page_size, gap_seconds, poll_seconds)
        _positive(resync_seconds, "resync_seconds")
        if after is None:
            cursor.low = await self._transport.send(last_event_call(filters))
        return self._followed(cursor, idle_seconds, resync_seconds, provider_id if realtime else None)

    async def _followed(
        self,
        cursor: EventCursor,
        idle_seconds: float | None,
        resync_seconds: float,
        provider_id: UserRef | None,
    ) -> AsyncGenerator[SubscriptionEvent, None]:
        wake = asyncio.Event()
        signals = event_signals(self._project, self._identity, self._watch_settings, provider_id, wake.set)
        schedule = FollowSchedule(cursor, idle_seconds, resync_seconds, signals)
        task = None if signals is None else asyncio.create_task(signals.run())
        try:
            while True:
                wake.clear()  # a signal during the read: read again
                read = async_pages(
                    lambda last: self._transport.send(cursor.page_call(last)), cursor.page_size
                )
                async for event in read:
                    if schedule.take(event):
                        yield event
                if (wait := schedule.wait_seconds()) is None:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
        finally:
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
                if not task.cancelled():
                    task.exception()  # retrieved: it ended only the signals, and the reads went on

    async def low_balance_warnings(self, user_id: UserRef | None = None) -> Warnings:
        return await self._transport.send(warnings_call(self._identity.user_or(user_id)))

    async def config(self) -> SubscriptionConfig:
        return await self._transport.send(config_call())


__all__ = ["AsyncSubscriptions", "EventCursor", "SubscriptionRef", "Subscriptions"]
