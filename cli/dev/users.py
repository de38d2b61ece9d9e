"""Users of the local stack, created the way GoTrue creates them, so triggers on `auth.users` fire."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from cli.errors import CliError, UsageError


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
        try:
            row = conn.execute(
                """
                insert into auth.users (
                  instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                  confirmation_token, recovery_token, email_change_token_new, email_change,
                  raw_app_meta_data, raw_user_meta_data, created_at, updated_at, is_anonymous
                ) values (
                  '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
                  %(email)s,
                  case when %(password)s::text is null then ''
                       else extensions.crypt(%(password)s, extensions.gen_salt('bf')) end,
                  case when %(confirmed)s then now() end,
                  '', '', '', '',
                  '{"provider": "email", "providers": ["email"]}', '{}', now(), now(), false
                ) returning id
                """,
                {"email": address, "password": password, "confirmed": confirmed},
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise CliError(f"a user with e-mail {address} already exists") from None
        assert row is not None
        user = DevUser(uuid.UUID(str(row[0])), address)
        for role in roles:
            grant_role(conn, user.id, role)
    return user


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
