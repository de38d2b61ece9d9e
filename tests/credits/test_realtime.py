"""Balances reach their owner, and only them, through Supabase Realtime (Postgres Changes and Broadcast)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
from psycopg.rows import TupleRow

from tests.support import Api, User
from tests.support.realtime import readable_messages

MakeUser = Callable[..., User]


def test_credit_accounts_are_published_with_full_replica_identity(
    db: psycopg.Connection[TupleRow],
) -> None:
    published = db.execute(
        "select 1 from pg_publication_tables where pubname = 'supabase_realtime' "
        "and schemaname = 'public' and tablename = 'credit_accounts'"
    ).fetchone()
    assert published == (1,)
    assert db.execute(
        "select relreplident from pg_class where oid = 'public.credit_accounts'::regclass"
    ).fetchone() == ("f",)


def visible_broadcasts(db: psycopg.Connection[TupleRow], viewer: str, topic: str) -> list[object]:
    """The balance changes `viewer` may receive on `topic`, as Realtime checks it."""
    return [
        payload for _, event, payload in readable_messages(db, viewer, topic) if event == "balance_changed"
    ]


def test_balance_changes_are_broadcast_to_their_owner_only(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    owner, other = make_user(), make_user()
    reply = service_api.rpc(
        "purchase_credits", user_id=owner.id, usd_amount="7", payment_reference=f"r-{uuid.uuid4()}"
    )
    assert reply.status_code == 200, reply.text
    topic = f"balance:{owner.id}"
    payloads = visible_broadcasts(db, owner.id, topic)
    assert len(payloads) == 1
    payload = payloads[0]
    assert isinstance(payload, dict)
    assert payload["user_id"] == owner.id and str(payload["balance"]) == "7" and str(payload["held"]) == "0"
    # Another user subscribing to the owner's topic receives nothing, and neither does anon.
    assert visible_broadcasts(db, other.id, topic) == []
    with db.transaction():
        db.execute("select set_config('realtime.topic', %s, true)", (topic,))
        db.execute("set local role anon")
        assert db.execute("select count(*) from realtime.messages where topic = %s", (topic,)).fetchone() == (
            0,
        )
    # And the owner's Postgres Changes stream carries only their own account row (RLS).
    rows = owner.api.get("/credit_accounts").json()
    assert [row["user_id"] for row in rows] == [owner.id]
