"""What a user may read of `realtime.messages`, checked in the database as Supabase Realtime checks it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.sql
from psycopg.rows import TupleRow
from websockets.sync.client import connect

from mycelium_client._identity import Project


@contextlib.contextmanager
def private_topics_closed(db_url: str) -> Iterator[None]:
    """A project whose policy opens no private topic (balance, subscriptions): watches and
    followers fall back to Postgres Changes. The policy's own condition is put back afterwards,
    whatever the migrations made it."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        found = conn.execute(
            "select pg_get_expr(polqual, polrelid) from pg_policy "
            "where polname = 'mycelium_balance_broadcast_own' and polrelid = 'realtime.messages'::regclass"
        ).fetchone()
        assert found is not None
        conn.execute("alter policy mycelium_balance_broadcast_own on realtime.messages using (false)")
    try:
        yield
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                f"alter policy mycelium_balance_broadcast_own on realtime.messages using ({found[0]})"
            )


def readable_messages(
    db: psycopg.Connection[TupleRow], viewer: str | None, topic: str
) -> list[tuple[str, str | None, Any]]:
    """(topic, event, payload) of every broadcast message `viewer` (None: anon) reads while
    joining `topic`: as Realtime authorizes a join, as `authenticated` with the user's claims in
    `request.jwt.claims` (anon: as `anon`, without a user) and the topic in `realtime.topic` (what
    realtime.topic() reads), with no filter of our own, so that the policy alone decides."""
    claims = {"role": "anon"} if viewer is None else {"sub": viewer, "role": "authenticated"}
    with db.transaction(force_rollback=True):
        db.execute(
            "select set_config('request.jwt.claims', %s, true), set_config('realtime.topic', %s, true)",
            (json.dumps(claims), topic),
        )
        db.execute(psycopg.sql.SQL("set local role {}").format(psycopg.sql.Identifier(claims["role"])))
        try:
            rows = db.execute(
                # A transaction's messages share inserted_at (now()); realtime.send writes each in a
                # subtransaction of its own, whose ids grow in the order they were sent.
                "select topic, event, payload from realtime.messages where extension = 'broadcast' "
                "order by inserted_at, xmin::text::bigint, ctid"
            ).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            rows = []  # the role may not read the table at all: Realtime refuses the join
    return [(row[0], row[1], row[2]) for row in rows]


def join_reply(url: str, api_key: str, topic: str, token: str) -> dict[str, Any]:
    """The reply of a Realtime server (behind the gateway at `url`) to a private join of `topic`
    with `token`, as realtime-py sends it (shared/realtime-protocol.md): `{"status", "response"}`."""
    with connect(Project(url, api_key).websocket_url, open_timeout=10) as socket:
        config = {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False},
            "private": True,
            "postgres_changes": [],
        }
        socket.send(
            json.dumps(
                {
                    "topic": f"realtime:{topic}",
                    "event": "phx_join",
                    "payload": {"config": config, "access_token": token},
                    "ref": "1",
                    "join_ref": "1",
                }
            )
        )
        while True:
            frame = json.loads(socket.recv(timeout=10))
            if frame.get("event") == "phx_reply" and frame.get("ref") == "1":
                reply: dict[str, Any] = frame["payload"]
                return reply
