"""Bench users in bulk, written straight into `auth.users` (the triggers give each an account),
and their credits."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg


def create_users(conn: psycopg.Connection[Any], count: int) -> list[str]:
    rows = conn.execute(
        """
        insert into auth.users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                                created_at, updated_at)
        select '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
               'bench-' || gen_random_uuid() || '@example.test', '{}', '{}', now(), now()
        from generate_series(1, %s)
        returning id::text
        """,
        (count,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def fund(conn: psycopg.Connection[Any], users: list[str], usd: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "select public.purchase_credits(%s::uuid, %s::numeric, %s)",
            [(u, usd, f"bench-fund-{uuid.uuid4()}") for u in users],
        )
