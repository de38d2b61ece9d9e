"""Balance changes over Supabase Realtime: a Phoenix channel (protocol vsn 1.0.0) on a websocket.

Why not realtime-py's channel: it parses frames with pydantic into floats, and amounts must never
pass through float. This speaks the same protocol (see realtime-py and Supabase's docs): join the
private Broadcast topic `balance:<user_id>`; when the project's RLS policy on `realtime.messages`
refuses it, fall back to Postgres Changes on the user's `credit_accounts` row. Anything else that
goes wrong (a refused token, a refusal the server may not repeat, a dropped connection, a closed
channel, REST unavailable or refusing the token for the balance read) is retried with backoff,
in the same mode; every join carries the access token of the moment (the client follows its
session as it is refreshed), and a refreshed token is pushed to the joined channel. Heartbeats
detect a dead connection. After each (re)join the balance is read once over REST, so a change
made while disconnected is still delivered. (Changes committed while that read is under way may
arrive just after it; the last change delivered is always the latest.) The user's low-balance
warnings (rows of low_balance_warnings: the private topic's event `low_balance`, or their INSERTs
through Postgres Changes) go to their own receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
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


class BalanceChannel:
    """One user's balance changes, from Realtime to `emit`, until cancelled."""

    def __init__(
        self,
        websocket_url: str,
        user_id: uuid.UUID,
        token: Callable[[], str],
        resync: Callable[[], Awaitable[Balance]],
        settings: WatchSettings,
    ) -> None:
        self.websocket_url = websocket_url
        self.user_id = user_id
        self.token = token
        self.resync = resync
        self.settings = settings
        self.subscribed = asyncio.Event()
        self.mode: BalanceSource | None = None  # BROADCAST, or POSTGRES_CHANGES after a refusal
        self.last_failure: BaseException | None = None  # why it is not subscribed, while retrying
        self.joins = 0  # how often it subscribed (in either mode)
        self._refs = itertools.count(1)
        self._last: tuple[object, ...] | None = None
        self._balance_ids: set[int] = set()  # the server's ids of the Postgres Changes bindings
        self._warning_ids: set[int] = set()
        self._sent_token = ""
        self._heartbeat_answered = True
        self._proven = False  # the channel answered a heartbeat: a later failure is a fresh one

    @property
    def topic(self) -> str:
        prefix = "balance" if self.mode is BalanceSource.BROADCAST else "balance-row"
        return f"realtime:{prefix}:{self.user_id}"

    async def run(self, emit: Emit, warn: Warn | None = None) -> None:
        """Deliver changes (and low-balance warnings to `warn`) until cancelled; raises
        NotAuthorized if both ways are refused."""
        failures = 0
        self.mode = BalanceSource.BROADCAST
        while True:
            self._proven = False
            try:
                async with websockets.connect(
                    self.websocket_url, open_timeout=self.settings.join_timeout_seconds
                ) as socket:
                    await self._join(socket)
                    await self._deliver(emit, await self._resynced())
                    self._joined()
                    self.last_failure = None
                    self.subscribed.set()
                    await self._listen(socket, emit, warn)
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

    async def _resynced(self) -> BalanceChange:
        """The balance over REST. PostgREST unavailable, or refusing a token that expired (the
        session's refresh brings the next one), is retried like a dropped connection; it says
        nothing about Realtime, so the mode stays."""
        try:
            return self._from_balance(await self.resync())
        except ServiceUnavailable as error:
            raise _Retry(f"reading the balance: {error}") from error
        except NotAuthorized as error:
            if error.status != 401:
                raise
            raise _Retry(f"reading the balance: {error}") from error

    # -- the protocol -----------------------------------------------------------------------
    def _frame(self, topic: str, event: str, payload: dict[str, Any], ref: str | None) -> str:
        return json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": ref})

    def _join_payload(self, token: str) -> dict[str, Any]:
        private = self.mode is BalanceSource.BROADCAST
        # The account's row, and the user's low-balance warnings: two bindings, in this order.
        bindings = (
            []
            if private
            else [
                {
                    "event": event,
                    "schema": "public",
                    "table": table,
                    "filter": f"user_id=eq.{self.user_id}",
                }
                for event, table in (("UPDATE", "credit_accounts"), ("INSERT", "low_balance_warnings"))
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
        granted = self._granted_ids(
            self._join_payload(token)["config"]["postgres_changes"], response.get("postgres_changes") or []
        )
        self._balance_ids, self._warning_ids = set(granted[:1]), set(granted[1:])

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

    async def _listen(self, socket: ClientConnection, emit: Emit, warn: Warn | None) -> None:
        """Until the connection ends (returns) or the server closes the channel (_Retry)."""
        heartbeat = asyncio.create_task(self._heartbeat(socket))
        try:
            async for raw in socket:
                message = self._message(loads(raw))
                if isinstance(message, BalanceChange):
                    await self._deliver(emit, message)
                elif message is not None and warn is not None:
                    await self._received(warn(message))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.WebSocketException):
                await heartbeat

    def _message(self, frame: dict[str, Any]) -> BalanceChange | LowBalanceWarning | None:
        event, topic, payload = frame.get("event"), frame.get("topic"), frame.get("payload") or {}
        if topic == "phoenix":
            self._heartbeat_answered = self._proven = True
            return None
        if topic != self.topic:
            return None
        if event in ("phx_close", "phx_error") or (event == "system" and payload.get("status") == "error"):
            raise _Retry(f"Realtime closed {self.topic}: {payload.get('message') or event}")
        # Each mode believes only its own kind of frame. A broadcast is proof of nothing on the
        # public topic of the Postgres Changes mode, where anyone holding the anon key may send one;
        # on the private topic only the database can (the RLS policy on realtime.messages).
        if self.mode is BalanceSource.BROADCAST:
            if event == "broadcast" and payload.get("event") == BALANCE_EVENT:
                return BalanceChange.model_validate({**payload["payload"], "source": BalanceSource.BROADCAST})
            if event == "broadcast" and payload.get("event") == LOW_BALANCE_EVENT:
                return LowBalanceWarning.model_validate(payload["payload"])
        elif event == "postgres_changes":
            ids, record = set(payload.get("ids") or []), (payload.get("data") or {}).get("record") or {}
            if ids & self._balance_ids:
                return BalanceChange.model_validate({**record, "source": BalanceSource.POSTGRES_CHANGES})
            if ids & self._warning_ids:
                return LowBalanceWarning.model_validate(record)
        return None

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

    # -- delivery ----------------------------------------------------------------------------
    def _from_balance(self, balance: Balance) -> BalanceChange:
        return BalanceChange(
            user_id=balance.user_id,
            balance=balance.balance,
            held=balance.held,
            updated_at=balance.updated_at,
            burn_rate=balance.burn_rate,
            runway_hours=balance.runway_hours,
            source=BalanceSource.RESYNC,
        )

    async def _deliver(self, emit: Emit, change: BalanceChange) -> None:
        # The resync after a rejoin often repeats what was delivered last: skip repeats. (A
        # subscription starting or stopping sends the account again with another burn rate.)
        key = (change.balance, change.held, change.updated_at, change.burn_rate, change.runway_hours)
        if key != self._last:
            self._last = key
            await self._received(emit(change))

    async def _received(self, delivery: Awaitable[None]) -> None:
        try:
            await delivery
        except Exception as error:
            raise _ReceiverFailed(error) from error
