"""The privilege manifest (`sql/privileges.manifest`): who may do what on every table, view and
function the API roles can reach, one line an object, read back and compared with the catalog.

A line reads `kind object anon authenticated service_role`; each role's column is `-` or
privileges separated by commas, a privilege limited to some columns naming them in brackets:
    table     public.products   select   select,insert(name,price),update(price)   select
Functions are named by their argument types' internal names (`timestamptz`, `int4`), which hold
no spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from tests.support import REPO

MANIFEST = REPO / "sql" / "privileges.manifest"
API_ROLES = ("anon", "authenticated", "service_role")
# The schemas whose objects the API roles reach: PostgREST exposes `public` and runs the request
# gate from `mycelium_gate`.
SCHEMAS = ("public", "mycelium_gate")
TABLE_PRIVILEGES = ("select", "insert", "update", "delete")
PRIVILEGE = re.compile(r"(\w+)(?:\(([^)]*)\))?")

# (kind, object) -> role -> privileges, each "select" or "update(a,b)"
Grants = dict[tuple[str, str], dict[str, frozenset[str]]]


@dataclass(frozen=True)
class Line:
    kind: str
    name: str
    grants: dict[str, frozenset[str]]

    def render(self) -> str:
        anon, authenticated, service_role = (",".join(sorted(self.grants[role])) or "-" for role in API_ROLES)
        return f"{self.kind:<9} {self.name:<58} {anon:<8} {authenticated:<28} {service_role}"


def parse_privileges(text: str) -> frozenset[str]:
    if text == "-":
        return frozenset()
    found = PRIVILEGE.findall(text)
    return frozenset(name if not columns else f"{name}({columns})" for name, columns in found)


def read_manifest(path: Path = MANIFEST) -> Grants:
    grants: Grants = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2 + len(API_ROLES):
            raise ValueError(f"{path.name}:{number}: want kind, object and one column per API role")
        kind, name, *columns = fields
        if (kind, name) in grants:
            raise ValueError(f"{path.name}:{number}: {name} is listed twice")
        grants[(kind, name)] = {
            role: parse_privileges(text) for role, text in zip(API_ROLES, columns, strict=True)
        }
    return grants


def catalog_grants(db: psycopg.Connection[TupleRow]) -> Grants:
    """What the catalog grants the API roles, in the manifest's terms (PUBLIC's grants count for
    every role, as PostgreSQL counts them)."""
    grants: Grants = {}
    relations = db.execute(
        """
        select case c.relkind when 'v' then 'view' when 'm' then 'view' else 'table' end,
               n.nspname || '.' || c.relname, r.role, p.privilege,
               has_table_privilege(r.role, c.oid, p.privilege),
               array(select a.attname::text from pg_attribute a
                     where p.privilege <> 'delete'  -- a privilege of rows, never of columns
                       and a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                       and has_column_privilege(r.role, c.oid, a.attnum, p.privilege)
                     order by a.attnum)
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        cross join unnest(%s::text[]) r(role)
        cross join unnest(%s::text[]) p(privilege)
        where n.nspname = any(%s) and c.relkind in ('r', 'p', 'v', 'm')
        """,
        (list(API_ROLES), list(TABLE_PRIVILEGES), list(SCHEMAS)),
    ).fetchall()
    for kind, name, role, privilege, whole, columns in relations:
        entry = grants.setdefault((str(kind), str(name)), {r: frozenset() for r in API_ROLES})
        if whole:
            entry[str(role)] |= {str(privilege)}
        elif columns:
            entry[str(role)] |= {f"{privilege}({','.join(str(c) for c in columns)})"}
    functions = db.execute(
        """
        select n.nspname || '.' || p.proname || '('
                 || array_to_string(array(select t.typname
                                          from unnest(p.proargtypes) with ordinality a(oid, i)
                                          join pg_type t on t.oid = a.oid order by a.i), ',') || ')',
               r.role, has_function_privilege(r.role, p.oid, 'execute')
        from pg_proc p
        join pg_namespace n on n.oid = p.pronamespace
        cross join unnest(%s::text[]) r(role)
        where n.nspname = any(%s)
        """,
        (list(API_ROLES), list(SCHEMAS)),
    ).fetchall()
    for name, role, allowed in functions:
        entry = grants.setdefault(("function", str(name)), {r: frozenset() for r in API_ROLES})
        if allowed:
            entry[str(role)] |= {"execute"}
    return grants


def render(grants: Grants) -> list[str]:
    return [Line(kind, name, grants[(kind, name)]).render() for kind, name in sorted(grants)]
