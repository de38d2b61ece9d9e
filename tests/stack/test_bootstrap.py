"""The local stack behaves like Supabase: roles, grants, auth helpers, realtime, and the classic trap."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from cli.dev.bootstrap import AlreadySupabase, bootstrap
from cli.dev.stack import LocalStack
from tests.support import Api, after_schema_reload, body


@pytest.fixture
def open_table(stack: LocalStack) -> Iterator[str]:
    """A table created by the migration role in `public` without RLS, as a careless migration would."""
    name = f"careless_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create table public.{} (id int primary key, secret text)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("create function public.{}() returns text language sql as $$ select 'called' $$").format(
                sql.Identifier(f"{name}_fn")
            )
        )
        conn.execute("notify pgrst, 'reload schema'")
    yield name
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop table public.{}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("drop function public.{}()").format(sql.Identifier(f"{name}_fn")))


def test_the_trap_is_open_a_table_without_rls_is_anons_to_read_and_write(
    anon_api: Api, open_table: str
) -> None:
    written = after_schema_reload(
        lambda: anon_api.post(f"/{open_table}", {"id": 1, "secret": "written by anon"})
    )
    assert written.status_code == 201, written.text
    read = anon_api.get(f"/{open_table}", select="secret")
    assert read.status_code == 200 and body(read) == [{"secret": "written by anon"}]
    changed = anon_api.patch(f"/{open_table}", {"secret": "changed by anon"}, id="eq.1")
    assert changed.status_code == 200 and body(changed)[0]["secret"] == "changed by anon"
    assert anon_api.rpc(f"{open_table}_fn").json() == "called"
    assert anon_api.delete(f"/{open_table}", id="eq.1").status_code == 200


def test_roles_have_supabases_attributes(db: psycopg.Connection[TupleRow]) -> None:
    rows = db.execute(
        "select rolname, rolsuper, rolcanlogin, rolinherit, rolbypassrls from pg_roles "
        "where rolname in ('anon','authenticated','service_role','authenticator','postgres') order by rolname"
    ).fetchall()
    assert rows == [
        ("anon", False, False, False, False),
        ("authenticated", False, False, False, False),
        ("authenticator", False, True, False, False),
        ("postgres", False, True, True, True),
        ("service_role", False, False, False, True),
    ]
    members = db.execute(
        "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid "
        "join pg_roles u on u.oid = m.member where u.rolname = 'authenticator' order by 1"
    ).fetchall()
    assert members == [("anon",), ("authenticated",), ("service_role",)]
    timeouts: dict[str, str] = dict(
        db.execute(
            "select r.rolname, s.cfg from pg_db_role_setting d join pg_roles r on r.oid = d.setrole, "
            "unnest(d.setconfig) s(cfg) where s.cfg like 'statement_timeout%'"
        ).fetchall()
    )
    assert timeouts["anon"] == "statement_timeout=3s" and timeouts["authenticated"] == "statement_timeout=8s"


def test_auth_helpers_read_the_jwt_claims_postgrest_sets(db: psycopg.Connection[TupleRow]) -> None:
    user_id = uuid.uuid4()
    claims = json.dumps({"sub": str(user_id), "role": "authenticated", "email": "a@example.test"})
    with db.transaction():
        db.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        row = db.execute("select auth.uid(), auth.role(), auth.email(), auth.jwt() ->> 'sub'").fetchone()
    assert row == (user_id, "authenticated", "a@example.test", str(user_id))


def test_realtime_send_writes_a_broadcast_message(db: psycopg.Connection[TupleRow]) -> None:
    topic = f"test:{uuid.uuid4()}"
    db.execute("select realtime.send(%s::jsonb, 'ping', %s, true)", (json.dumps({"n": 1}), topic))
    row = db.execute(
        "select extension, event, payload, private from realtime.messages where topic = %s", (topic,)
    ).fetchone()
    assert row == ("broadcast", "ping", {"n": 1}, True)
    publication = db.execute(
        "select count(*) from pg_publication where pubname = 'supabase_realtime'"
    ).fetchone()
    assert publication == (1,)


def _sorted_acl(column: str) -> str:
    return f"(select array_agg(a::text order by a::text) from unnest({column}) a)"


# What the bootstrap sets up, as catalog rows without oids: roles and their attributes (not their
# password hashes: setting the same password again salts it afresh), memberships and settings,
# schemas, relations and functions with their owners and privileges, default privileges, the
# database's privileges, extensions and publications. Privileges are sorted: the same grants in
# another order are the same grants.
FOOTPRINT = {
    "roles": """
        select rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
               rolbypassrls, rolconnlimit, rolvaliduntil
        from pg_roles order by rolname""",
    "memberships": """
        select r.rolname, m.rolname, a.admin_option from pg_auth_members a
        join pg_roles r on r.oid = a.roleid join pg_roles m on m.oid = a.member order by 1, 2""",
    "role_settings": """
        select coalesce(d.datname, ''), coalesce(r.rolname, ''), s.setconfig from pg_db_role_setting s
        left join pg_database d on d.oid = s.setdatabase left join pg_roles r on r.oid = s.setrole
        order by 1, 2""",
    "schemas": f"""
        select nspname, pg_get_userbyid(nspowner), obj_description(oid, 'pg_namespace'),
               {_sorted_acl("nspacl")}
        from pg_namespace where nspname !~ '^pg_(toast|temp)' order by 1""",
    "relations": f"""
        select n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relrowsecurity,
               c.relforcerowsecurity, {_sorted_acl("c.relacl")}
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp)'
        order by 1, 2""",
    "functions": f"""
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_userbyid(p.proowner),
               p.prosecdef, p.proconfig, md5(p.prosrc),
               {_sorted_acl("p.proacl")}
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname not in ('pg_catalog', 'information_schema') order by 1, 2, 3""",
    "default_privileges": f"""
        select pg_get_userbyid(d.defaclrole), coalesce(n.nspname, ''), d.defaclobjtype,
               {_sorted_acl("d.defaclacl")}
        from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace order by 1, 2, 3""",
    "database": f"""
        select datname, pg_get_userbyid(datdba), {_sorted_acl("datacl")}
        from pg_database where datname = current_database()""",
    "extensions": """
        select e.extname, e.extversion, n.nspname from pg_extension e
        join pg_namespace n on n.oid = e.extnamespace order by 1""",
    "publications": """
        select p.pubname, pg_get_userbyid(p.pubowner), p.puballtables,
               array(select t.schemaname || '.' || t.tablename from pg_publication_tables t
                     where t.pubname = p.pubname order by 1)
        from pg_publication p order by 1""",
}


def footprint(conn: psycopg.Connection[TupleRow]) -> dict[str, list[TupleRow]]:
    return {name: conn.execute(query).fetchall() for name, query in FOOTPRINT.items()}


def test_a_second_bootstrap_changes_nothing(
    stack: LocalStack, superuser_conn: psycopg.Connection[TupleRow]
) -> None:
    before = footprint(superuser_conn)
    bootstrap(superuser_conn, passwords=stack.settings.passwords)
    assert footprint(superuser_conn) == before


def test_bootstrap_refuses_a_real_supabase(
    stack: LocalStack, superuser_conn: psycopg.Connection[TupleRow]
) -> None:
    name = f"real_{uuid.uuid4().hex[:8]}"
    superuser_conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        url = stack.superuser_db_url.replace("/postgres?", f"/{name}?")
        with psycopg.connect(url, autocommit=True) as real:
            real.execute("create schema auth")  # as GoTrue's own migrations leave it
            with pytest.raises(AlreadySupabase, match="already is a Supabase"):
                bootstrap(real, passwords={})
            assert real.execute("select to_regclass('auth.users')").fetchone() == (None,)
    finally:
        superuser_conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def test_the_migration_role_cannot_act_as_superuser(stack: LocalStack) -> None:
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        assert conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone() == (
            False,
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("alter system set work_mem = '8MB'")
