"""A Supabase Realtime double, fed by the real database, speaking Phoenix vsn 1.0.0 as
`shared/realtime-protocol.md` describes it (the contract realtime-py implements).

- Broadcast from the database: rows inserted into `realtime.messages` (by `realtime.send`) go to
  channels joined on `realtime:<topic>`. A private channel is joined only if the RLS `select`
  policy on `realtime.messages` lets the token's user read a message of that topic, checked as
  the real server does: as that user, with `realtime.topic` set, on a probe row rolled back.
- Postgres Changes: rows changed in the tables of publication `supabase_realtime`, for the
  bindings a channel asked for (event, schema, table, `col=eq.value` filter), only when the
  subscriber may `select` the row under RLS.
- Changes are captured by triggers the double installs in its own schema `realtime_double`
  (NOTIFY, so they arrive at commit, in commit order) and removes when it stops.
- Tokens: checked at join, replaced by `access_token` pushes; a channel whose token expires
  gets a `system` error and `phx_close`, as on the real server.
- Tests may script what the next joins of a topic meet (`script_joins`), for what a real server
  does in circumstances a test cannot bring about: a refusal with one of its reasons, a channel
  closed once joined, bindings granted other than asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import psycopg
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

NOTIFY_CHANNEL = "realtime_double"
# The Realtime release whose protocol this double speaks. A literal, not read from
# supabase/versions.env: tests/deploy/test_server_versions.py fails when the pinned server moves on
# until someone checks this double against the new release and moves this too.
PROTOCOL_OF = "v2.34.47"

INSTALL = """
create schema if not exists realtime_double;
grant usage on schema realtime_double to public;
create or replace function realtime_double.capture() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform pg_notify('realtime_double', json_build_object(
    'schema', tg_table_schema, 'table', tg_table_name, 'type', tg_op,
    'record', case when tg_op <> 'DELETE' then to_jsonb(new) end,
    'old_record', case when tg_op <> 'INSERT' then to_jsonb(old) end,
    'commit_timestamp', clock_timestamp())::text);
  return null;
end $$;
"""


def loads(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def dumps(value: Any) -> str:
    """JSON with Decimals written as their exact digits: numbers stay numbers on the wire, as
    Realtime renders numeric columns."""
    text = json.dumps(value, default=lambda v: f"{_EXACT}{v}{_EXACT}" if isinstance(v, Decimal) else str(v))
    return re.sub(f'"{_EXACT}([^"]*){_EXACT}"', r"\1", text)


_EXACT = "@@exact@@"

# Join refusals, worded as the real server words them (`Code: message`).
TOKEN_EXPIRED = "InvalidJWTToken: Token has expired 0 seconds ago"
RESTARTING = "RealtimeRestarting: Realtime is restarting, please standby"


def policy_refusal(topic: str) -> str:
    """The refusal of a private topic that the RLS policy on `realtime.messages` does not open."""
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"


@dataclass(frozen=True)
class JoinScript:
    """What one join of a topic meets instead of the usual (a valid token assumed)."""

    refuse: str | None = None  # a `phx_reply` error with this reason
    close: str | None = None  # joined, then closed at once (`system` error with this, `phx_close`)
    grant: dict[str, Any] | None = None  # these fields answered in every granted binding


@dataclass
class Channel:
    socket: ServerConnection
    topic: str  # without the "realtime:" prefix
    join_ref: str | None
    claims: dict[str, Any]
    private: bool
    bindings: list[dict[str, Any]]  # as requested, each with its server-chosen "id"


@dataclass
class RealtimeDouble:
    db_url: str
    jwt_secret: str
    channels: list[Channel] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)  # every client frame, in order
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Server | None = None
    _sockets: set[ServerConnection] = field(default_factory=set)
    _check_lock: asyncio.Lock | None = None
    _check_conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
    _stop: asyncio.Event | None = None
    _scripts: dict[str, list[JoinScript]] = field(default_factory=dict)
    _joins: dict[str, list[float]] = field(default_factory=dict)  # topic -> monotonic join times
    _joined: threading.Condition = field(default_factory=threading.Condition)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> str:
        self._install()
        started = threading.Event()
        port: list[int] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop, self._check_lock = asyncio.Event(), asyncio.Lock()
            self._check_conn = await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)
            listen = await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)
            await listen.execute(f"listen {NOTIFY_CHANNEL}")
            async with serve(self._connection, "127.0.0.1", 0, process_request=self._check_key) as server:
                self._server = server
                port.append(next(iter(server.sockets)).getsockname()[1])
                started.set()
                tasks = [asyncio.create_task(self._changes(listen)), asyncio.create_task(self._expiry())]
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
            await listen.close()
            await self._check_conn.close()

        threading.Thread(target=asyncio.run, args=(main(),), daemon=True, name="realtime-double").start()
        started.wait(10)
        return f"http://127.0.0.1:{port[0]}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("drop schema if exists realtime_double cascade")

    def _install(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(INSTALL)
            tables = conn.execute(
                "select schemaname, tablename from pg_publication_tables where pubname = 'supabase_realtime'"
            ).fetchall()
            for schema, table in [*tables, ("realtime", "messages")]:
                name = psycopg.sql.Identifier(schema, table)
                conn.execute(
                    psycopg.sql.SQL("drop trigger if exists realtime_double_capture on {}").format(name)
                )
                conn.execute(
                    psycopg.sql.SQL(
                        "create trigger realtime_double_capture after insert or update or delete on {} "
                        "for each row execute function realtime_double.capture()"
                    ).format(name)
                )

    def drop_connections(self) -> None:
        """Cut every websocket without a closing handshake, as a network failure would."""
        assert self._loop is not None

        def cut() -> None:
            for socket in list(self._sockets):
                socket.transport.abort()

        self._loop.call_soon_threadsafe(cut)

    def frames(self, event: str) -> list[dict[str, Any]]:
        return [frame for frame in list(self.received) if frame.get("event") == event]

    def script_joins(self, topic: str, *scripts: JoinScript) -> None:
        """The next joins of `topic` (without the "realtime:" prefix) meet `scripts`, in order."""
        self._scripts.setdefault(topic, []).extend(scripts)

    def join_times(self, topic: str, count: int, timeout: float) -> list[float]:
        """When the first `count` joins of `topic` arrived (time.monotonic), once they have."""
        with self._joined:
            if not self._joined.wait_for(lambda: len(self._joins.get(topic, [])) >= count, timeout):
                raise TimeoutError(f"{topic} was not joined {count} times within {timeout} s")
            return self._joins[topic][:count]

    # -- connections ---------------------------------------------------------------------------
    def _claims(self, token: str) -> dict[str, Any] | None:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
            return claims
        except jwt.PyJWTError:
            return None

    def _check_key(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlparse(request.path)
        key = (parse_qs(url.query).get("apikey") or [""])[0]
        if url.path != "/websocket" or self._claims(key) is None:
            return connection.respond(403, "invalid apikey or path\n")
        return None

    async def _connection(self, socket: ServerConnection) -> None:
        self._sockets.add(socket)
        try:
            async for raw in socket:
                frame = loads(raw)
                self.received.append(frame)
                await self._frame(socket, frame)
        except Exception:  # a dropped connection ends the handler quietly, as on a real server
            pass
        finally:
            self._sockets.discard(socket)
            self.channels = [channel for channel in self.channels if channel.socket is not socket]

    async def _send(
        self,
        socket: ServerConnection,
        topic: str,
        event: str,
        payload: Any,
        ref: str | None = None,
        join_ref: str | None = None,
    ) -> None:
        with contextlib.suppress(Exception):
            frame = {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
            await socket.send(dumps(frame))

    async def _reply(
        self, socket: ServerConnection, frame: dict[str, Any], status: str, response: Any
    ) -> None:
        await self._send(
            socket,
            frame["topic"],
            "phx_reply",
            {"status": status, "response": response},
            frame.get("ref"),
            frame.get("join_ref"),
        )

    async def _frame(self, socket: ServerConnection, frame: dict[str, Any]) -> None:
        event, topic, payload = frame.get("event"), str(frame.get("topic")), frame.get("payload") or {}
        if topic == "phoenix" and event == "heartbeat":
            await self._reply(socket, frame, "ok", {})
        elif event == "phx_join":
            await self._join(socket, frame)
        elif event == "access_token":
            await self._refresh(socket, topic, str(payload.get("access_token") or ""))
        elif event == "phx_leave":
            self._drop(socket, topic)
            await self._reply(socket, frame, "ok", {})
            await self._send(socket, topic, "phx_close", {}, frame.get("ref"))

    def _find(self, socket: ServerConnection, wire_topic: str) -> Channel | None:
        return next(
            (c for c in self.channels if c.socket is socket and "realtime:" + c.topic == wire_topic), None
        )

    def _drop(self, socket: ServerConnection, wire_topic: str) -> None:
        self.channels = [
            c for c in self.channels if not (c.socket is socket and "realtime:" + c.topic == wire_topic)
        ]

    async def _join(self, socket: ServerConnection, frame: dict[str, Any]) -> None:
        wire_topic, payload = str(frame["topic"]), frame.get("payload") or {}
        config = payload.get("config") or {}
        topic = wire_topic.removeprefix("realtime:")
        with self._joined:
            self._joins.setdefault(topic, []).append(time.monotonic())
            self._joined.notify_all()
        claims = self._claims(str(payload.get("access_token") or ""))
        if claims is None:
            await self._reply(
                socket, frame, "error", {"reason": "Invalid JWT: the token is invalid or has expired"}
            )
            return
        scripts = self._scripts.get(topic)
        script = scripts.pop(0) if scripts else JoinScript()
        if script.refuse is not None:
            await self._reply(socket, frame, "error", {"reason": script.refuse})
            return
        private = bool(config.get("private"))
        if private and not await self._may_read_topic(claims, topic):
            await self._reply(socket, frame, "error", {"reason": policy_refusal(topic)})
            return
        bindings = [
            {**binding, **(script.grant or {}), "id": next(self._ids)}
            for binding in config.get("postgres_changes") or []
        ]
        self._drop(socket, wire_topic)
        channel = Channel(socket, topic, frame.get("join_ref"), claims, private, bindings)
        self.channels.append(channel)
        await self._reply(socket, frame, "ok", {"postgres_changes": bindings})
        if script.close is not None:
            await self._close(channel, script.close)
            return
        if bindings:
            await self._send(
                socket,
                wire_topic,
                "system",
                {
                    "channel": topic,
                    "extension": "postgres_changes",
                    "message": "Subscribed to PostgreSQL",
                    "status": "ok",
                },
            )

    async def _refresh(self, socket: ServerConnection, wire_topic: str, token: str) -> None:
        channel = self._find(socket, wire_topic)
        if channel is None:
            return
        claims = self._claims(token)
        if claims is None or claims.get("sub") != channel.claims.get("sub"):
            await self._close(channel, "Invalid JWT: the token is invalid or has expired")
        else:
            channel.claims = claims

    async def _close(self, channel: Channel, message: str) -> None:
        wire_topic = "realtime:" + channel.topic
        await self._send(
            channel.socket,
            wire_topic,
            "system",
            {"channel": channel.topic, "extension": "system", "message": message, "status": "error"},
        )
        await self._send(channel.socket, wire_topic, "phx_close", {}, channel.join_ref)
        self._drop(channel.socket, wire_topic)

    async def _expiry(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            for channel in list(self.channels):
                if float(channel.claims.get("exp", now + 1)) <= now:
                    await self._close(channel, "Token has expired 0 seconds ago")

    # -- authorization, as the subscriber ------------------------------------------------------
    async def _as_user(
        self,
        claims: dict[str, Any],
        topic: str | None,
        query: psycopg.sql.Composed | psycopg.sql.SQL,
        params: tuple[Any, ...],
        probe_topic: bool = False,
    ) -> bool:
        assert self._check_conn is not None and self._check_lock is not None
        role = str(claims.get("role") or "anon")
        async with self._check_lock:
            try:
                async with self._check_conn.transaction(force_rollback=True):
                    if probe_topic:
                        cursor = await self._check_conn.execute(
                            "insert into realtime.messages (topic, extension, event, private) "
                            "values (%s, 'broadcast', 'probe', true) returning id",
                            (topic,),
                        )
                        row = await cursor.fetchone()
                        assert row is not None
                        params = (row[0],)
                    await self._check_conn.execute(
                        "select set_config('request.jwt.claims', %s, true), "
                        "set_config('realtime.topic', %s, true)",
                        (json.dumps(claims), topic or ""),
                    )
                    await self._check_conn.execute(
                        psycopg.sql.SQL("set local role {}").format(psycopg.sql.Identifier(role))
                    )
                    cursor = await self._check_conn.execute(query, params)
                    found = await cursor.fetchone()
            except psycopg.Error:
                return False
        return found is not None

    async def _may_read_topic(self, claims: dict[str, Any], topic: str) -> bool:
        query = psycopg.sql.SQL("select 1 from realtime.messages where id = %s and extension = 'broadcast'")
        return await self._as_user(claims, topic, query, (), probe_topic=True)

    async def _may_select(
        self, claims: dict[str, Any], schema: str, table: str, record: dict[str, Any]
    ) -> bool:
        assert self._check_conn is not None and self._check_lock is not None
        async with self._check_lock:
            cursor = await self._check_conn.execute(
                "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
                "and a.attnum = any(i.indkey) where i.indrelid = %s::regclass and i.indisprimary",
                (f"{schema}.{table}",),
            )
            keys = [row[0] for row in await cursor.fetchall()]
        where = psycopg.sql.SQL(" and ").join(
            psycopg.sql.SQL("{}::text = %s").format(psycopg.sql.Identifier(key)) for key in keys
        )
        query = psycopg.sql.SQL("select 1 from {} where {}").format(
            psycopg.sql.Identifier(schema, table), where
        )
        return await self._as_user(claims, None, query, tuple(str(record[key]) for key in keys))

    async def _columns(self, schema: str, table: str) -> list[dict[str, str]]:
        assert self._check_conn is not None and self._check_lock is not None
        async with self._check_lock:
            cursor = await self._check_conn.execute(
                "select attname, format_type(atttypid, atttypmod) from pg_attribute "
                "where attrelid = %s::regclass and attnum > 0 and not attisdropped order by attnum",
                (f"{schema}.{table}",),
            )
            return [{"name": name, "type": kind} for name, kind in await cursor.fetchall()]

    # -- delivery ------------------------------------------------------------------------------
    async def _changes(self, listen: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        async for notify in listen.notifies():
            change = loads(notify.payload)
            if (change["schema"], change["table"]) == ("realtime", "messages"):
                if change["type"] == "INSERT" and change["record"]["extension"] == "broadcast":
                    await self._broadcast(change["record"])
            else:
                await self._postgres_change(change)

    async def _broadcast(self, message: dict[str, Any]) -> None:
        for channel in list(self.channels):
            if channel.topic == message["topic"] and channel.private == bool(message["private"]):
                await self._send(
                    channel.socket,
                    "realtime:" + channel.topic,
                    "broadcast",
                    {
                        "type": "broadcast",
                        "event": message["event"],
                        "payload": message["payload"],
                        "meta": {"id": str(message["id"])},
                    },
                )

    async def _postgres_change(self, change: dict[str, Any]) -> None:
        record = change["record"] or change["old_record"] or {}
        for channel in list(self.channels):
            ids = [b["id"] for b in channel.bindings if _matches(b, change, record)]
            if not ids or not await self._may_select(
                channel.claims, change["schema"], change["table"], record
            ):
                continue
            columns = await self._columns(change["schema"], change["table"])
            data = {
                "schema": change["schema"],
                "table": change["table"],
                "commit_timestamp": change["commit_timestamp"],
                "type": change["type"],
                "columns": columns,
                "record": change["record"] or {},
                "old_record": change["old_record"] or {},
                "errors": None,
            }
            await self._send(
                channel.socket, "realtime:" + channel.topic, "postgres_changes", {"ids": ids, "data": data}
            )


def _matches(binding: dict[str, Any], change: dict[str, Any], record: dict[str, Any]) -> bool:
    if binding.get("event") not in ("*", change["type"]):
        return False
    if binding.get("schema", "public") != change["schema"]:
        return False
    if binding.get("table") not in (None, "*", change["table"]):
        return False
    condition = binding.get("filter")
    if not condition:
        return True
    column, _, rule = str(condition).partition("=")
    operator, _, value = rule.partition(".")
    if operator != "eq":
        raise ValueError(f"the Realtime double only supports eq filters, not {condition!r}")
    return str(record.get(column)) == value
