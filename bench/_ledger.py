"""The ledger's direct-SQL load, shared by bench/ledger.py (rates) and bench/profile_ledger.py (where
a transfer's time goes): pgbench scripts over bench users numbered in mycelium_bench.users(n, id).

Two shapes of call:
- bare: one statement as the migration role, the claims set inside it, no idempotency key: the
  ledger's own work and nothing else;
- PostgREST-shaped (`rest_*`): what PostgREST 12 sends the database for one RPC, in one
  transaction: BEGIN; one statement of set_config (search_path, role, request.jwt.claims,
  request.method, request.path, request.headers, request.cookies); the pre-request
  (mycelium_gate.check_caller()); the call, its arguments read from a JSON body with
  json_to_record, its result aggregated to JSON; COMMIT. The transfer carries an idempotency key,
  as mycelium_client sends one with every transfer; the purchase its payment reference. The first
  statement also reads the bench users' ids and builds the body (`\\gset`), as PostgREST would have
  them from the request: one lookup of a 1,000-row table, a small cost PostgREST does not pay.
"""

from __future__ import annotations

from typing import Any

import psycopg

from bench._load import WORKERS, Protocol, gset_value, script_rate

# What a request through the gateway carries in its headers (lower-cased, as PostgREST sets
# request.headers): the size of a real one, a signed-in user's bearer token included.
REQUEST_HEADERS = (
    '{"host": "127.0.0.1:8000", "user-agent": "mycelium-client/1.0", "accept": "application/json", '
    '"content-type": "application/json", "content-length": "120", "prefer": "return=representation", '
    '"apikey": "' + "a" * 180 + '", "authorization": "Bearer ' + "b" * 300 + '", '
    '"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http", "x-forwarded-host": "127.0.0.1"}'
)


def postgrest_settings(role: str, claims: str, function: str) -> str:
    """The select list of PostgREST's per-request set_config statement; `claims` is an SQL
    expression of the JWT's claims as text."""
    return (
        "select set_config('search_path', '\"public\", \"extensions\"', true), "
        f"set_config('role', '{role}', true), "
        f"set_config('request.jwt.claims', {claims}, true), "
        "set_config('request.method', 'POST', true), "
        f"set_config('request.path', '/rpc/{function}', true), "
        f"set_config('request.headers', '{REQUEST_HEADERS}', true), "
        "set_config('request.cookies', '{}', true)"
    )


def postgrest_call(function: str, arguments: dict[str, str]) -> str:
    """PostgREST 12's query for a POST to rpc/`function` with a JSON body (:body), its named
    `arguments` (name: SQL type) read with json_to_record, a scalar result."""
    names = ", ".join(arguments)
    columns = ", ".join(f"{name} {kind}" for name, kind in arguments.items())
    named = ", ".join(f"{name} := pgrst_body.{name}" for name in arguments)
    return f"""with pgrst_source as (
  select pgrst_call.pgrst_scalar
  from (select :body::json as json_data) pgrst_payload,
  lateral (select {names} from json_to_record(pgrst_payload.json_data) as _({columns}) limit 1)
    pgrst_body,
  lateral (select public.{function}({named}) pgrst_scalar) pgrst_call
)
select null::bigint as total_result_set, pg_catalog.count(_postgrest_t) as page_total,
       coalesce((json_agg(_postgrest_t.pgrst_scalar) -> 0)::text, 'null') as body,
       nullif(current_setting('response.headers', true), '') as response_headers,
       nullif(current_setting('response.status', true), '') as response_status
from (select pgrst_source.pgrst_scalar from pgrst_source) _postgrest_t;"""


USER_CLAIMS = (
    "(select json_build_object('aud', 'authenticated', 'exp', 4102444800, 'sub', s.id, 'email', '', "
    "'role', 'authenticated', 'aal', 'aal1', 'is_anonymous', false)::text "
    "from mycelium_bench.users s where s.n = :a)"
)
SERVICE_CLAIMS = '\'{"iss": "supabase", "role": "service_role", "exp": 4102444800}\''


def rest_transfer(protocol: Protocol, *, with_key: bool = True, with_pre_request: bool = True) -> str:
    """The PostgREST-shaped transfer; bench/profile_ledger.py leaves out its idempotency key or its
    pre-request to price them."""
    key = ", 'idempotency_key', gen_random_uuid()" if with_key else ""
    request = f"json_build_object('recipient', r.id, 'amount', '0.01'{key})::text"
    arguments = {"recipient": "uuid", "amount": "numeric"} | ({"idempotency_key": "text"} if with_key else {})
    pre_request = "select mycelium_gate.check_caller();\n" if with_pre_request else ""
    return f"""
\\set a random(1, :accounts)
\\set b random(1, :accounts - 1)
\\set r 1 + (:a + :b - 1) % :accounts
begin isolation level read committed read write;
{postgrest_settings("authenticated", USER_CLAIMS, "transfer_credits")},
  (select {gset_value(request, protocol)} from mycelium_bench.users r where r.n = :r) as body \\gset
{pre_request}{postgrest_call("transfer_credits", arguments)}
commit;
"""


def rest_purchase(protocol: Protocol) -> str:
    request = (
        "json_build_object('user_id', u.id, 'usd_amount', '1', "
        "'payment_reference', 'bench-' || gen_random_uuid())::text"
    )
    arguments = {"user_id": "uuid", "usd_amount": "numeric", "payment_reference": "text"}
    return f"""
\\set a random(1, :accounts)
begin isolation level read committed read write;
{postgrest_settings("service_role", SERVICE_CLAIMS, "purchase_credits")},
  (select {gset_value(request, protocol)} from mycelium_bench.users u where u.n = :a) as body \\gset
select mycelium_gate.check_caller();
{postgrest_call("purchase_credits", arguments)}
commit;
"""


SQL_SCRIPTS = {
    "transfer": """
\\set a random(1, :accounts)
\\set b random(1, :accounts - 1)
\\set r 1 + (:a + :b - 1) % :accounts
select set_config('request.jwt.claims', json_build_object('sub', s.id, 'role', 'authenticated')::text, true),
       public.transfer_credits(r.id, 0.01)
from mycelium_bench.users s, mycelium_bench.users r where s.n = :a and r.n = :r;
""",
    "hot": """
\\set a random(1, :accounts - 1)
select set_config('request.jwt.claims', json_build_object('sub', s.id, 'role', 'authenticated')::text, true),
       public.transfer_credits(r.id, 0.01)
from mycelium_bench.users s, mycelium_bench.users r where s.n = :a and r.n = :accounts;
""",
    # Not a transfer: one row updated by every client, each update its own transaction. The bare
    # chain of lock handoffs and commit flushes, the floor under any chain into one account here.
    "floor": """
update mycelium_bench.chain_floor set updates = updates + 1 where id = 1;
""",
    "purchase": """
\\set a random(1, :accounts)
select public.purchase_credits(s.id, 1, 'bench-' || gen_random_uuid())
from mycelium_bench.users s where s.n = :a;
""",
}
REST_SCRIPTS = {"rest_transfer": rest_transfer, "rest_purchase": rest_purchase}
KINDS = [*SQL_SCRIPTS, *REST_SCRIPTS]


def script(kind: str, protocol: Protocol) -> str:
    """The pgbench script of `kind` (SQL_SCRIPTS', REST_SCRIPTS') sent in `protocol`."""
    return REST_SCRIPTS[kind](protocol) if kind in REST_SCRIPTS else SQL_SCRIPTS[kind]


def sql_rate(
    db_url: str,
    kind: str,
    accounts: int,
    seconds: float,
    protocol: Protocol = "prepared",
    clients: int = WORKERS,
) -> float:
    return script_rate(db_url, script(kind, protocol), {"accounts": accounts}, seconds, protocol, clients)


def number_users(conn: psycopg.Connection[Any], users: list[str]) -> None:
    """mycelium_bench: the users numbered from 1 (the scripts pick them by number), and the row
    every client of the chain floor updates. Bench data, for the migration role only: the
    PostgREST-shaped scripts read it in the statement that switches roles, checked before it runs."""
    conn.execute("drop schema if exists mycelium_bench cascade")
    conn.execute("create schema mycelium_bench")
    conn.execute("create table mycelium_bench.users (n integer primary key, id uuid not null)")
    conn.execute(
        "insert into mycelium_bench.users select n, id from unnest(%s::uuid[]) with ordinality u(id, n)",
        (users,),
    )
    conn.execute("create table mycelium_bench.chain_floor (id integer primary key, updates bigint)")
    conn.execute("insert into mycelium_bench.chain_floor values (1, 0)")
    conn.execute("grant usage on schema mycelium_bench to postgres")
    conn.execute("grant select on mycelium_bench.users to postgres")
    conn.execute("grant select, update on mycelium_bench.chain_floor to postgres")
