"""Who may call what, held to one list: `sql/privileges.manifest` equals the catalog's grants in
both directions, and every refusal it implies is tried through PostgREST, as anon, as a signed-in
user and with the service key, the way an attacker would try it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.support import Api, User, body
from tests.support.privileges import API_ROLES, SCHEMAS, TABLE_PRIVILEGES, Line, catalog_grants, read_manifest

Conn = psycopg.Connection[TupleRow]
MakeUser = Callable[..., User]

MANIFEST = read_manifest()


def test_the_catalog_grants_exactly_what_the_manifest_lists(db: Conn) -> None:
    granted = catalog_grants(db)
    unlisted = [Line(*key, granted[key]).render() for key in sorted(granted.keys() - MANIFEST.keys())]
    gone = [name for _, name in sorted(MANIFEST.keys() - granted.keys())]
    changed = [
        Line(*key, granted[key]).render()
        for key in sorted(granted.keys() & MANIFEST.keys())
        if granted[key] != MANIFEST[key]
    ]
    assert not unlisted, "objects without a line in sql/privileges.manifest; add:\n" + "\n".join(unlisted)
    assert not gone, f"lines in sql/privileges.manifest for objects that do not exist: {gone}"
    assert not changed, "the catalog grants other privileges than the manifest says:\n" + "\n".join(changed)


def test_every_security_definer_function_pins_its_search_path(db: Conn) -> None:
    loose = db.execute(
        """select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = any(%s) and p.prosecdef
             and not coalesce(p.proconfig, '{}') @> array['search_path=""']""",
        ([*SCHEMAS, "mycelium_private"],),
    ).fetchall()
    assert loose == []


# -- every refusal, through PostgREST --------------------------------------------------------
def refused(response: httpx.Response) -> bool:
    """PostgreSQL's own refusal (insufficient_privilege): 401 without a user, 403 with one."""
    return response.status_code in (401, 403) and body(response).get("code") == "42501"


def exposed(kinds: tuple[str, ...], *, refusing: tuple[str, ...]) -> list[Any]:
    """The manifest's objects in `public` (what PostgREST serves) of those kinds that refuse one of
    the `refusing` privileges to some API role."""
    return [
        pytest.param(name, grants, id=name)
        for (kind, name), grants in MANIFEST.items()
        if kind in kinds
        and name.startswith("public.")
        and any(privilege not in grants[role] for role in API_ROLES for privilege in refusing)
    ]


@pytest.fixture
def apis(anon_api: Api, service_api: Api, make_user: MakeUser) -> dict[str, Api]:
    return {"anon": anon_api, "authenticated": make_user().api, "service_role": service_api}


def writable_columns(db: Conn, relation: str) -> list[str]:
    """Columns a request may name in a write: PostgreSQL refuses a value for an identity or a
    generated column before it checks privileges, which would hide the refusal under test."""
    rows = db.execute(
        """select attname from pg_attribute
           where attrelid = %s::regclass and attnum > 0 and not attisdropped
             and attidentity = '' and attgenerated = ''
           order by attnum""",
        (relation,),
    ).fetchall()
    return [str(name) for (name,) in rows]


def attempt(api: Api, privilege: str, path: str, column: str) -> httpx.Response:
    """A request that needs `privilege` on `column` of the relation at `path`."""
    if privilege == "select":
        return api.get(path, select=column, limit=1)
    if privilege == "insert":
        return api.post(path, {column: None})
    if privilege == "update":
        return api.patch(path, {column: None}, **{column: "is.null"})
    return api.delete(path, **{column: "is.null"})


@pytest.mark.parametrize(("name", "grants"), exposed(("table", "view"), refusing=TABLE_PRIVILEGES))
def test_tables_and_views_refuse_what_the_manifest_does_not_grant(
    db: Conn, apis: dict[str, Api], name: str, grants: dict[str, frozenset[str]]
) -> None:
    columns = writable_columns(db, name)
    path = "/" + name.removeprefix("public.")
    for role in API_ROLES:
        for privilege in TABLE_PRIVILEGES:
            if privilege in grants[role]:
                continue
            limited = next((g for g in grants[role] if g.startswith(f"{privilege}(")), None)
            allowed = set(limited[len(privilege) + 1 : -1].split(",")) if limited else set()
            # A privilege granted on some columns is still refused on the others.
            column = next(c for c in columns if c not in allowed)
            response = attempt(apis[role], privilege, path, column)
            assert refused(response), (role, privilege, column, response.status_code, response.text)


@pytest.mark.parametrize(("name", "grants"), exposed(("function",), refusing=("execute",)))
def test_functions_refuse_the_roles_the_manifest_does_not_list(
    db: Conn, apis: dict[str, Api], name: str, grants: dict[str, frozenset[str]]
) -> None:
    denied_to = [role for role in API_ROLES if "execute" not in grants[role]]
    proname = name.removeprefix("public.").split("(", 1)[0]
    # Every input argument as null: PostgREST finds the function by its argument names, and the
    # privilege check comes before the function could look at a value.
    inputs = db.execute(
        """select a.name from pg_proc p,
                  unnest(p.proargnames, coalesce(p.proargmodes, array_fill('i'::"char", array[p.pronargs])))
                    as a(name, mode)
           where p.oid = to_regprocedure(%s) and a.mode in ('i', 'b')""",
        (name,),
    ).fetchall()
    arguments = {str(argument): None for (argument,) in inputs}
    for role in denied_to:
        response = apis[role].rpc(proname, **arguments)
        assert refused(response), (role, response.status_code, response.text)
