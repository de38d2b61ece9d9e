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


def postgrest_call(function: str, arguments: dict[str, str], schema: str = "public") -> str:
    """PostgREST 12's query for a POST to rpc/`function` of `schema` with a JSON body (:body), its
    named `arguments` (name: SQL type) read with json_to_record, a scalar result."""
    names = ", ".join(arguments)
    columns = ", ".join(f"{name} {kind}" for name, kind in arguments.items())
    named = ", ".join(f"{name} := pgrst_body.{name}" for name in arguments)
    return f"""with pgrst_source as (
  select pgrst_call.pgrst_scalar
  from (select :body::json as json_data) pgrst_payload,
  lateral (select {names} from json_to_record(pgrst_payload.json_data) as _({columns}) limit 1)
    pgrst_body,
  lateral (select {schema}.{function}({named}) pgrst_scalar) pgrst_call
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


def rest_transfer(
    protocol: Protocol,
    *,
    with_key: bool = True,
    with_pre_request: bool = True,
    function: str = "transfer_credits",
    schema: str = "public",
) -> str:
    """The PostgREST-shaped transfer; bench/profile_ledger.py leaves out its idempotency key or its
    pre-request to price them, and calls the bounds (BOUNDS) in the same shape."""
    key = ", 'idempotency_key', gen_random_uuid()" if with_key else ""
    request = f"json_build_object('recipient', r.id, 'amount', '0.01'{key})::text"
    arguments = {"recipient": "uuid", "amount": "numeric"} | ({"idempotency_key": "text"} if with_key else {})
    pre_request = "select mycelium_gate.check_caller();\n" if with_pre_request else ""
    return f"""
\\set a random(1, :accounts)
\\set b random(1, :accounts - 1)
\\set r 1 + (:a + :b - 1) % :accounts
begin isolation level read committed read write;
{postgrest_settings("authenticated", USER_CLAIMS, function)},
  (select {gset_value(request, protocol)} from mycelium_bench.users r where r.n = :r) as body \\gset
{pre_request}{postgrest_call(function, arguments, schema)}
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


def balances_moved(function: str, accounts: str = "mycelium_bench.accounts", ledger: bool = False) -> str:
    """The PL/pgSQL that moves `function`'s amount from v_sender to recipient on `accounts`, in
    user_id order, into v_from and v_to: each bound's shared middle. `ledger`: as create_transfer
    does it on the ledger's accounts (their updated_at, a sender without expiring credits)."""
    touched = ", updated_at = now()" if ledger else ""
    plain = " and a.expiring = 0" if ledger else ""
    credit = f"""update {accounts} a set balance = a.balance + {function}.amount{touched}
    where a.user_id = recipient returning a.balance into v_to;"""
    return f"""if v_sender > recipient then
    {credit}
  end if;
  update {accounts} a set balance = a.balance - {function}.amount{touched}
  where a.user_id = v_sender{plain} and a.balance >= {function}.amount returning a.balance into v_from;
  if not found then
    raise exception 'insufficient credits';
  end if;
  if v_sender < recipient then
    {credit}
  end if;"""


# Bounds, not products: what PostgREST's shape leaves a transfer at most (bench/profile_ledger.py).
# Each is called like transfer_credits (security definer, search_path pinned, as `authenticated`
# with the pre-request), so that only what the call does differs:
# - nothing: the call returns its arguments and touches no table; no RPC through PostgREST's shape
#   can be faster;
# - least_transfer: the least a double-entry transfer writes, on tables of its own: the sender's
#   balance taken with its credit check and the recipient's given, in user_id order, and one entry
#   each with the balance it produced, indexed for each user's history. No argument checks, no
#   audit columns. Given an idempotency key it first claims it in a row of its own (the movement,
#   once); with BOUNDS_BROADCAST enabled each balance change is sent through realtime.send, as
#   the ledger's trigger does, with only the balance in the message;
# - one_row_transfer: the same with one row a movement instead of a key row and two entries: the
#   key, both users and the balance each side ended with, indexed for each side's history (fewer
#   rows and index entries, the issue's own candidate);
# - ledger_transfer: the same steps on the ledger's own tables, its rows as create_transfer writes
#   them (the transfer row with its audit columns and retry key, the accounts with their broadcast
#   trigger, the entries), without transfer_credits' argument checks, its calls of create_transfer
#   and movement_object, and their answer.
BOUNDS_BROADCAST = "accounts_broadcast_balance"
BOUNDS_BALANCE = 1_000_000
BOUNDS_SQL = f"""
create table mycelium_bench.accounts (user_id uuid primary key, balance numeric not null check (balance >= 0))
  with (fillfactor = 70);
insert into mycelium_bench.accounts select id, {BOUNDS_BALANCE} from mycelium_bench.users;
create table mycelium_bench.movements (
  id uuid primary key default gen_random_uuid(),
  retry_key text not null unique,
  created_at timestamptz not null default now());
create table mycelium_bench.entries (
  id bigint generated always as identity primary key,
  movement_id uuid,
  user_id uuid not null,
  amount numeric not null,
  balance_after numeric not null,
  created_at timestamptz not null default now());
create index on mycelium_bench.entries (user_id, created_at);
create table mycelium_bench.movement_rows (
  id bigint generated always as identity primary key,
  retry_key text not null unique,
  from_user uuid not null,
  to_user uuid not null,
  amount numeric not null,
  from_balance numeric not null,
  to_balance numeric not null,
  created_at timestamptz not null default now());
create index on mycelium_bench.movement_rows (from_user, created_at);
create index on mycelium_bench.movement_rows (to_user, created_at);

create function mycelium_bench.nothing(recipient uuid, amount numeric) returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  return jsonb_build_object('recipient', recipient, 'amount', amount);
end;
$$;

create function mycelium_bench.least_transfer(
  recipient uuid, amount numeric, idempotency_key text default null) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_sender uuid := auth.uid();
  v_movement uuid;
  v_from numeric;
  v_to numeric;
begin
  if idempotency_key is not null then
    insert into mycelium_bench.movements (retry_key) values (v_sender::text || ':' || idempotency_key)
    on conflict (retry_key) do nothing returning id into v_movement;
    if v_movement is null then
      return (select jsonb_build_object('replayed', m.id) from mycelium_bench.movements m
              where m.retry_key = v_sender::text || ':' || idempotency_key);
    end if;
  end if;
  {balances_moved("least_transfer")}
  insert into mycelium_bench.entries (movement_id, user_id, amount, balance_after)
  values (v_movement, v_sender, -least_transfer.amount, v_from),
         (v_movement, recipient, least_transfer.amount, v_to);
  return jsonb_build_object('movement_id', v_movement, 'from_balance', v_from);
end;
$$;

create function mycelium_bench.one_row_transfer(
  recipient uuid, amount numeric, idempotency_key text) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_sender uuid := auth.uid();
  v_key text := v_sender::text || ':' || idempotency_key;
  v_movement bigint;
  v_from numeric;
  v_to numeric;
begin
  if exists (select 1 from mycelium_bench.movement_rows m where m.retry_key = v_key) then
    return (select jsonb_build_object('replayed', m.id)
            from mycelium_bench.movement_rows m where m.retry_key = v_key);
  end if;
  {balances_moved("one_row_transfer")}
  -- A concurrent retry with the same key fails here (unique violation) and moves nothing; retried
  -- again, it finds this movement above.
  insert into mycelium_bench.movement_rows (retry_key, from_user, to_user, amount, from_balance, to_balance)
  values (v_key, v_sender, recipient, one_row_transfer.amount, v_from, v_to)
  returning id into v_movement;
  return jsonb_build_object('movement_id', v_movement, 'from_balance', v_from);
end;
$$;

create function mycelium_bench.ledger_transfer(
  recipient uuid, amount numeric, idempotency_key text default null) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_sender uuid := auth.uid();
  v_movement uuid;
  v_at timestamptz;
  v_from numeric;
  v_to numeric;
begin
  insert into mycelium_private.transfers as t
    (kind, from_user, to_user, amount, reference, initiated_by, initiated_role)
  values ('transfer', v_sender, recipient, ledger_transfer.amount, idempotency_key, v_sender,
          mycelium_private.caller_role())
  on conflict (retry_key) where retry_key is not null do nothing
  returning t.id, t.created_at into v_movement, v_at;
  if v_movement is null then
    return jsonb_build_object('replayed', true);
  end if;
  {balances_moved("ledger_transfer", "public.credit_accounts", ledger=True)}
  insert into public.credit_transactions
    (transfer_id, user_id, amount, kind, balance_after, counterparty_id, memo, reference)
  values
    (v_movement, v_sender, -ledger_transfer.amount, 'transfer_out', v_from, recipient, null, idempotency_key),
    (v_movement, recipient, ledger_transfer.amount, 'transfer_in', v_to, v_sender, null, null);
  return jsonb_build_object('transfer_id', v_movement, 'created_at', v_at, 'from_balance', v_from);
end;
$$;

create function mycelium_bench.send_balance() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform realtime.send(jsonb_build_object('user_id', new.user_id, 'balance', new.balance),
    'balance_changed', 'balance:' || new.user_id::text, true);
  return null;
end;
$$;
create trigger {BOUNDS_BROADCAST} after update of balance on mycelium_bench.accounts
  for each row execute function mycelium_bench.send_balance();
alter table mycelium_bench.accounts disable trigger {BOUNDS_BROADCAST};

grant usage on schema mycelium_bench to authenticated;
grant execute on function mycelium_bench.nothing(uuid, numeric),
  mycelium_bench.least_transfer(uuid, numeric, text), mycelium_bench.one_row_transfer(uuid, numeric, text),
  mycelium_bench.ledger_transfer(uuid, numeric, text) to authenticated;
"""


def install_bounds(conn: psycopg.Connection[Any]) -> None:
    """BOUNDS in mycelium_bench (after number_users), for rest_transfer(function=..., schema=
    "mycelium_bench")."""
    conn.execute(BOUNDS_SQL.encode())


# What would make a bound's rate a false one, counted: an account whose balance is not its
# starting one plus its entries, a movement without exactly two entries summing to zero.
BOUNDS_PROBLEMS = f"""
with moved (user_id, amount) as (
  select e.user_id, e.amount from mycelium_bench.entries e
  union all select m.from_user, -m.amount from mycelium_bench.movement_rows m
  union all select m.to_user, m.amount from mycelium_bench.movement_rows m)
select (select count(*) from mycelium_bench.accounts a
        left join (select m.user_id, sum(m.amount) as total from moved m group by m.user_id) m
          on m.user_id = a.user_id
        where a.balance <> {BOUNDS_BALANCE} + coalesce(m.total, 0))
     + (select count(*) from (
          select m.id from mycelium_bench.movements m
          left join mycelium_bench.entries e on e.movement_id = m.id
          group by m.id having count(e.id) <> 2 or coalesce(sum(e.amount), 0) <> 0) as unbalanced)
     + (select count(*) from mycelium_bench.entries e
        where e.movement_id is not null
          and not exists (select 1 from mycelium_bench.movements m where m.id = e.movement_id))
"""


def bounds_problems(conn: psycopg.Connection[Any]) -> int:
    """BOUNDS_PROBLEMS' count: 0 when the bounds moved credits as a ledger must."""
    row = conn.execute(BOUNDS_PROBLEMS.encode()).fetchone()
    assert row is not None
    return int(row[0])
