"""Ledger benchmark: transfers and purchases per second through direct SQL and through PostgREST,
against pgbench's built-in tpcb-like transactions per second on the same server, plus read
latencies that must not grow with the size of the ledger.

    ./run bench ledger                 # brings up its own local stack, then removes it
    ./run bench ledger --cycles 3      # a quicker, noisier run
    ./run bench ledger --db-url postgresql://postgres@127.0.0.1:54322/postgres
                                       # an existing database: direct SQL and pgbench only

Every figure is measured in this one run. Throughput measures run in short slices, cycling through
the pgbench yardstick and every measure many times; each keeps its mean (a shared machine's outside
load then falls on both sides of a ratio alike). Every direct-SQL measure and the yardstick run in
both of pgbench's protocols, prepared and simple, and each ratio compares two measures sent the same
way. Direct SQL is bare (one statement calling the function) or PostgREST-shaped (the transaction
PostgREST 12 runs for one RPC: role, claims and request settings, its pre-request check, the call;
bench/_ledger.py). Targets (issues 3 and 21), all sent prepared, as PostgREST does:
  PostgREST-shaped spread transfers   >= 0.8 x tpcb-like
  PostgREST-shaped purchases          >= 0.8 x PostgREST-shaped spread transfers
  bare transfers into one account     >= 0.6 x bare spread transfers
  PostgREST through the gateway       >= 0.5 x PostgREST-shaped direct SQL (transfers and purchases)
  balance read        1,000,000 ledger rows / 1,000 ledger rows < 1.2 (each against a trivial read
                      timed alongside: the two are minutes apart, on a machine whose speed varies)
  history page        at depth 100,000 / first page < 1.5
Beside the chain of transfers into one account it prints that chain's floor on the server: one row
updated by every client, nothing else in the transaction (lock handoff and commit flush alone); and
the same contention in pgbench's own workload: tpcb-like with one branch, whose row every
transaction updates, against the spread yardstick.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import psycopg

from bench._cycles import Rate, add_cycle_options, cycled_rates, in_protocol, in_protocols, yardstick_name
from bench._ledger import number_users, sql_rate
from bench._load import PROTOCOLS, WORKERS, Protocol, lua_locals, pgbench_database, tpcb_rate, wrk_rate
from bench._reads import Read, growth, print_reference, timed_reads
from bench._results import run_benchmark
from bench._stack import Target, add_target_options, on_target
from bench._users import create_users, fund
from bench._verdicts import LatencyRow, RateRow, print_latencies, print_rates_by_protocol, ratio

# ---------------------------------------------------------------------------------------------
# Load: pgbench for direct SQL, wrk for PostgREST (both C clients)
# ---------------------------------------------------------------------------------------------


# Direct SQL is driven by pgbench itself (custom scripts, one connection per worker): the same C
# client as the tpcb-like yardstick, so the ratio compares server work, not Python. The scripts,
# bare and PostgREST-shaped, are bench/_ledger.py's.


class WalFlushes:
    """The WAL flushes of the measures it wraps, from pg_stat_wal (their time is 0 where the server
    does not time them: track_wal_io_timing off). Transfers into one account are a chain: each
    waits for the previous one's commit, flush included."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.count = 0
        self.milliseconds = 0.0

    def _totals(self, conn: psycopg.Connection[Any]) -> tuple[int, float]:
        row = conn.execute("select wal_sync, wal_sync_time from pg_stat_wal").fetchone()
        return (int(row[0]), float(row[1])) if row else (0, 0.0)

    def around(self, measure: Callable[[], float]) -> Callable[[], float]:
        def measured() -> float:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                count, milliseconds = self._totals(conn)
                rate = measure()
                count_after, milliseconds_after = self._totals(conn)
            self.count += count_after - count
            self.milliseconds += milliseconds_after - milliseconds
            return rate

        return measured

    @property
    def mean(self) -> float:
        """Milliseconds of one flush, on average."""
        return self.milliseconds / self.count if self.count else 0.0


# PostgREST is driven by wrk: transfers signed by a random user's JWT to another random user, each
# with its idempotency key (mycelium_client sends one with every transfer), and purchases with the
# service_role key, each with a unique payment reference.
HTTP_SCRIPTS = {
    "transfer": """
local sent = 0
request = function()
  local i = math.random(#users)
  local j = math.random(#users - 1)
  if j >= i then j = j + 1 end
  sent = sent + 1
  local key = "bench-" .. RUN .. "-" .. thread_number .. "-" .. sent
  return wrk.format("POST", prefix .. "/rpc/transfer_credits",
    {["apikey"] = apikey, ["Authorization"] = "Bearer " .. tokens[i], ["Content-Type"] = "application/json"},
    '{"recipient":"' .. users[j] .. '","amount":"0.01","idempotency_key":"' .. key .. '"}')
end
""",
    "purchase": """
local sent = 0
request = function()
  sent = sent + 1
  local reference = "bench-" .. RUN .. "-" .. thread_number .. "-" .. sent
  return wrk.format("POST", prefix .. "/rpc/purchase_credits",
    {["apikey"] = apikey, ["Authorization"] = "Bearer " .. service_key,
     ["Content-Type"] = "application/json"},
    '{"user_id":"' .. users[math.random(#users)] .. '","usd_amount":"1","payment_reference":"'
      .. reference .. '"}')
end
""",
}


def http_rate(
    target: Target, kind: str, users: list[str], tokens: list[str], seconds: float, direct: bool = False
) -> float:
    """Calls per second of HTTP_SCRIPTS[kind] through the gateway, or to PostgREST itself."""
    assert target.api_url and target.anon_key and target.service_role_key
    base_url = target.postgrest_url if direct and target.postgrest_url else target.api_url
    data = lua_locals(
        users=users,
        tokens=tokens,
        apikey=target.anon_key,
        service_key=target.service_role_key,
        prefix="" if direct else "/rest/v1",
    )
    return wrk_rate(base_url, data + HTTP_SCRIPTS[kind], seconds)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def ledger_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from public.credit_transactions").fetchone()
    return int(row[0]) if row else 0


def fill_ledger(
    conn: psycopg.Connection[Any], users: list[str], deep_user: str, total_rows: int, deep_rows: int
) -> None:
    """Add balanced grant transfers (and their entries and balances) until the ledger has
    `total_rows` entries, `deep_rows` of them for `deep_user`. Bench data only."""
    missing = total_rows - ledger_rows(conn)
    if missing <= 0:
        return
    deep = min(deep_rows, missing)
    spread = missing - deep
    with conn.transaction():
        conn.execute("create temp table fill (user_id uuid, seq bigint, transfer_id uuid) on commit drop")
        conn.execute(
            "insert into fill select %s::uuid, g, gen_random_uuid() from generate_series(1, %s) g",
            (deep_user, deep),
        )
        conn.execute(
            """
            insert into fill
            select (%s::uuid[])[1 + (g %% array_length(%s::uuid[], 1))], g, gen_random_uuid()
            from generate_series(1, %s) g
            """,
            (users, users, spread),
        )
        conn.execute(
            """
            insert into mycelium_private.transfers (id, kind, from_system, to_user, amount, memo, created_at)
            select transfer_id, 'grant', 'issuance', user_id, 1, 'bench fill',
                   now() + seq * interval '1 microsecond'
            from fill
            """
        )
        conn.execute(
            """
            insert into public.credit_transactions
              (transfer_id, user_id, amount, kind, balance_after, memo, created_at)
            select f.transfer_id, f.user_id, 1, 'grant',
                   a.balance + row_number() over (partition by f.user_id order by f.seq),
                   'bench fill', now() + f.seq * interval '1 microsecond'
            from fill f join public.credit_accounts a on a.user_id = f.user_id
            order by f.user_id, f.seq
            """
        )
        conn.execute(
            """
            with added as (select user_id, count(*) as n from fill group by user_id)
            update public.credit_accounts a set balance = a.balance + added.n, updated_at = now()
            from added where a.user_id = added.user_id
            """
        )
    # Settle the bulk load before timing reads: its dirty pages written out, its rows vacuumed, so
    # that the reads measure the ledger's size, not the checkpoint and autovacuum that follow it.
    conn.execute("vacuum (analyze) public.credit_transactions, mycelium_private.transfers")
    conn.execute("checkpoint")


BALANCE = "select balance from public.credit_accounts where user_id = %s::uuid"
HISTORY = "select * from public.credit_history(%s::timestamptz, %s::bigint, 50)"


def read_latencies(conn: psycopg.Connection[Any], user: str, deep_user: str, repeat: int) -> dict[str, float]:
    reads: dict[str, Read] = {
        "balance": (user, BALANCE, (user,)),
        "history_first": (deep_user, HISTORY, (None, None)),
    }
    depth_row = conn.execute(
        "select created_at, id from public.credit_transactions where user_id = %s "
        "order by created_at desc, id desc offset 100000 limit 1",
        (deep_user,),
    ).fetchone()
    if depth_row:
        reads["history_deep"] = (deep_user, HISTORY, (depth_row[0], depth_row[1]))
    return {**timed_reads(conn, reads, repeat), "rows": ledger_rows(conn)}


# ---------------------------------------------------------------------------------------------
# Throughput: every direct-SQL measure in both protocols, each against the yardstick sent alike
# ---------------------------------------------------------------------------------------------

# The direct-SQL measures (their bench/_ledger.py script), each run in every protocol.
SQL_MEASURES = {
    "rest_transfer": "rest_transfer",
    "sql_transfer": "transfer",
    "rest_purchase": "rest_purchase",
    "sql_purchase": "purchase",
    "sql_hot": "hot",
    "sql_floor": "floor",
}


def throughput_rows(rates: Mapping[str, Rate], protocol: Protocol) -> list[RateRow]:
    """The throughput table of one protocol: each ratio compares two measures sent in it, the
    yardstick included. Targets are the prepared table's, as PostgREST prepares its queries; and
    the calls through HTTP compare with the PostgREST-shaped direct SQL sent prepared."""

    def rate(name: str) -> Rate | None:
        return rates.get(in_protocol(name, protocol))

    def goal(least: float) -> float | None:
        return least if protocol == "prepared" else None

    tpcb = rates.get(yardstick_name(protocol))
    rest_transfer, rest_purchase = rate("rest_transfer"), rate("rest_purchase")
    rows = [
        RateRow("pgbench tpcb-like (tps)", tpcb),
        RateRow("PostgREST-shaped transfers, 1,000 accounts", rest_transfer, tpcb, goal(0.8)),
        RateRow("  (bare transfers: one statement, no key)", rate("sql_transfer"), tpcb),
        RateRow("PostgREST-shaped purchases", rest_purchase, rest_transfer, goal(0.8)),
        RateRow("  (bare purchases)", rate("sql_purchase"), rate("sql_transfer")),
        RateRow("bare transfers into one account", rate("sql_hot"), rate("sql_transfer"), goal(0.6)),
        RateRow("  (pgbench tpcb-like, one branch for all)", rate("tpcb_one_branch"), tpcb),
    ]
    if protocol == "prepared":
        rows += [
            RateRow("PostgREST transfers", rates.get("http_transfer"), rest_transfer, 0.5),
            RateRow("  (PostgREST transfers, no gateway)", rates.get("direct_transfer"), rest_transfer),
            RateRow("PostgREST purchases", rates.get("http_purchase"), rest_purchase, 0.5),
        ]
    return rows


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def measure(target: Target, args: argparse.Namespace, results: dict[str, Any]) -> int:
    seconds = args.seconds
    admin_url = target.superuser_db_url or target.db_url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        print(f"setup: {args.accounts} accounts, funded through purchase_credits", flush=True)
        users = create_users(conn, args.accounts)
        deep_user = users[0]
        fund(conn, users, "1000000")
        print("reads with ~1,000 ledger rows", flush=True)
        small = read_latencies(conn, users[1], deep_user, args.repeat)

    with psycopg.connect(admin_url, autocommit=True) as conn:
        number_users(conn, users)

    accounts = len(users)
    hot_flushes = WalFlushes(admin_url)
    measures = in_protocols(
        {
            name: partial(sql_rate, target.db_url, kind, accounts, seconds)
            for name, kind in SQL_MEASURES.items()
        }
    )
    hot_measure = in_protocol("sql_hot", "prepared")
    measures[hot_measure] = hot_flushes.around(measures[hot_measure])
    if target.api_url and target.jwt_secret:
        from cli.keys import access_token

        tokens = [access_token(target.jwt_secret, uuid.UUID(u), email=None) for u in users]
        measures["http_purchase"] = lambda: http_rate(target, "purchase", users, tokens, seconds)
        measures["http_transfer"] = lambda: http_rate(target, "transfer", users, tokens, seconds)
        if target.postgrest_url:
            measures["direct_transfer"] = lambda: http_rate(
                target, "transfer", users, tokens, seconds, direct=True
            )
    with contextlib.ExitStack() as databases:
        # pgbench's tpcb-like at scale 1: one branch row that every transaction updates, so the
        # yardstick's own chain through one row, beside the transfers into one account.
        one_branch = databases.enter_context(pgbench_database(admin_url, 1, label="one_branch"))
        for protocol in PROTOCOLS:
            measures[in_protocol("tpcb_one_branch", protocol)] = partial(
                tpcb_rate, admin_url, one_branch, seconds, protocol
            )
        rates = cycled_rates(admin_url, args.pgbench_scale, args.cycles, seconds, measures, PROTOCOLS)

    with psycopg.connect(admin_url, autocommit=True) as conn:
        print(
            f"filling the ledger to {args.ledger_rows:,} rows ({args.deep_rows:,} for one user)", flush=True
        )
        started = time.perf_counter()
        fill_ledger(conn, users[1:], deep_user, args.ledger_rows, args.deep_rows)
        print(f"    filled in {time.perf_counter() - started:.1f}s", flush=True)
        big = read_latencies(conn, users[1], deep_user, args.repeat)
        problems = (
            conn.execute("select count(*) from public.audit_ledger()").fetchone() if args.audit else None
        )

    missed, results["throughput"] = print_rates_by_protocol(partial(throughput_rows, rates))
    results["rates"] = {name: {"mean": rate.mean, "cycles": rate.samples} for name, rate in rates.items()}
    hot = rates[in_protocol("sql_hot", "prepared")].mean
    floor = rates[in_protocol("sql_floor", "prepared")].mean
    chain = {"transfer_ms": 1000 / hot, "wal_flush_ms": hot_flushes.mean, "floor_update_ms": 1000 / floor}
    results["chain_into_one_account"] = chain
    if hot_flushes.mean:
        print(
            f"  (into one account: {chain['transfer_ms']:.2f} ms a transfer, one after the other; the "
            f"commit's WAL flush took {hot_flushes.mean:.2f} ms of it, {hot_flushes.mean * hot / 1000:.0%})"
        )
    print(
        f"  (one row updated by all {WORKERS} clients, nothing else: {chain['floor_update_ms']:.2f} ms an "
        f"update, the floor under any chain into one account on this server)"
    )
    print()
    balance = LatencyRow(
        f"balance, ledger rows {int(small['rows']):,} -> {int(big['rows']):,}",
        small["balance"],
        big["balance"],
        growth(big, small, "balance"),
        1.2,
    )
    history = LatencyRow(
        "history page: first -> depth 100,000",
        big["history_first"],
        big.get("history_deep"),
        ratio(big.get("history_deep"), big["history_first"]),
        1.5,
    )
    missed += print_latencies([balance], ("read latency (median)", "small", "large"))
    print_reference(small, big)
    missed += print_latencies([history])
    results["reads"] = [balance.as_dict(), history.as_dict()]
    if problems is not None:
        print(f"\naudit_ledger(): {problems[0]} problems")
        missed += bool(problems[0])
        results["audit_problems"] = problems[0]
    results["targets_missed"] = missed
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_options(parser, superuser=False)
    add_cycle_options(parser, cycles=8)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument(
        "--ledger-rows", type=int, default=1_000_000, help="ledger size for the large read test"
    )
    parser.add_argument("--deep-rows", type=int, default=150_000, help="history length of the deep user")
    parser.add_argument("--repeat", type=int, default=500, help="samples per read latency")
    parser.add_argument("--pgbench-scale", type=int, default=10)
    parser.add_argument(
        "--audit", action="store_true", help="run audit_ledger() at the end (slow on big ledgers)"
    )

    return run_benchmark(parser, on_target(measure, start_port=47000))


if __name__ == "__main__":
    raise SystemExit(main())
