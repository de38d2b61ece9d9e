"""Make a vanilla PostgreSQL behave like a Supabase database (dev and tests only)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from cli.errors import CliError

BOOTSTRAP_SQL = Path(__file__).with_name("supabase_bootstrap.sql")
LOCAL_MARKER = "local emulation of Supabase Auth by mycelium dev"


class AlreadySupabase(CliError):
    """The target is a real Supabase database: its own setup must not be overwritten."""


def is_real_supabase(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """A database whose `auth` schema was not made by this bootstrap is Supabase's own."""
    row = conn.execute(
        "select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = 'auth'"
    ).fetchone()
    return row is not None and LOCAL_MARKER not in str(row[0] or "")


def bootstrap(conn: psycopg.Connection[tuple[object, ...]], *, passwords: dict[str, str]) -> None:
    """Apply the Supabase setup, idempotently, and set the login roles' passwords."""
    if is_real_supabase(conn):
        raise AlreadySupabase(
            "this database already is a Supabase (it has an auth schema of its own): "
            "the local bootstrap is only for a vanilla PostgreSQL; use `mycelium sql push` against it"
        )
    superuser = conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()
    if not superuser or not superuser[0]:
        raise CliError("the Supabase bootstrap must run as a superuser of the local cluster")
    with conn.transaction():
        conn.execute(BOOTSTRAP_SQL.read_text().encode(), prepare=False)
        conn.execute(
            sql.SQL("grant create, connect, temporary on database {} to postgres").format(
                sql.Identifier(conn.info.dbname)
            )
        )
        for role, password in passwords.items():
            conn.execute(
                sql.SQL("alter role {} password {}").format(sql.Identifier(role), sql.Literal(password))
            )
