"""Supabase's database advisor lints (splinter), held against the pushed schema.

Each lint is a catalog query written here from the rule Supabase documents: it returns its
offenders, and a test fails listing them. The exposed schemas are those PostgREST serves
(`db-schemas`, the local stack's and every deployment's) and the one holding its `db-pre-request`
function; "our" schemas add those the migration role owns (`mycelium_private`). Each lint also
runs once over a scratch schema holding a deliberately bad object, created in a transaction that
is rolled back, so that none can pass by finding nothing where it does not look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from tests.support.deploy import ENV_EXAMPLE, K3S_DIR, load_yaml_documents
from tests.support.privileges import read_manifest

Conn = psycopg.Connection[TupleRow]
Lint = Callable[[Conn, "Schemas"], list[str]]

API_ROLES = ("anon", "authenticated", "service_role")
# The roles whose rows row level security filters (service_role bypasses it).
RLS_ROLES = ("anon", "authenticated")
# The Supabase CLI's migration history, owned by the migration role but none of ours.
NOT_OURS = ("supabase_migrations",)
SCRATCH = "lint_probe"

# Security definer functions that anon may execute on purpose (name as the manifest spells it ->
# why): each also needs `execute` for anon on its line of sql/privileges.manifest.
ANON_DEFINER_FUNCTIONS = {
    # PostgREST's db-pre-request: it runs for every request, an anonymous one too, and reads
    # auth.users, which the caller may not, to refuse banned and deleted users' tokens.
    "mycelium_gate.check_caller()": "the request gate runs before every request",
    # The public catalogue: anyone may search the active products and see their prices; these
    # return only what the catalogue shows to anyone.
    "public.search_products(text,text,numeric,numeric,text,jsonb,jsonb,text,jsonb,int4,text)": "catalogue",
    "public.display_prices(numeric)": "catalogue prices in the display currencies",
    "public.tfc_to_usd(numeric)": "catalogue prices in USD",
}


@dataclass(frozen=True)
class Schemas:
    exposed: tuple[str, ...]
    ours: tuple[str, ...]


def postgrest_settings(stack: LocalStack) -> dict[str, str]:
    """The stack's PostgREST configuration (`key = value`, strings quoted)."""
    settings = {}
    for line in stack.postgrest.config.read_text().splitlines():
        key, _, value = line.partition("=")
        settings[key.strip()] = value.strip().strip('"')
    return settings


def deployed_schema_lists() -> list[str]:
    """PGRST_DB_SCHEMAS of the single node (supabase/.env.example) and of k3s (its ConfigMap)."""
    (single_node,) = [
        line.partition("=")[2]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("PGRST_DB_SCHEMAS=")
    ]
    (config,) = [doc for doc in load_yaml_documents(K3S_DIR / "config.yaml") if doc["kind"] == "ConfigMap"]
    return [single_node, str(config["data"]["PGRST_DB_SCHEMAS"])]


@pytest.fixture(scope="module")
def schemas(stack: LocalStack, superuser_conn: Conn) -> Schemas:
    """What any deployment exposes: the local stack's and the deployments' db-schemas."""
    settings = postgrest_settings(stack)
    lists = [settings["db-schemas"], *deployed_schema_lists()]
    served = [name.strip() for listed in lists for name in listed.split(",")]
    gate = settings["db-pre-request"].split(".")[0]
    exposed = tuple(dict.fromkeys([*served, gate]))
    owned = superuser_conn.execute(
        "select nspname from pg_namespace where nspowner = 'postgres'::regrole and nspname <> all(%s)",
        (list(NOT_OURS),),
    ).fetchall()
    return Schemas(exposed, tuple(dict.fromkeys([*exposed, *(str(name) for (name,) in owned)])))


def names(db: Conn, query: str, *args: object) -> list[str]:
    return [str(row[0]) for row in db.execute(query, args).fetchall()]


def offenders(title: str, found: list[str]) -> str:
    return f"{len(found)} {title}:\n  " + "\n  ".join(found)


# -- the lints --------------------------------------------------------------------------------


def rls_disabled(db: Conn, schemas: Schemas) -> list[str]:
    """0013: a table PostgREST serves without row level security is open to every granted role."""
    return names(
        db,
        """select format('%%I.%%I', n.nspname, c.relname)
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = any(%s) and c.relkind in ('r', 'p') and not c.relrowsecurity
           order by 1""",
        list(schemas.exposed),
    )


def policies_without_rls(db: Conn, schemas: Schemas) -> list[str]:
    """0007: policies on a table whose row level security is off protect nothing (any schema)."""
    return names(
        db,
        """select format('%%I.%%I: %%s', n.nspname, c.relname, string_agg(p.polname, ', ' order by p.polname))
           from pg_policy p
           join pg_class c on c.oid = p.polrelid
           join pg_namespace n on n.oid = c.relnamespace
           where not c.relrowsecurity
           group by n.nspname, c.relname
           order by 1""",
    )


def owner_rights_views(db: Conn, schemas: Schemas) -> list[str]:
    """0010: a view run with its owner's rights reads past the row level security of its tables
    (a materialized view cannot apply the caller's rights at all)."""
    return names(
        db,
        """select format('%%I.%%I', n.nspname, c.relname)
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = any(%s) and c.relkind in ('v', 'm')
             and not coalesce((select o.option_value::boolean from pg_options_to_table(c.reloptions) o
                               where o.option_name = 'security_invoker'), false)
           order by 1""",
        list(schemas.exposed),
    )


def mutable_search_path(db: Conn, schemas: Schemas) -> list[str]:
    """0011: a function without a pinned search_path resolves names by its caller's path.

    Deliberate exception (sql/20261127000100_foundation.sql, "search_path"): plpgsql helpers that
    only our own functions run, under their `search_path = ''`, have no SET clause, which would cost
    every call a save and restore of the setting. So a function is an offender when someone other
    than its owner can start it: it is security definer, a trigger, in an exposed schema, or
    executable by any other role (PUBLIC included).
    """
    return names(
        db,
        """select format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = any(%s)
             and not exists (select from unnest(p.proconfig) s(setting) where s.setting like 'search_path=%%')
             and not exists (select from pg_depend d
                             where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
             and (p.prosecdef
                  or p.prorettype in ('trigger'::regtype, 'event_trigger'::regtype)
                  or n.nspname = any(%s)
                  or exists (select from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                             where a.privilege_type = 'EXECUTE' and a.grantee <> p.proowner))
           order by 1""",
        list(schemas.ours),
        list(schemas.exposed),
    )


def auth_users_exposed(db: Conn, schemas: Schemas) -> list[str]:
    """0002: a view reading auth.users, or a function returning its rows, that an API role may
    reach hands out every user's e-mail, phone and metadata."""
    return names(
        db,
        """select format('view %%I.%%I', n.nspname, c.relname)
           from pg_class c
           join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = any(%s) and c.relkind in ('v', 'm')
             and exists (select from pg_rewrite r
                         join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
                         where r.ev_class = c.oid and d.refobjid = 'auth.users'::regclass)
             and exists (select from unnest(%s::text[]) role
                         where has_any_column_privilege(role, c.oid, 'SELECT'))
           union all
           select format('function %%I.%%I(%%s)', n.nspname, p.proname,
                         pg_get_function_identity_arguments(p.oid))
           from pg_proc p
           join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = any(%s)
             and p.prorettype = (select reltype from pg_class where oid = 'auth.users'::regclass)
             and exists (select from unnest(%s::text[]) role
                         where has_function_privilege(role, p.oid, 'EXECUTE'))
           order by 1""",
        list(schemas.exposed),
        list(API_ROLES),
        list(schemas.exposed),
        list(API_ROLES),
    )


def extensions_in_exposed_schemas(db: Conn, schemas: Schemas) -> list[str]:
    """0014: an extension's functions and tables in an exposed schema become part of the API."""
    return names(
        db,
        """select format('%%I in %%I', e.extname, n.nspname)
           from pg_extension e join pg_namespace n on n.oid = e.extnamespace
           where n.nspname = any(%s)
           order by 1""",
        list(schemas.exposed),
    )


def unindexed_foreign_keys(db: Conn, schemas: Schemas) -> list[str]:
    """0001: a foreign key whose columns lead no index makes each delete or key update of the
    referenced row scan the referencing table (and joins on it scan too)."""
    return names(
        db,
        """select format('%%I.%%I.%%s (%%s)', n.nspname, c.relname, k.conname,
                         (select string_agg(a.attname, ', ' order by u.i)
                          from unnest(k.conkey) with ordinality u(attnum, i)
                          join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.attnum))
           from pg_constraint k
           join pg_class c on c.oid = k.conrelid
           join pg_namespace n on n.oid = c.relnamespace
           where k.contype = 'f' and n.nspname = any(%s)
             and not exists (
               select from pg_index i
               where i.indrelid = k.conrelid and i.indpred is null and i.indisvalid
                 and i.indnkeyatts >= cardinality(k.conkey)
                 -- the key's columns, in any order, are the index's leading columns
                 and (select array_agg(attnum order by attnum)
                      from unnest((string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(k.conkey)])
                        attnum)
                     = (select array_agg(attnum order by attnum) from unnest(k.conkey) attnum))
           order by 1""",
        list(schemas.ours),
    )


# An auth helper or current_setting() called directly; `(select auth.uid())` deparses as
# `( SELECT auth.uid() AS uid)`, which PostgreSQL evaluates once a statement, as an InitPlan.
AUTH_CALL = r"(auth\.(uid|jwt|role|email)|current_setting)\("
WRAPPED_AUTH_CALL = r"\( SELECT (auth\.(uid|jwt|role|email)\(\)|current_setting\([^()]*\)) AS \w+\)"


def per_row_auth_calls(db: Conn, schemas: Schemas) -> list[str]:
    """0003: auth.uid(), auth.jwt(), auth.role(), auth.email() or current_setting() in a policy,
    outside a scalar subquery of its own, is evaluated again for every row (any schema)."""
    return names(
        db,
        """select format('%%I.%%I: %%s', p.schemaname, p.tablename, p.policyname)
           from pg_policies p
           where regexp_replace(coalesce(p.qual, '') || ' ' || coalesce(p.with_check, ''), %s, '', 'g') ~ %s
           order by 1""",
        WRAPPED_AUTH_CALL,
        AUTH_CALL,
    )


def multiple_permissive_policies(db: Conn, schemas: Schemas) -> list[str]:
    """0006: two permissive policies for one role and action are OR-ed and both evaluated on every
    row (any schema); one policy with an explicit OR says the same and is planned better."""
    return names(
        db,
        """with applies as (
             select p.polrelid, r.role, a.action, p.polname
             from pg_policy p
             cross join unnest(%s::text[]) r(role)
             cross join unnest(array['r', 'a', 'w', 'd'], array['SELECT', 'INSERT', 'UPDATE', 'DELETE'])
                 a(cmd, action)
             where p.polpermissive and p.polcmd in ('*', a.cmd)
               and (0::oid = any(p.polroles)
                    or exists (select from unnest(p.polroles) g(oid)
                               where pg_has_role(r.role, g.oid, 'MEMBER')))
           )
           select format('%%I.%%I for %%s %%s: %%s', n.nspname, c.relname, role, action,
                         string_agg(polname, ', ' order by polname))
           from applies
           join pg_class c on c.oid = applies.polrelid
           join pg_namespace n on n.oid = c.relnamespace
           group by n.nspname, c.relname, role, action
           having count(*) > 1
           order by 1""",
        list(RLS_ROLES),
    )


def duplicate_indexes(db: Conn, schemas: Schemas) -> list[str]:
    """0009: identical indexes cost every write twice and help no read."""
    return names(
        db,
        """select format('%%I.%%I: %%s', n.nspname, c.relname,
                         string_agg(format('%%I', ic.relname), ', ' order by ic.relname))
           from pg_index i
           join pg_class ic on ic.oid = i.indexrelid
           join pg_class c on c.oid = i.indrelid
           join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = any(%s)
           group by n.nspname, c.relname, i.indrelid, ic.relam, i.indkey::text, i.indclass::text,
                    i.indcollation::text, i.indoption::text,
                    pg_get_expr(i.indexprs, i.indrelid), pg_get_expr(i.indpred, i.indrelid)
           having count(*) > 1
           order by 1""",
        list(schemas.ours),
    )


# pg_relation_is_updatable's bits: 1 << CMD_UPDATE, CMD_INSERT, CMD_DELETE.
VIEW_EVENTS = {"UPDATE": 4, "INSERT": 8, "DELETE": 16}


def write_grants_on_unwritable_views(db: Conn, schemas: Schemas) -> list[str]:
    """A write granted on a view that can take none (not auto-updatable, no INSTEAD OF trigger or
    rule for it) promises an API that fails; the manifest should not have to say it."""
    return names(
        db,
        """select format('%%I.%%I: %%s %%s', n.nspname, c.relname, r.role, e.event)
           from pg_class c
           join pg_namespace n on n.oid = c.relnamespace
           cross join unnest(%s::text[]) r(role)
           cross join unnest(%s::text[], %s::int[]) e(event, bit)
           where n.nspname = any(%s) and c.relkind in ('v', 'm')
             and (pg_relation_is_updatable(c.oid, true) & e.bit) = 0
             and case when e.event = 'DELETE' then has_table_privilege(r.role, c.oid, e.event)
                      else has_any_column_privilege(r.role, c.oid, e.event) end
           order by 1""",
        list(API_ROLES),
        list(VIEW_EVENTS),
        list(VIEW_EVENTS.values()),
        list(schemas.exposed),
    )


def anon_definer_functions(db: Conn, schemas: Schemas) -> list[str]:
    """0028: a security definer function anon may execute runs with its owner's rights for
    anyone holding the public key. Allowed only where the manifest grants it to anon and
    ANON_DEFINER_FUNCTIONS says why."""
    manifest = read_manifest()
    meant = {
        name
        for (kind, name), grants in manifest.items()
        if kind == "function" and "execute" in grants["anon"] and name in ANON_DEFINER_FUNCTIONS
    }
    found = names(
        db,
        """select n.nspname || '.' || p.proname || '('
                    || array_to_string(array(select t.typname
                                             from unnest(p.proargtypes) with ordinality a(oid, i)
                                             join pg_type t on t.oid = a.oid order by a.i), ',') || ')'
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = any(%s) and p.prosecdef and has_function_privilege('anon', p.oid, 'EXECUTE')
           order by 1""",
        list(schemas.exposed),
    )
    return [name for name in found if name not in meant]


def tables_without_primary_key(db: Conn, schemas: Schemas) -> list[str]:
    """0004: a table without a primary key has no stable way to name a row (replication, Realtime
    changes, PostgREST's updates of one row)."""
    return names(
        db,
        """select format('%%I.%%I', n.nspname, c.relname)
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = any(%s) and c.relkind in ('r', 'p')
             and not exists (select from pg_constraint k where k.conrelid = c.oid and k.contype = 'p')
           order by 1""",
        list(schemas.ours),
    )


USER_METADATA = r"user_metadata|raw_user_meta_data"


def policies_reading_user_metadata(db: Conn, schemas: Schemas) -> list[str]:
    """0015: user_metadata (auth.users.raw_user_meta_data, the token's `user_metadata`) is
    whatever the user last wrote there; a policy, or a function a policy calls, must not trust
    it (any schema)."""
    return names(
        db,
        """select format('%%I.%%I: %%s', n.nspname, c.relname, p.polname)
           from pg_policy p
           join pg_class c on c.oid = p.polrelid
           join pg_namespace n on n.oid = c.relnamespace
           where coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' '
                   || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') ~* %s
              or exists (select from pg_depend d join pg_proc f on f.oid = d.refobjid
                         where d.classid = 'pg_policy'::regclass and d.objid = p.oid
                           and d.refclassid = 'pg_proc'::regclass and f.prosrc ~* %s)
           order by 1""",
        USER_METADATA,
        USER_METADATA,
    )


# Findings that are deliberate, each with why (lint -> finding -> reason).
ALLOWED: dict[str, dict[str, str]] = {
    "function_search_path_mutable": {
        # SQL functions without a SET clause so that PostgreSQL inlines them into the security
        # invoker views that call them (a SET clause forbids inlining; the views' filters then reach
        # the tables' indexes). They run with the reader's rights and name everything
        # schema-qualified, so a search_path can only mislead the reader's own query.
        "mycelium_private.credit_activity(p_period text)": "inlined into credit_*_activity",
        "mycelium_private.provider_earnings_with_periods(p_period text)": "inlined into provider_earnings_*",
        "mycelium_private.provider_income()": "inlined into provider_earnings_by_product",
        "mycelium_private.divide_rounded(a numeric, b numeric, p_scale integer)": "inlined arithmetic",
    },
    "unindexed_foreign_keys": {
        # The ledger's transfers are append-only (transfers_append_only refuses every update and
        # delete), so the key is never checked from the transfers' side, and nothing looks lots up
        # by their transfer: an index would only cost each purchase and grant that opens a lot.
        "public.credit_lots.credit_lots_source_transfer_id_fkey (source_transfer_id)": "append-only target",
        # Products are never deleted (products_no_delete) and their id never changes
        # (check_product), and nothing looks a legacy product up by the product it became.
        "mycelium_private.legacy_products.legacy_products_product_id_fkey (product_id)": "products stay",
    },
}


@dataclass(frozen=True)
class Rule:
    title: str
    query: Lint


LINTS = {
    "rls_disabled_in_public": Rule("tables in exposed schemas without row level security", rls_disabled),
    "policy_exists_rls_disabled": Rule(
        "tables with policies but row level security off", policies_without_rls
    ),
    "security_definer_view": Rule(
        "views in exposed schemas run with their owner's rights", owner_rights_views
    ),
    "function_search_path_mutable": Rule(
        "functions others may start without a pinned search_path", mutable_search_path
    ),
    "auth_users_exposed": Rule("views or functions exposing auth.users to API roles", auth_users_exposed),
    "extension_in_public": Rule("extensions in exposed schemas", extensions_in_exposed_schemas),
    "unindexed_foreign_keys": Rule("foreign keys no index leads with", unindexed_foreign_keys),
    "auth_rls_initplan": Rule(
        "policies evaluating auth.*() or current_setting() per row", per_row_auth_calls
    ),
    "multiple_permissive_policies": Rule(
        "tables with several permissive policies for one role and action", multiple_permissive_policies
    ),
    "duplicate_index": Rule("tables with identical indexes", duplicate_indexes),
    "view_write_grant_unwritable": Rule(
        "write grants on views that cannot be written", write_grants_on_unwritable_views
    ),
    "anon_security_definer_function_executable": Rule(
        "security definer functions anon may execute, not meant for it", anon_definer_functions
    ),
    "no_primary_key": Rule("tables without a primary key", tables_without_primary_key),
    "rls_references_user_metadata": Rule(
        "policies trusting user-editable user_metadata", policies_reading_user_metadata
    ),
}


def test_the_lints_look_at_the_served_schemas(schemas: Schemas) -> None:
    assert {"public", "mycelium_gate"} <= set(schemas.exposed)
    assert {"public", "mycelium_gate", "mycelium_private"} <= set(schemas.ours)


@pytest.mark.parametrize("lint", LINTS)
def test_the_schema_passes_the_lint(db: Conn, schemas: Schemas, lint: str) -> None:
    rule = LINTS[lint]
    allowed = ALLOWED.get(lint, {})
    found = rule.query(db, schemas)
    unexplained = [line for line in found if line not in allowed]
    assert not unexplained, offenders(rule.title, unexplained)
    # An exception that no longer fires is one nobody would notice coming back: take it out.
    gone = [line for line in allowed if line not in found]
    assert not gone, offenders(f"allowed {lint} findings no longer found", gone)


# -- each lint finds a bad object ---------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Objects created in the scratch schema, and what the lint must report of them (the good
    twins beside the bad objects must pass)."""

    setup: tuple[str, ...]
    finds: tuple[str, ...]
    # Whether the lint treats the scratch schema as exposed by PostgREST.
    exposed: bool = True


S = SCRATCH
PROBES = {
    "rls_disabled_in_public": Probe(
        (
            f"create table {S}.open_table (id int primary key)",
            f"create table {S}.closed_table (id int primary key)",
            f"alter table {S}.closed_table enable row level security",
        ),
        (f"{S}.open_table",),
    ),
    "policy_exists_rls_disabled": Probe(
        (
            f"create table {S}.forgotten (id int primary key, owner uuid)",
            f"create policy forgotten_own on {S}.forgotten using (owner = (select auth.uid()))",
            f"create table {S}.guarded (id int primary key, owner uuid)",
            f"alter table {S}.guarded enable row level security",
            f"create policy guarded_own on {S}.guarded using (owner = (select auth.uid()))",
        ),
        (f"{S}.forgotten: forgotten_own",),
    ),
    "security_definer_view": Probe(
        (
            f"create view {S}.owner_view as select 1 as one",
            f"create view {S}.invoker_view with (security_invoker = on) as select 1 as one",
            f"create materialized view {S}.snapshot as select 1 as one",
        ),
        (f"{S}.owner_view", f"{S}.snapshot"),
    ),
    "function_search_path_mutable": Probe(
        (
            f"create function {S}.open_helper() returns int language plpgsql as 'begin return 1; end'",
            f"create function {S}.owner_helper() returns int language plpgsql as 'begin return 1; end'",
            f"revoke execute on function {S}.owner_helper() from public",
            f"create function {S}.definer() returns int language sql security definer as 'select 1'",
            f"revoke execute on function {S}.definer() from public",
            f"create function {S}.on_write() returns trigger language plpgsql as 'begin return new; end'",
            f"revoke execute on function {S}.on_write() from public",
            f"create function {S}.pinned() returns int language sql set search_path = '' as 'select 1'",
        ),
        (f"{S}.definer()", f"{S}.on_write()", f"{S}.open_helper()"),
        exposed=False,
    ),
    "auth_users_exposed": Probe(
        (
            f"create view {S}.members with (security_invoker = on) as select id, email from auth.users",
            f"grant select on {S}.members to authenticated",
            f"create view {S}.hidden_members as select id from auth.users",
            f"create function {S}.member_rows() returns setof auth.users language sql"
            " as 'select * from auth.users'",
        ),
        (f"function {S}.member_rows()", f"view {S}.members"),
    ),
    "extension_in_public": Probe(
        (f"create extension tsm_system_rows schema {S}",),
        (f"tsm_system_rows in {S}",),
    ),
    "unindexed_foreign_keys": Probe(
        (
            f"create table {S}.parents (a int, b int, primary key (a, b))",
            f"create table {S}.children (id int primary key, a int, b int,"
            f" foreign key (a, b) references {S}.parents)",
            f"create table {S}.indexed_children (id int primary key, a int, b int,"
            f" foreign key (a, b) references {S}.parents)",
            f"create index on {S}.indexed_children (b, a, id)",
            f"create table {S}.partly_indexed_children (id int primary key, a int, b int,"
            f" foreign key (a, b) references {S}.parents)",
            f"create index on {S}.partly_indexed_children (a)",
            f"create index on {S}.partly_indexed_children (a, b) where a > 0",
        ),
        (
            f"{S}.children.children_a_b_fkey (a, b)",
            f"{S}.partly_indexed_children.partly_indexed_children_a_b_fkey (a, b)",
        ),
    ),
    "auth_rls_initplan": Probe(
        (
            f"create table {S}.notes (id int primary key, owner uuid)",
            f"alter table {S}.notes enable row level security",
            f"create policy notes_per_row on {S}.notes for select using (owner = auth.uid())",
            f"create policy notes_once on {S}.notes for update using (owner = (select auth.uid()))",
            f"create policy notes_claims on {S}.notes for insert"
            " with check (current_setting('request.jwt.claims', true) is not null)",
            f"create policy notes_mixed on {S}.notes for delete"
            " using (owner = (select auth.uid()) or auth.jwt() ->> 'role' = 'service_role')",
            f"create policy notes_subquery on {S}.notes as restrictive for select using"
            f" (exists (select from {S}.notes n where n.owner = auth.uid()))",
        ),
        (
            f"{S}.notes: notes_claims",
            f"{S}.notes: notes_mixed",
            f"{S}.notes: notes_per_row",
            f"{S}.notes: notes_subquery",
        ),
    ),
    "multiple_permissive_policies": Probe(
        (
            f"create table {S}.posts (id int primary key, owner uuid, public boolean)",
            f"alter table {S}.posts enable row level security",
            f"create policy posts_own on {S}.posts for select to authenticated"
            " using (owner = (select auth.uid()))",
            f"create policy posts_public on {S}.posts using (public)",
            f"create policy posts_not_banned on {S}.posts as restrictive for select using (true)",
        ),
        (f"{S}.posts for authenticated SELECT: posts_own, posts_public",),
    ),
    "duplicate_index": Probe(
        (
            f"create table {S}.things (id int primary key, label text)",
            f"create index things_label_a on {S}.things (label)",
            f"create index things_label_b on {S}.things (label)",
            f"create index things_label_set on {S}.things (label) where label is not null",
            f"create index things_label_desc on {S}.things (label desc)",
        ),
        (f"{S}.things: things_label_a, things_label_b",),
    ),
    "view_write_grant_unwritable": Probe(
        (
            f"create table {S}.things (id int primary key)",
            f"create view {S}.totals as select count(*) as n from {S}.things",
            f"grant select, insert, update, delete on {S}.totals to authenticated",
            f"create view {S}.plain as select id from {S}.things",
            f"grant select, insert, update, delete on {S}.plain to authenticated",
        ),
        (
            f"{S}.totals: authenticated DELETE",
            f"{S}.totals: authenticated INSERT",
            f"{S}.totals: authenticated UPDATE",
        ),
    ),
    "anon_security_definer_function_executable": Probe(
        (
            f"create function {S}.open_definer(int) returns int language sql security definer"
            " set search_path = '' as 'select 1'",
            f"create function {S}.closed_definer() returns int language sql security definer"
            " set search_path = '' as 'select 1'",
            f"revoke execute on function {S}.closed_definer() from public",
            f"create function {S}.invoker() returns int language sql set search_path = '' as 'select 1'",
        ),
        (f"{S}.open_definer(int4)",),
    ),
    "no_primary_key": Probe(
        (f"create table {S}.loose (x int)", f"create table {S}.keyed (x int primary key)"),
        (f"{S}.loose",),
    ),
    "rls_references_user_metadata": Probe(
        (
            f"create table {S}.secrets (id int primary key, owner uuid)",
            f"alter table {S}.secrets enable row level security",
            f"create policy secrets_claimed_admin on {S}.secrets for select"
            " using (((select auth.jwt()) -> 'user_metadata' ->> 'admin') = 'true')",
            f"create function {S}.says_admin() returns boolean language sql stable set search_path = ''"
            " as $$ select coalesce((select u.raw_user_meta_data ->> 'admin' from auth.users u"
            " where u.id = auth.uid()), '') = 'true' $$",
            f"create policy secrets_admin_helper on {S}.secrets for update using ((select {S}.says_admin()))",
            f"create policy secrets_own on {S}.secrets for delete using (owner = (select auth.uid()))",
        ),
        (f"{S}.secrets: secrets_admin_helper", f"{S}.secrets: secrets_claimed_admin"),
    ),
}


def test_every_lint_has_a_probe() -> None:
    assert set(PROBES) == set(LINTS)


@pytest.mark.parametrize("lint", LINTS)
def test_the_lint_finds_a_bad_object(db: Conn, lint: str) -> None:
    """In a transaction rolled back: nothing of the probe stays."""
    probe = PROBES[lint]
    scratch = Schemas(exposed=(SCRATCH,) if probe.exposed else (), ours=(SCRATCH,))
    with db.transaction():
        db.execute(f"create schema {SCRATCH}")
        for statement in probe.setup:
            db.execute(statement)
        found = [line for line in LINTS[lint].query(db, scratch) if SCRATCH in line]
        assert found == list(probe.finds)
        raise psycopg.Rollback
