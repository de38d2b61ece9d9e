"""Where a transfer's time goes: the PostgREST-shaped transfer and purchase (bench/_ledger.py) on a
local stack of this run's own, with pg_stat_statements loaded (track = all, so the statements run
inside the functions and triggers are counted too), beside pgbench's tpcb-like, all prepared.

    ./run bench profile_ledger                # its own local stack, removed afterwards
    ./run bench profile_ledger --seconds 20   # longer runs, steadier figures
    ./run bench profile_ledger --compare before.sql   # and the transfer with before.sql's functions

It prints, for each workload run alone for --seconds by 8 clients:
- WAL written per transaction (pg_stat_wal: bytes, records, full-page images), against tpcb-like's;
- the statements of one transaction: calls and milliseconds per transaction, and each one's share
  of the transaction's top-level statements' time. A statement's time includes what runs inside it
  (a call includes the function's statements, an UPDATE of a balance its broadcast trigger);
- what each optional part costs in throughput: the transfer without its broadcast trigger, without
  its idempotency key, without the pre-request, each against the whole transfer in cycles
  (bench/_cycles.py), as a ratio of rates measured in the same run; with --compare FILE, also with
  the functions FILE defines installed instead of the stack's own (a change's before and after);
- bounds, in the same cycles and the same PostgREST shape, each against tpcb-like: a call that does
  nothing, then the least double-entry transfer with one guarantee added at a time, then the same
  steps on the ledger's own tables (bench/_ledger.py, BOUNDS_SQL): what any transfer could reach;
- the books: the bounds' own (every balance its entries, every movement two entries summing to
  zero) and audit_ledger()'s; a problem in either fails the run (exit status 1).
docs/performance.md reads these figures.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from bench._cycles import cycled_rates, yardstick_name
from bench._ledger import (
    BOUNDS_BROADCAST,
    bounds_problems,
    install_bounds,
    number_users,
    rest_transfer,
    script,
)
from bench._load import WORKERS, pgbench_database, script_rate, tpcb_rate
from bench._results import run_benchmark
from bench._stack import fresh_stack
from bench._users import create_users, fund
from bench._verdicts import RateRow, print_rates
from cli.dev.stack import LocalStack

ACCOUNTS = 1000
BROADCAST_TRIGGER = "credit_accounts_broadcast_balance"


@dataclass(frozen=True)
class Wal:
    """pg_stat_wal's counters, or what a run added to them."""

    bytes: int
    records: int
    full_page_images: int
    commits: int

    @classmethod
    def now(cls, conn: psycopg.Connection[Any], database: str) -> Wal:
        row = conn.execute(
            "select w.wal_bytes, w.wal_records, w.wal_fpi, d.xact_commit "
            "from pg_stat_wal w, pg_stat_database d where d.datname = %s",
            (database,),
        ).fetchone()
        assert row is not None
        return cls(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def __sub__(self, before: Wal) -> Wal:
        return Wal(
            self.bytes - before.bytes,
            self.records - before.records,
            self.full_page_images - before.full_page_images,
            self.commits - before.commits,
        )

    def per_commit(self) -> dict[str, float]:
        commits = max(self.commits, 1)
        return {
            "bytes": self.bytes / commits,
            "records": self.records / commits,
            "full_page_images": self.full_page_images / commits,
        }


def wal_of(conn: psycopg.Connection[Any], database: str, run: Callable[[], float]) -> Wal:
    """WAL written by `run` per commit in `database`; a checkpoint first, then a warm-up run, so
    that each workload starts its measured run at the same distance from a checkpoint."""
    conn.execute("checkpoint")
    run()
    conn.execute("select pg_stat_force_next_flush()")
    before = Wal.now(conn, database)
    run()
    conn.execute("select pg_stat_force_next_flush()")
    return Wal.now(conn, database) - before


def statements(
    conn: psycopg.Connection[Any], run: Callable[[], float], database: str
) -> list[dict[str, Any]]:
    """pg_stat_statements of one run of `run` in `database`, per committed transaction."""
    commits_before = Wal.now(conn, database).commits
    conn.execute("select extensions.pg_stat_statements_reset()")
    run()
    conn.execute("select pg_stat_force_next_flush()")
    commits = max(Wal.now(conn, database).commits - commits_before, 1)
    rows = conn.execute(
        """
        select s.toplevel, s.calls, s.total_exec_time, regexp_replace(s.query, '\\s+', ' ', 'g')
        from extensions.pg_stat_statements s join pg_database d on d.oid = s.dbid
        where d.datname = %s and s.calls >= %s and s.query not like '%%pg_stat%%'
        order by s.total_exec_time desc
        """,
        (database, commits // 10),
    ).fetchall()
    top_ms = sum(float(r[2]) for r in rows if r[0]) / commits
    return [
        {
            "toplevel": bool(r[0]),
            "calls_per_transaction": int(r[1]) / commits,
            "ms_per_transaction": float(r[2]) / commits,
            "share": float(r[2]) / commits / top_ms if top_ms else None,
            "query": str(r[3]),
        }
        for r in rows
    ]


def print_statements(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}: statements of one transaction (top: sent by the client; time includes nested)")
    print(f"{'':4} {'calls':>6} {'ms':>7} {'share':>6}  statement")
    for row in rows:
        share = "" if row["share"] is None else f"{row['share']:.0%}"
        query = row["query"]
        shown = query if len(query) <= 90 else query[:87] + "..."
        top = "top" if row["toplevel"] else ""
        calls, ms = row["calls_per_transaction"], row["ms_per_transaction"]
        print(f"{top:4} {calls:>6.2f} {ms:>7.3f} {share:>6}  {shown}")


@contextmanager
def profiled_stack(start_port: int) -> Iterator[LocalStack]:
    """A fresh local stack whose PostgreSQL loads pg_stat_statements, counting nested statements."""
    with fresh_stack(start_port) as stack:
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            conn.execute("alter system set shared_preload_libraries = 'pg_stat_statements'")
        stack.cluster.stop()
        stack.cluster.start()
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            # Known once the library is loaded, and read at a reload.
            conn.execute("alter system set pg_stat_statements.track = 'all'")
            conn.execute("select pg_reload_conf()")
            conn.execute("create extension if not exists pg_stat_statements with schema extensions")
        yield stack


@contextmanager
def trigger_switched(admin_url: str, table: str, trigger: str, enabled: bool) -> Iterator[None]:
    """`trigger` on `table` enabled (or disabled) for the block, then switched back."""
    switch = {True: "enable", False: "disable"}
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"alter table {table} {switch[enabled]} trigger {trigger}")
        try:
            yield
        finally:
            conn.execute(f"alter table {table} {switch[not enabled]} trigger {trigger}")


def compared(
    admin_url: str, definitions: str, parts: dict[str, Callable[[], float]]
) -> dict[str, Callable[[], float]]:
    """Every part's measure with the stack's own definitions of the functions that `definitions`
    (create or replace function ...) redefines put back first, and the whole transfer with
    `definitions` installed (`compared`): a change's before and after, in the same cycles."""
    names = re.findall(r"create or replace function ([\w.]+)\(", definitions, re.IGNORECASE)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        own = [
            str(row[0])
            for row in conn.execute(
                "select pg_get_functiondef(p.oid) from pg_proc p "
                "join pg_namespace n on n.oid = p.pronamespace where n.nspname || '.' || p.proname = any(%s)",
                (names,),
            )
        ]

    def installed(sql: list[str], measure: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute("set role postgres")
                for definition in sql:
                    conn.execute(definition.encode())
            return measure()

        return run

    result = {name: installed(own, measure) for name, measure in parts.items()}
    result["compared"] = installed([definitions], parts["transfer"])
    return result


def measure(args: argparse.Namespace, results: dict[str, Any]) -> int:
    print("bringing up a local stack with pg_stat_statements", flush=True)
    with profiled_stack(start_port=47400) as stack:
        admin_url, db_url = stack.superuser_db_url, stack.local_db_url()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            print(f"setup: {ACCOUNTS} accounts, funded through purchase_credits", flush=True)
            users = create_users(conn, ACCOUNTS)
            fund(conn, users, "1000000")
            number_users(conn, users)
            install_bounds(conn)
            with pgbench_database(admin_url, args.pgbench_scale) as yardstick:
                runs = {
                    "tpcb-like": (
                        yardstick,
                        partial(tpcb_rate, admin_url, yardstick, args.seconds, "prepared"),
                    )
                }
                for kind in ("rest_transfer", "rest_purchase"):
                    load = script(kind, "prepared")
                    runs[kind] = (
                        "postgres",
                        partial(script_rate, db_url, load, {"accounts": ACCOUNTS}, args.seconds),
                    )
                print(f"WAL per transaction ({WORKERS} clients, {args.seconds}s a run, after a warm-up run)")
                wal = {
                    name: wal_of(conn, database, run).per_commit() for name, (database, run) in runs.items()
                }
                for name, figures in wal.items():
                    print(
                        f"    {name:14} {figures['bytes']:>8,.0f} bytes "
                        f"({figures['bytes'] / wal['tpcb-like']['bytes']:.1f}x tpcb-like), "
                        f"{figures['records']:.1f} records, {figures['full_page_images']:.2f} full pages"
                    )
                results["wal_per_transaction"] = wal
                results["statements"] = {}
                for name, (database, run) in runs.items():
                    measured = statements(conn, run, database)
                    print_statements(name, measured)
                    results["statements"][name] = measured

        # The parts' rates without the counting, which costs every statement some time.
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("alter system set pg_stat_statements.track = 'none'")
            conn.execute("select pg_reload_conf()")

        def variant(**shape: Any) -> Callable[[], float]:
            return partial(
                script_rate, db_url, rest_transfer("prepared", **shape), {"accounts": ACCOUNTS}, args.slice
            )

        def switched(
            table: str, trigger: str, enabled: bool, measure: Callable[[], float]
        ) -> Callable[[], float]:
            def run() -> float:
                with trigger_switched(admin_url, table, trigger, enabled):
                    return measure()

            return run

        def bound(function: str, with_key: bool = False) -> Callable[[], float]:
            return variant(with_key=with_key, function=function, schema="mycelium_bench")

        parts = {
            "transfer": variant(),
            "no_broadcast": switched("public.credit_accounts", BROADCAST_TRIGGER, False, variant()),
            "no_key": variant(with_key=False),
            "no_pre_request": variant(with_pre_request=False),
            "nothing": bound("nothing"),
            "least": bound("least_transfer"),
            "least_keyed": bound("least_transfer", with_key=True),
            "least_keyed_broadcast": switched(
                "mycelium_bench.accounts", BOUNDS_BROADCAST, True, bound("least_transfer", with_key=True)
            ),
            "one_row_broadcast": switched(
                "mycelium_bench.accounts", BOUNDS_BROADCAST, True, bound("one_row_transfer", with_key=True)
            ),
            "ledger_rows": bound("ledger_transfer", with_key=True),
            "ledger_rows_unbroadcast": switched(
                "public.credit_accounts", BROADCAST_TRIGGER, False, bound("ledger_transfer", with_key=True)
            ),
        }
        if args.compare:
            parts |= compared(admin_url, args.compare.read(), parts)
        rates = cycled_rates(admin_url, args.pgbench_scale, args.cycles, args.slice, parts, ("prepared",))
        with psycopg.connect(admin_url, autocommit=True) as conn:
            audit = conn.execute("select count(*) from public.audit_ledger()").fetchone()
            problems = {"bounds": bounds_problems(conn), "ledger": int(audit[0]) if audit else -1}
    whole, tpcb = rates["transfer"], rates[yardstick_name("prepared")]
    rows = [
        RateRow("pgbench tpcb-like, prepared (tps)", tpcb),
        RateRow("PostgREST-shaped transfers", whole, tpcb),
        RateRow("  bound: the shape calling nothing", rates["nothing"], tpcb),
        RateRow("  bound: the shape, the least double-entry transfer", rates["least"], tpcb),
        RateRow("  bound: that, and an idempotency key", rates["least_keyed"], tpcb),
        RateRow("  bound: that, and the balances broadcast", rates["least_keyed_broadcast"], tpcb),
        RateRow("  bound: that, one row a movement instead of three", rates["one_row_broadcast"], tpcb),
        RateRow("  bound: the keyed steps on the ledger's tables", rates["ledger_rows"], tpcb),
        RateRow("  bound: that, without the ledger's broadcast", rates["ledger_rows_unbroadcast"], tpcb),
        RateRow("  without the broadcast trigger", rates["no_broadcast"], whole),
        RateRow("  without the idempotency key", rates["no_key"], whole),
        RateRow("  without the pre-request", rates["no_pre_request"], whole),
    ]
    if args.compare:
        rows.append(RateRow(f"  with the functions of {args.compare.name}", rates["compared"], whole))
    print()
    print_rates(rows)
    results["parts"] = [row.as_dict() for row in rows]
    # A bound that moved credits wrongly, or a ledger the bounds' rows left unsound, is no bound.
    print(f"\nbooks: {problems['bounds']} problems in the bounds' own, {problems['ledger']} in the audit's")
    results["books_problems"] = problems
    results["targets_missed"] = sum(1 for count in problems.values() if count)
    return 1 if results["targets_missed"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of one profiled run")
    parser.add_argument("--slice", type=int, default=2, help="length of one slice of the parts' cycles")
    parser.add_argument("--cycles", type=int, default=6, help="cycles of the parts' rates")
    parser.add_argument("--pgbench-scale", type=int, default=10)
    parser.add_argument(
        "--compare",
        type=argparse.FileType(),
        help="SQL redefining functions (their previous version, say): the transfer with them, in the cycles",
    )
    return run_benchmark(parser, measure)


if __name__ == "__main__":
    raise SystemExit(main())
