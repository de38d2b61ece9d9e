"""What a user may read of `realtime.messages`, checked in the database as Supabase Realtime checks it."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.rows import TupleRow


def readable_messages(
    db: psycopg.Connection[TupleRow], viewer: str, topic: str
) -> list[tuple[str, str | None, Any]]:
    """(topic, event, payload) of every broadcast message `viewer` reads while joining `topic`:
    as Realtime authorizes a join, as `authenticated` with the user's claims in
    `request.jwt.claims` and the topic in `realtime.topic` (what realtime.topic() reads), with no
    filter of our own, so that the policy alone decides."""
    with db.transaction(force_rollback=True):
        db.execute(
            "select set_config('request.jwt.claims', %s, true), set_config('realtime.topic', %s, true)",
            (json.dumps({"sub": viewer, "role": "authenticated"}), topic),
        )
        db.execute("set local role authenticated")
        rows = db.execute(
            "select topic, event, payload from realtime.messages where extension = 'broadcast' "
            "order by inserted_at"
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]
