"""Security of schema public as the catalog states it: what Supabase's default privileges hand the
API roles (anon, authenticated, service_role) on every new object must be taken back or be
harmless, for objects no migration has written yet as much as for those it has."""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]

# A sequence's USAGE allows nextval, SELECT reads last_value (how many rows were ever written),
# UPDATE allows setval: one setval and every later insert into the ledger collides. The security
# definer functions that insert run as the owner, so no API role needs any of it; a role that
# inserts into a table directly (through RLS) would need USAGE only.
FORBIDDEN_ON_SEQUENCES = {
    "anon": ("USAGE", "SELECT", "UPDATE"),
    "authenticated": ("SELECT", "UPDATE"),
    "service_role": ("UPDATE",),
}

# Views that run with their owner's rights bypass the RLS of the tables they read; one allowed here
# needs the reason it is safe (name -> reason). None is.
OWNER_RIGHTS_VIEWS: dict[str, str] = {}


def sequence_grants(db: Conn) -> set[tuple[str, str, str]]:
    """(sequence, role, privilege) for every forbidden privilege a sequence in public grants."""
    found = db.execute(
        """select c.oid::regclass::text, r.role, p.privilege
           from pg_class c
           cross join unnest(%s::text[]) r(role)
           cross join unnest(array['USAGE', 'SELECT', 'UPDATE']) p(privilege)
           where c.relkind = 'S' and c.relnamespace = 'public'::regnamespace
             and has_sequence_privilege(r.role, c.oid, p.privilege)""",
        (list(FORBIDDEN_ON_SEQUENCES),),
    ).fetchall()
    return {
        (str(sequence), str(role), str(privilege))
        for sequence, role, privilege in found
        if privilege in FORBIDDEN_ON_SEQUENCES[str(role)]
    }


def owner_rights_views(db: Conn) -> set[str]:
    """Views (and materialized views, which cannot be security_invoker) in public that run with
    their owner's rights."""
    found = db.execute(
        """select c.relname from pg_class c
           where c.relkind in ('v', 'm') and c.relnamespace = 'public'::regnamespace
             and not coalesce((select o.option_value::boolean from pg_options_to_table(c.reloptions) o
                               where o.option_name = 'security_invoker'), false)"""
    ).fetchall()
    return {str(name) for (name,) in found}


def test_no_api_role_may_read_advance_or_set_a_sequence_in_public(db: Conn) -> None:
    assert sequence_grants(db) == set()


def test_every_view_in_public_applies_the_callers_rights(db: Conn) -> None:
    assert owner_rights_views(db) == set(OWNER_RIGHTS_VIEWS)


def test_the_checks_see_what_supabase_grants_a_new_table_and_view(db: Conn) -> None:
    """Created as the migration role, so Supabase's default privileges apply, then rolled back."""
    with db.transaction():
        db.execute("set local role postgres")
        db.execute("create table public.catalog_probe (id bigint generated always as identity primary key)")
        db.execute("create view public.catalog_probe_owner as select id from public.catalog_probe")
        db.execute(
            "create view public.catalog_probe_invoker with (security_invoker = on)"
            " as select id from public.catalog_probe"
        )
        probe = {grant for grant in sequence_grants(db) if grant[0] == "catalog_probe_id_seq"}
        assert probe == {
            ("catalog_probe_id_seq", "anon", "USAGE"),
            ("catalog_probe_id_seq", "anon", "SELECT"),
            ("catalog_probe_id_seq", "anon", "UPDATE"),
            ("catalog_probe_id_seq", "authenticated", "SELECT"),
            ("catalog_probe_id_seq", "authenticated", "UPDATE"),
            ("catalog_probe_id_seq", "service_role", "UPDATE"),
        }
        assert {"catalog_probe_owner", "catalog_probe_invoker"} & owner_rights_views(db) == {
            "catalog_probe_owner"
        }
        raise psycopg.Rollback  # the probe leaves nothing behind
