"""Supabase Realtime channels: a Phoenix channel (protocol vsn 1.0.0) on a websocket, for the balance
watch and for the follower of subscription events.

Why not realtime-py's channel: it parses frames with pydantic into floats, and amounts must never
pass through float. This speaks the same protocol (see realtime-py and Supabase's docs).
`RealtimeChannel` joins a private Broadcast topic (`balance:<user_id>`, `subscriptions:<provider
id>`); when the project's RLS policy on `realtime.messages` refuses it, it falls back to Postgres
Changes on a public topic, for the rows RLS lets the user read. Anything else that goes wrong (a
refused token, a refusal the server may not repeat, a dropped connection, a closed channel, REST
unavailable or refusing the token for the read after a join) is retried with backoff, in the same
mode; every join carries the access token of the moment (the client follows its session as it is
refreshed), and a refreshed token is pushed to the joined channel. Heartbeats detect a dead
connection. After each (re)join the channel reads over REST what it follows, so what changed
while it was disconnected is not missed.

`BalanceChannel`: the user's balance, read once after each (re)join, and its changes. (Changes
committed while that read is under way may arrive just after it; the last change delivered is
always the latest.) In the Postgres Changes mode a change is the user's `credit_accounts` row,
which has no burn rate or runway: each is followed by a read of the balance, and what is delivered
is the account as read then (changes close together may arrive as one). A burn rate that changes
while the account does not (a suspension moves no credits) reaches this mode with the account's
next change. The user's low-balance
warnings (rows of low_balance_warnings: the private topic's event `low_balance`, or their INSERTs
through Postgres Changes) go to their own receiver.

`EventSignals`: a provider's subscription events (`subscription_event` broadcasts, or the
INSERTs of their `subscription_events` rows), each only a signal to read the events over REST
now; so is every (re)join (see `client.subscriptions.follow`).

`LoopThread` runs a channel for the sync twins, on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from mycelium_client._observe import event, log
from mycelium_client.amounts import loads
from mycelium_client.errors import MyceliumError, NotAuthorized, ServiceUnavailable
from mycelium_client.models import Balance, BalanceChange, BalanceSource, LowBalanceWarning

BALANCE_EVENT = "balance_changed"
LOW_BALANCE_EVENT = "low_balance"
SUBSCRIPTION_EVENT = "subscription_event"
Emit = Callable[[BalanceChange], Awaitable[None]]
Warn = Callable[[LowBalanceWarning], Awaitable[None]]


# How Realtime words the refusal of a private topic by the RLS policy on `realtime.messages`
# ("Unauthorized: You do not have permissions to read from this Channel topic: balance:...").
_POLICY_REFUSAL = "You do not have permissions to read from this Channel topic"
_BINDING_FIELDS = ("event", "schema", "table", "filter")


class _Retry(Exception):
    """A failure that may pass (the message says which): join again after the backoff."""


class _PolicyRefusal(Exception):
    """The project's policy does not let this user join the topic."""


class _ReceiverFailed(Exception):
    """Who receives the changes raised `error`: the watch ends with it, whatever its type (an
    OSError from a callback is not a dropped connection, to be retried)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class WatchSettings:
    heartbeat_seconds: float = 25.0
    join_timeout_seconds: float = 10.0
    max_backoff_seconds: float = 10.0


@dataclass(frozen=True)
class Binding:
    """A Postgres Changes binding of the fallback: `event`s of `table` whose `column` is the
    channel's id."""

    event: str
    table: str
    column: str


class RealtimeChannel:
    """One topic followed over Realtime, until cancelled. A subclass names the topic
    (`topic_name`: `<name>:<id>` when private, `<name>-row:<id>` for Postgres Changes), the
    bindings of the fallback, what it does after each (re)join, and what its frames mean."""

    topic_name = ""
    bindings: tuple[Binding, ...] = ()

    def __init__(
        self, websocket_url: str, key: uuid.UUID, token: Callable[[], str], settings: WatchSettings
    ) -> None:
        self.websocket_url = websocket_url
        self.key = key
        self.token = token
        self.settings = settings
        self.subscribed = asyncio.Event()
        self.mode: BalanceSource | None = None  # BROADCAST, or POSTGRES_CHANGES after a refusal
        self.last_failure: BaseException | None = None  # why it is not subscribed, while retrying
        self.joins = 0  # how often it subscribed (in either mode)
        self._refs = itertools.count(1)
        self._granted: list[int] = []  # the server's ids of the Postgres Changes bindings, in order
        self._sent_token = ""
        self._heartbeat_answered = True
        self._proven = False  # the channel answered a heartbeat: a later failure is a fresh one

    @property
    def topic(self) -> str:
        suffix = "" if self.mode is BalanceSource.BROADCAST else "-row"
        return f"realtime:{self.topic_name}{suffix}:{self.key}"

    # -- what a subclass says ----------------------------------------------------------------
    async def _synced(self) -> None:
        """After each (re)join: read what may have changed meanwhile."""

    async def _broadcast(self, name: str, payload: dict[str, Any]) -> None:
        """A broadcast `name` on the private topic (only the database sends there)."""

    async def _changed(self, binding: int, record: dict[str, Any]) -> None:
        """A row of `bindings[binding]`, through Postgres Changes."""

    # -- the loop ----------------------------------------------------------------------------
    async def _follow(self) -> None:
        """Follow the topic until cancelled; raises NotAuthorized if both ways are refused."""
        failures = 0
        self.mode = BalanceSource.BROADCAST
        while True:
            self._proven = False
            try:
                async with websockets.connect(
                    self.websocket_url, open_timeout=self.settings.join_timeout_seconds
                ) as socket:
                    await self._join(socket)
                    await self._synced()
                    self._joined()
                    self.last_failure = None
                    self.subscribed.set()
                    await self._listen(socket)
            except _ReceiverFailed as failed:
                raise failed.error from None
            except _PolicyRefusal as refusal:
                if self.mode is BalanceSource.BROADCAST:
                    self._falling_back()
                    continue
                raise NotAuthorized(str(refusal), reason="realtime_join_refused") from None
            except (_Retry, OSError, TimeoutError, websockets.WebSocketException) as failure:
                self.last_failure = failure
            self.subscribed.clear()
            # Counted until the channel proves itself, so a server that keeps refusing or closing
            # it is asked less and less often, not in a loop (with a REST read each time).
            failures = 1 if self._proven else failures + 1
            delay = min(0.1 * 2**failures, self.settings.max_backoff_seconds)
            self._retrying(delay)
            await asyncio.sleep(delay)

    # -- what the log tells (the topic names the user; no token, no payload) ------------------
    def _joined(self) -> None:
        assert self.mode is not None
        rejoin = self.joins > 0
        self.joins += 1
        what = "rejoined" if rejoin else "joined"
        event(
            log,
            logging.INFO,
            "realtime_joined",
            f"Realtime {what} {self.topic}",
            topic=self.topic,
            mode=self.mode.value,
            rejoin=rejoin,
        )

    def _falling_back(self) -> None:
        refused = self.topic
        self.mode = BalanceSource.POSTGRES_CHANGES
        event(
            log,
            logging.INFO,
            "realtime_fallback",
            f"Realtime refused {refused} by policy: following {self.topic} through Postgres Changes",
            topic=self.topic,
            refused_topic=refused,
        )

    def _retrying(self, delay: float) -> None:
        failure = self.last_failure
        # Our own messages say what failed; a library's error is told by its type only.
        cause = str(failure) if isinstance(failure, _Retry) else type(failure).__name__
        event(
            log,
            logging.INFO,
            "realtime_retry",
            f"Realtime {self.topic}: join again in {delay * 1000:.0f} ms after {cause}",
            topic=self.topic,
            delay_ms=round(delay * 1000, 1),
            cause=cause,
        )

    # -- the protocol -----------------------------------------------------------------------
    def _frame(self, topic: str, event: str, payload: dict[str, Any], ref: str | None) -> str:
        return json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": ref})

    def _join_payload(self, token: str) -> dict[str, Any]:
        private = self.mode is BalanceSource.BROADCAST
        bindings = (
            []
            if private
            else [
                {
                    "event": binding.event,
                    "schema": "public",
                    "table": binding.table,
                    "filter": f"{binding.column}=eq.{self.key}",
                }
                for binding in self.bindings
            ]
        )
        return {
            "config": {
                "broadcast": {"ack": False, "self": False},
                "presence": {"key": "", "enabled": False},
                "private": private,
                "postgres_changes": bindings,
            },
            "access_token": token,
        }

    async def _join(self, socket: ClientConnection) -> None:
        ref = str(next(self._refs))
        token = self.token()
        await socket.send(self._frame(self.topic, "phx_join", self._join_payload(token), ref))
        async with asyncio.timeout(self.settings.join_timeout_seconds):
            while True:
                frame = loads(await socket.recv())
                if frame.get("event") == "phx_reply" and frame.get("ref") == ref:
                    break
        reply = frame.get("payload") or {}
        response = reply.get("response") or {}
        if reply.get("status") != "ok":
            reason = str(response.get("reason", "join refused"))
            refusal = f"Realtime refused {self.topic}: {reason}"
            if _POLICY_REFUSAL in reason:
                raise _PolicyRefusal(refusal)
            raise _Retry(refusal)  # a token refused (the next join carries the current one), a restart...
        self._sent_token = token
        self._granted = self._granted_ids(
            self._join_payload(token)["config"]["postgres_changes"], response.get("postgres_changes") or []
        )

    def _granted_ids(self, wanted: list[dict[str, Any]], granted: list[dict[str, Any]]) -> list[int]:
        """The server's ids of our bindings, granted one for one, in order, as asked (as realtime-py
        and realtime-js match them); a subscription to anything else fails."""
        if len(granted) != len(wanted) or not all(
            isinstance(given.get("id"), int)
            and all(given.get(field) == asked.get(field) for field in _BINDING_FIELDS)
            for asked, given in zip(wanted, granted, strict=True)
        ):
            raise MyceliumError(
                f"Realtime granted {granted} for the bindings {wanted} of {self.topic}",
                reason="realtime_bindings",
            )
        return [int(given["id"]) for given in granted]

    async def _listen(self, socket: ClientConnection) -> None:
        """Until the connection ends (returns) or the server closes the channel (_Retry)."""
        heartbeat = asyncio.create_task(self._heartbeat(socket))
        try:
            async for raw in socket:
                await self._read(loads(raw))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.WebSocketException):
                await heartbeat

    async def _read(self, frame: dict[str, Any]) -> None:
        event, topic, payload = frame.get("event"), frame.get("topic"), frame.get("payload") or {}
        if topic == "phoenix":
            self._heartbeat_answered = self._proven = True
            return
        if topic != self.topic:
            return
        if event in ("phx_close", "phx_error") or (event == "system" and payload.get("status") == "error"):
            raise _Retry(f"Realtime closed {self.topic}: {payload.get('message') or event}")
        # Each mode believes only its own kind of frame. A broadcast is proof of nothing on the
        # public topic of the Postgres Changes mode, where anyone holding the anon key may send one;
        # on the private topic only the database can (the RLS policy on realtime.messages).
        if self.mode is BalanceSource.BROADCAST:
            if event == "broadcast":
                await self._broadcast(str(payload.get("event")), payload.get("payload") or {})
        elif event == "postgres_changes":
            ids, record = set(payload.get("ids") or []), (payload.get("data") or {}).get("record") or {}
            matched = [index for index, granted in enumerate(self._granted) if granted in ids]
            if matched:
                await self._changed(matched[0], record)

    async def _heartbeat(self, socket: ClientConnection) -> None:
        """Heartbeat; close a connection that stopped answering; push a refreshed token."""
        self._heartbeat_answered = True
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            if not self._heartbeat_answered:
                await socket.close(code=1001, reason="heartbeat timeout")
                return
            self._heartbeat_answered = False
            await socket.send(self._frame("phoenix", "heartbeat", {}, str(next(self._refs))))
            token = self.token()
            if token != self._sent_token:
                await socket.send(self._frame(self.topic, "access_token", {"access_token": token}, None))
                self._sent_token = token

    async def _received(self, delivery: Awaitable[None]) -> None:
        try:
            await delivery
        except Exception as error:
            raise _ReceiverFailed(error) from error


class BalanceChannel(RealtimeChannel):
    """One user's balance changes, from Realtime to `emit`, until cancelled."""

    topic_name = "balance"
    # The account's row, and the user's low-balance warnings: two bindings, in this order.
    bindings = (
        Binding("UPDATE", "credit_accounts", "user_id"),
        Binding("INSERT", "low_balance_warnings", "user_id"),
    )

    def __init__(
        self,
        websocket_url: str,
        user_id: uuid.UUID,
        token: Callable[[], str],
        resync: Callable[[], Awaitable[Balance]],
        settings: WatchSettings,
    ) -> None:
        super().__init__(websocket_url, user_id, token, settings)
        self.user_id = user_id
        self.resync = resync
        self._last: tuple[object, ...] | None = None
        self._emit: Emit | None = None
        self._warn: Warn | None = None

    async def run(self, emit: Emit, warn: Warn | None = None) -> None:
        """Deliver changes (and low-balance warnings to `warn`) until cancelled; raises
        NotAuthorized if both ways are refused."""
        self._emit, self._warn = emit, warn
        await self._follow()

    async def _synced(self) -> None:
        await self._deliver(await self._resynced(BalanceSource.RESYNC))

    async def _broadcast(self, name: str, payload: dict[str, Any]) -> None:
        if name == BALANCE_EVENT:
            await self._deliver(BalanceChange.model_validate({**payload, "source": BalanceSource.BROADCAST}))
        elif name == LOW_BALANCE_EVENT:
            await self._warned(LowBalanceWarning.model_validate(payload))

    async def _changed(self, binding: int, record: dict[str, Any]) -> None:
        if binding == 0:
            # The row has no burn rate or runway: the account read now has them, and is as recent
            # as this change or more (a later change's own row comes next, and repeats are skipped).
            await self._deliver(await self._resynced(BalanceSource.POSTGRES_CHANGES))
        else:
            await self._warned(LowBalanceWarning.model_validate(record))

    async def _resynced(self, source: BalanceSource) -> BalanceChange:
        """The balance over REST. PostgREST unavailable, or refusing a token that expired (the
        session's refresh brings the next one), is retried like a dropped connection; it says
        nothing about Realtime, so the mode stays."""
        try:
            return self._from_balance(await self.resync(), source)
        except ServiceUnavailable as error:
            raise _Retry(f"reading the balance: {error}") from error
        except NotAuthorized as error:
            if error.status != 401:
                raise
            raise _Retry(f"reading the balance: {error}") from error

    def _from_balance(self, balance: Balance, source: BalanceSource) -> BalanceChange:
        return BalanceChange(
            user_id=balance.user_id,
            balance=balance.balance,
            held=balance.held,
            updated_at=balance.updated_at,
            burn_rate=balance.burn_rate,
            runway_hours=balance.runway_hours,
            source=source,
        )

    async def _deliver(self, change: BalanceChange) -> None:
        # The resync after a rejoin often repeats what was delivered last: skip repeats. (A
        # subscription starting or stopping sends the account again with another burn rate.)
        key = (change.balance, change.held, change.updated_at, change.burn_rate, change.runway_hours)
        if key != self._last:
            self._last = key
            assert self._emit is not None
            await self._received(self._emit(change))

    async def _warned(self, warning: LowBalanceWarning) -> None:
        if self._warn is not None:
            await self._received(self._warn(warning))


class EventSignals(RealtimeChannel):
    """A provider's subscription events over Realtime, each only a call of `signal` (so is every
    (re)join): the follower then reads the events over REST, which stays their one source. Ids
    commit out of order and a broadcast sent while disconnected is lost: the reads see to both.
    And no frame, forged or not, becomes an event that no read confirms."""

    topic_name = "subscriptions"
    bindings = (Binding("INSERT", "subscription_events", "provider_id"),)

    def __init__(
        self,
        websocket_url: str,
        provider_id: uuid.UUID,
        token: Callable[[], str],
        settings: WatchSettings,
        signal: Callable[[], None],
    ) -> None:
        super().__init__(websocket_url, provider_id, token, settings)
        self.signal = signal

    async def run(self) -> None:
        await self._follow()

    async def _synced(self) -> None:
        self.signal()

    async def _broadcast(self, name: str, payload: dict[str, Any]) -> None:
        if name == SUBSCRIPTION_EVENT:
            self.signal()

    async def _changed(self, binding: int, record: dict[str, Any]) -> None:
        self.signal()


class LoopThread:
    """For the sync twins: a coroutine on an event loop of its own, in a daemon thread, cancelled
    from another. An error it ends with is kept in `error` (the thread does not print it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: Exception | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, main: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            self._running.set()
            try:
                await main
            except asyncio.CancelledError:
                pass
            except Exception as error:
                self.error = error

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel the coroutine (its tasks too, as asyncio.run ends) and wait for the thread."""
        if self._thread is None:
            return
        self._running.wait()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join()
