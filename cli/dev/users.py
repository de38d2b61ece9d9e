"""Users of the local stack, written into `auth.users` the way GoTrue writes them: as its own
role, so that the triggers on `auth.users` run as they do under Supabase Auth."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cli.errors import CliError, UsageError

# GoTrue logs in as this role with `search_path = auth`; a trigger on `auth.users` that is not
# security definer, or that leans on the search path, fails there with "Database error saving new
# user" while it works for a superuser.
AUTH_SERVER_ROLE = "supabase_auth_admin"


def act_as_auth_server(conn: psycopg.Connection[Any]) -> None:
    """For the rest of the current transaction, write as GoTrue does."""
    conn.execute(f"set local role {AUTH_SERVER_ROLE}")
    conn.execute("set local search_path = auth")


@dataclass(frozen=True)
class DevUser:
    id: uuid.UUID
    email: str


def create_user(
    conn: psycopg.Connection[tuple[object, ...]],
    email: str,
    *,
    password: str | None = None,
    confirmed: bool = True,
    roles: Sequence[str] = (),
) -> DevUser:
    """Insert a user as GoTrue's sign-up does (confirmed at once, as with autoconfirm, unless
    `confirmed` is False) and give it marketplace roles."""
    address = email.strip().lower()
    if "@" not in address:
        raise UsageError(f"{email!r} is not an e-mail address")
    with conn.transaction():
        hashed = "" if password is None else password_hash(conn, password)
        act_as_auth_server(conn)
        try:
            row = conn.execute(
                """
                insert into auth.users (
                  instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                  confirmation_token, recovery_token, email_change_token_new, email_change,
                  raw_app_meta_data, raw_user_meta_data, created_at, updated_at, is_anonymous
                ) values (
                  '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
                  %(email)s, %(hashed)s, case when %(confirmed)s then now() end,
                  '', '', '', '',
                  '{"provider": "email", "providers": ["email"]}', '{}', now(), now(), false
                ) returning id
                """,
                {"email": address, "hashed": hashed, "confirmed": confirmed},
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise CliError(f"a user with e-mail {address} already exists") from None
        conn.execute("set local role none")  # the roles below are granted as the caller
        conn.execute("set local search_path to default")
        assert row is not None
        user = DevUser(uuid.UUID(str(row[0])), address)
        for role in roles:
            grant_role(conn, user.id, role)
    return user


def password_hash(conn: psycopg.Connection[tuple[object, ...]], password: str) -> str:
    """A bcrypt hash, as GoTrue stores it (GoTrue hashes in Go; here pgcrypto does)."""
    row = conn.execute("select extensions.crypt(%s, extensions.gen_salt('bf'))", (password,)).fetchone()
    assert row is not None
    return str(row[0])


def grant_role(conn: psycopg.Connection[tuple[object, ...]], user_id: uuid.UUID, role: str) -> None:
    exists = conn.execute("select to_regclass('public.user_roles') is not null").fetchone()
    if not exists or not exists[0]:
        raise CliError("marketplace roles need the credits schema (public.user_roles): push the migrations")
    try:
        conn.execute(
            "insert into public.user_roles (user_id, role) values (%s, %s) on conflict do nothing",
            (user_id, role),
        )
    except psycopg.errors.Error as error:
        raise UsageError(f"cannot grant role {role!r}: {error.diag.message_primary}") from None


def find_user(conn: psycopg.Connection[tuple[object, ...]], who: str) -> DevUser:
    """A user by id or e-mail address."""
    with conn.cursor(row_factory=dict_row) as cursor:
        try:
            key = uuid.UUID(who)
            cursor.execute("select id, email from auth.users where id = %s", (key,))
        except ValueError:
            cursor.execute("select id, email from auth.users where lower(email) = lower(%s)", (who,))
        row = cursor.fetchone()
    if row is None:
        raise CliError(f"no user {who}")
    return DevUser(uuid.UUID(str(row["id"])), str(row["email"] or ""))
