"""Balance changes over Supabase Realtime: a Phoenix channel (protocol vsn 1.0.0) on a websocket.

Why not realtime-py's channel: it parses frames with pydantic into floats, and amounts must never
pass through float. This speaks the same protocol (see realtime-py and Supabase's docs): join the
private Broadcast topic `balance:<user_id>`; when the project refuses it, fall back to Postgres
Changes on the user's `credit_accounts` row. Heartbeats detect a dead connection; a dropped
connection or a closed channel is rejoined with backoff, with the freshest access token, and a
refreshed token is pushed to the joined channel. After each (re)join the balance is read once
over REST, so a change made while disconnected is still delivered. (Changes committed while that
read is under way may arrive just after it; the last change delivered is always the latest.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from mycelium_client.amounts import loads
from mycelium_client.errors import MyceliumError, NotAuthorized
from mycelium_client.models import Balance, BalanceChange, BalanceSource

BALANCE_EVENT = "balance_changed"
Emit = Callable[[BalanceChange], Awaitable[None]]


class _Rejoin(Exception):
    """The server closed our channel (an expired token, a restart): join again."""


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
        self._refs = itertools.count(1)
        self._last: tuple[object, ...] | None = None
        self._binding_ids: set[int] = set()
        self._sent_token = ""
        self._heartbeat_answered = True

    @property
    def topic(self) -> str:
        prefix = "balance" if self.mode is BalanceSource.BROADCAST else "balance-row"
        return f"realtime:{prefix}:{self.user_id}"

    async def run(self, emit: Emit) -> None:
        """Deliver changes until cancelled; raises NotAuthorized if both ways are refused."""
        failures = 0
        self.mode = BalanceSource.BROADCAST
        while True:
            try:
                async with websockets.connect(
                    self.websocket_url, open_timeout=self.settings.join_timeout_seconds
                ) as socket:
                    await self._join(socket)
                    failures = 0
                    await self._deliver(emit, self._from_balance(await self.resync()))
                    self.subscribed.set()
                    await self._listen(socket, emit)
                failures += 1  # the server ended the connection
            except _Rejoin:
                continue
            except NotAuthorized:
                if self.mode is BalanceSource.BROADCAST:
                    self.mode = BalanceSource.POSTGRES_CHANGES
                    continue
                raise
            except (OSError, TimeoutError, websockets.WebSocketException):
                failures += 1
            self.subscribed.clear()
            await asyncio.sleep(min(0.1 * 2**failures, self.settings.max_backoff_seconds))

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
                    "event": "UPDATE",
                    "schema": "public",
                    "table": "credit_accounts",
                    "filter": f"user_id=eq.{self.user_id}",
                }
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
        if reply.get("status") != "ok":
            reason = (reply.get("response") or {}).get("reason", "join refused")
            raise NotAuthorized(f"Realtime refused {self.topic}: {reason}", reason="realtime_join_refused")
        self._sent_token = token
        wanted = self._join_payload(token)["config"]["postgres_changes"]
        granted = (reply.get("response") or {}).get("postgres_changes") or []
        if len(granted) != len(wanted):
            raise MyceliumError("Realtime answered a different set of bindings", reason="realtime_bindings")
        self._binding_ids = {int(binding["id"]) for binding in granted}

    async def _listen(self, socket: ClientConnection, emit: Emit) -> None:
        """Until the connection ends (returns) or the server closes the channel (_Rejoin)."""
        heartbeat = asyncio.create_task(self._heartbeat(socket))
        try:
            async for raw in socket:
                change = self._change(loads(raw))
                if change is not None:
                    await self._deliver(emit, change)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.WebSocketException):
                await heartbeat

    def _change(self, frame: dict[str, Any]) -> BalanceChange | None:
        event, topic, payload = frame.get("event"), frame.get("topic"), frame.get("payload") or {}
        if topic == "phoenix":
            self._heartbeat_answered = True
            return None
        if topic != self.topic:
            return None
        if event in ("phx_close", "phx_error") or (event == "system" and payload.get("status") == "error"):
            raise _Rejoin
        if event == "broadcast" and payload.get("event") == BALANCE_EVENT:
            return BalanceChange.model_validate({**payload["payload"], "source": BalanceSource.BROADCAST})
        if event == "postgres_changes" and self._binding_ids.intersection(payload.get("ids") or []):
            record = (payload.get("data") or {}).get("record") or {}
            return BalanceChange.model_validate({**record, "source": BalanceSource.POSTGRES_CHANGES})
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
            source=BalanceSource.RESYNC,
        )

    async def _deliver(self, emit: Emit, change: BalanceChange) -> None:
        # The resync after a rejoin often repeats what was delivered last: skip repeats.
        key = (change.balance, change.held, change.updated_at)
        if key != self._last:
            self._last = key
            await emit(change)
