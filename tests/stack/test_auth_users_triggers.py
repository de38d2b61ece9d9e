"""The triggers on `auth.users` under Supabase Auth's own role. GoTrue writes `auth.users` as
`supabase_auth_admin` with `search_path = auth`; a trigger that works for a superuser can fail
there, and GoTrue then answers every sign-up with "Database error saving new user". The local
stack writes users the way GoTrue does (cli.dev.users.act_as_auth_server), so every test's
sign-up goes through that path; these tests pin it down."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.users import act_as_auth_server, create_user

Conn = psycopg.Connection[TupleRow]


def fresh_email() -> str:
    return f"gotrue-{uuid.uuid4().hex[:12]}@example.test"


def test_a_sign_up_by_auths_role_opens_a_profile_and_an_account(db: Conn) -> None:
    user = create_user(db, fresh_email(), confirmed=False)
    assert db.execute("select email from public.profiles where id = %s", (user.id,)).fetchone() == (
        user.email,
    )
    assert db.execute(
        "select balance from public.credit_accounts where user_id = %s", (user.id,)
    ).fetchone() == (0,)


def test_confirming_and_changing_the_email_by_auths_role_run_their_triggers(db: Conn) -> None:
    user = create_user(db, fresh_email(), confirmed=False)
    changed = fresh_email()
    with db.transaction():
        act_as_auth_server(db)
        db.execute("update users set email_confirmed_at = now() where id = %s", (user.id,))
        db.execute("update users set email = %s where id = %s", (changed, user.id))
    assert db.execute("select email from public.profiles where id = %s", (user.id,)).fetchone() == (changed,)


def test_every_trigger_on_auth_users_runs_as_its_owner_with_a_pinned_search_path(db: Conn) -> None:
    loose = db.execute(
        """select t.tgname, p.oid::regprocedure::text from pg_trigger t join pg_proc p on p.oid = t.tgfoid
           where t.tgrelid = 'auth.users'::regclass and not t.tgisinternal
             and not (p.prosecdef and 'search_path=""' = any(coalesce(p.proconfig, '{}')))"""
    ).fetchall()
    assert loose == []


def test_a_trigger_that_runs_with_the_callers_rights_fails_for_auths_role(db: Conn) -> None:
    """The harness reproduces the classic failure: without `security definer`, GoTrue's role may
    not write the application's tables."""
    with db.transaction():
        db.execute(
            """create function public.probe_profile_for_new_user() returns trigger language plpgsql
               set search_path = '' as $$
               begin
                 update public.profiles set display_name = 'probe' where id = new.id;
                 return new;
               end $$"""
        )
        db.execute(
            """create trigger probe_on_user_created after insert on auth.users
               for each row execute function public.probe_profile_for_new_user()"""
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            create_user(db, fresh_email())
        raise psycopg.Rollback
