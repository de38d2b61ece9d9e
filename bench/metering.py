"""Metering benchmark (issue 19): subscriptions charged by the batch (rpc/charge_due_subscriptions)
against single transfers (rpc/transfer_credits) on the same server, and a balance read while a
charging run goes on against the same read when idle.

    ./run bench metering                         # 100,000 subscriptions, on a local stack of its own
    ./run bench metering --subscriptions 2000    # a quick, noisier run
    ./run bench metering --json                  # the results as one JSON object on stdout

Setup, bench-only and set-based: buyers (one for every 10 subscriptions) and providers written
straight into auth.users, hourly products, the buyers funded through purchase_credits (one
statement), then the running subscriptions written in SQL straight into the tables, each with its
first period held as start_subscription holds it (the period, its `order_hold` transfer and entry,
the buyer's balance and `held`) and ended a minute ago: one period due for each. The ledger audit
at the end checks that the bench's data is what the functions would have written.

Both sides go to the database directly, each in the transaction PostgREST 12 sends for one RPC
(role, claims and request settings, the pre-request, the call through json_to_record:
bench/_ledger.py), so that neither pays HTTP and the ratio compares the database's work:
- the batch: as `mycelium upkeep` runs it, by its --charging-workers callers side by side (one by
  default; --chargers here), each calling charge_due_subscriptions as service_role (its default
  500 periods a call) until nothing is due. A charge is a period paid (the provider's earning, the
  platform's fee) and the next one held: three ledger movements, where a transfer is one;
- single transfers: pgbench, as many clients as the batch has callers (the measure: a transfer
  waits for its own commit, a batch shares one, each side equally busy), and WORKERS clients (the
  server's best rate of transfers, shown beside it), each a PostgREST-shaped transfer_credits
  between two random buyers with its idempotency key, prepared (as PostgREST sends it).
They run in turn, in short slices (transfer slices, then a charging slice and an idle slice, in
turns of order, again until everything is charged), so that a shared machine's slow moments fall
on both sides alike.
Meanwhile one reader, a process of its own, reads a random buyer's balance as that buyer (RLS
applies), a read every millisecond or so: its p99 during the charging slices against its p99
during the idle ones.
Targets (issue 19):
  batch charges / single transfers per second      >= 5 (a transfer waits for its own commit;
                                                      a batch shares one)
  balance read p99, charging / idle                 < 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg

from bench._cycles import Rate
from bench._ledger import SERVICE_CLAIMS, number_users, postgrest_call, postgrest_settings, sql_rate
from bench._load import WORKERS
from bench._percentiles import Percentiles
from bench._results import run_benchmark
from bench._stack import Target, add_target_options, on_target
from bench._users import create_users
from bench._verdicts import LatencyRow, RateRow, print_latencies, print_rates, ratio
from cli.upkeep import CHARGING_WORKERS

BATCH_TARGET = 5.0
READ_P99_TARGET = 2.0
SUBSCRIPTIONS_PER_BUYER = 10
PROVIDERS = 50
PRODUCTS_PER_PROVIDER = 4
# Between two reads of the reader: a steady trickle of reads, not a flood of its own.
READ_PAUSE = 0.001


# ---------------------------------------------------------------------------------------------
# Setup: bench data written set-based, as the functions would have written it
# ---------------------------------------------------------------------------------------------


def fund_all(conn: psycopg.Connection[Any], users: list[str], usd: str) -> None:
    """One purchase for each user, through purchase_credits, in one statement."""
    conn.execute(
        "select public.purchase_credits(u, %s::numeric, 'bench-fund-' || u) from unnest(%s::uuid[]) u",
        (usd, users),
    )


def add_hourly_products(conn: psycopg.Connection[Any], providers: list[str]) -> None:
    """PRODUCTS_PER_PROVIDER hourly compute products a provider (a farmer), priced from 0.01 to 1."""
    conn.execute(
        "insert into public.user_roles (user_id, role) select unnest(%s::uuid[]), 'farmer'", (providers,)
    )
    conn.execute(
        """
        insert into public.products (provider_id, category, name, price, unit)
        select p, 'compute', 'metered slice ' || g || ' of ' || p,
               round((0.01 + random() * 0.99)::numeric, 6), 'hour'
        from unnest(%s::uuid[]) p, generate_series(1, %s) g
        """,
        (providers, PRODUCTS_PER_PROVIDER),
    )


SEED_SUBSCRIPTIONS = [
    # One row a subscription: its buyer (in turn), a product (at random), the ids it needs.
    """
    create temp table seed on commit drop as
    select gen_random_uuid() as subscription_id, gen_random_uuid() as period_id,
           gen_random_uuid() as transfer_id, b.buyers[1 + g %% cardinality(b.buyers)] as buyer_id,
           p.id as product_id, p.provider_id, p.price, g
    from generate_series(0, %(count)s - 1) g
    cross join (select %(buyers)s::uuid[] as buyers) b
    join (select row_number() over (order by id) - 1 as n, id, provider_id, price
          from public.products where unit = 'hour' and active and capacity is null) p
      on p.n = g %% %(products)s
    """,
    # Started an hour and a minute ago: its first period ended a minute ago.
    """
    insert into public.subscriptions
      (id, buyer_id, provider_id, product_id, quantity, unit, status, due_at, paid_until, periods, created_at,
       updated_at)
    select subscription_id, buyer_id, provider_id, product_id, 1, 'hour', 'active',
           now() - interval '1 minute', now() - interval '1 minute', 1, now() - interval '61 minutes',
           now() - interval '61 minutes'
    from seed
    """,
    """
    insert into public.subscription_periods
      (id, subscription_id, seq, kind, starts_at, ends_at, unit_price, quantity, amount, fee_percent,
       held_amount, created_at)
    select s.period_id, s.subscription_id, 1, 'period', now() - interval '61 minutes',
           now() - interval '1 minute', s.price, 1, s.price, c.platform_fee_percent, s.price,
           now() - interval '61 minutes'
    from seed s, public.marketplace_config c
    where c.id
    """,
    # The hold: the transfer into `holds`, the buyer's entry with the balance it left, then the
    # account (balance down, held up by the same).
    """
    insert into mycelium_private.transfers
      (id, kind, from_user, to_system, amount, memo, reference, initiated_by, initiated_role, created_at)
    select transfer_id, 'order_hold', buyer_id, 'holds', price, 'subscription ' || subscription_id,
           period_id::text, buyer_id, 'authenticated', now() - interval '61 minutes'
    from seed
    """,
    """
    insert into public.credit_transactions
      (transfer_id, user_id, amount, kind, balance_after, counterparty_id, memo, reference, created_at)
    select s.transfer_id, s.buyer_id, -s.price, 'order_hold',
           a.balance - sum(s.price) over (partition by s.buyer_id order by s.g), s.provider_id,
           'subscription ' || s.subscription_id, s.period_id::text, now() - interval '61 minutes'
    from seed s join public.credit_accounts a on a.user_id = s.buyer_id
    """,
    """
    update public.credit_accounts a
    set balance = a.balance - h.total, held = a.held + h.total, updated_at = now()
    from (select buyer_id, sum(price) as total from seed group by buyer_id) h
    where a.user_id = h.buyer_id
    """,
    """
    insert into public.subscription_events
      (subscription_id, buyer_id, provider_id, event, period_id, amount, changed_by, changed_role, at)
    select subscription_id, buyer_id, provider_id, 'started', period_id, price, buyer_id, 'authenticated',
           now() - interval '61 minutes'
    from seed
    """,
]


def seed_subscriptions(conn: psycopg.Connection[Any], buyers: list[str], count: int) -> None:
    """`count` running hourly subscriptions of `buyers` (in turn) to the hourly products, each
    with one period due. Bench data only, in one transaction."""
    row = conn.execute(
        "select count(*) from public.products where unit = 'hour' and active and capacity is null"
    ).fetchone()
    values = {"count": count, "buyers": buyers, "products": row[0] if row else 0}
    with conn.transaction():
        for statement in SEED_SUBSCRIPTIONS:
            conn.execute(statement, values)
    # Settle the bulk load before timing: its rows vacuumed and analysed, its pages written out.
    conn.execute(
        "vacuum (analyze) public.subscriptions, public.subscription_periods, public.subscription_events, "
        "public.credit_accounts, public.credit_transactions, mycelium_private.transfers"
    )
    conn.execute("checkpoint")


# ---------------------------------------------------------------------------------------------
# The batch, PostgREST-shaped, as service_role
# ---------------------------------------------------------------------------------------------

CHARGE_SETTINGS = postgrest_settings("service_role", SERVICE_CLAIMS, "charge_due_subscriptions")
# PostgREST's call with its JSON body as a parameter (pgbench's :body, psycopg's %(body)s).
CHARGE_CALL = postgrest_call("charge_due_subscriptions", {"max_periods": "integer"}).replace(
    ":body", "%(body)s"
)


def callers(count: int, what: str) -> str:
    return f"one {what}" if count == 1 else f"{count} {what}s"


def charge_batch(conn: psycopg.Connection[Any], max_periods: int) -> dict[str, Any]:
    """One call of charge_due_subscriptions, in PostgREST's transaction; its answer."""
    with conn.transaction():
        conn.execute(CHARGE_SETTINGS)
        conn.execute("select mycelium_gate.check_caller()")
        row = conn.execute(CHARGE_CALL, {"body": json.dumps({"max_periods": max_periods})}).fetchone()
    assert row is not None
    answer: dict[str, Any] = json.loads(row[2])
    return answer


def due_left(conn: psycopg.Connection[Any]) -> bool:
    """Whether a subscription is due: a last call that finds nothing is no slice."""
    row = conn.execute(
        "select exists (select 1 from public.subscriptions"
        " where status in ('active', 'grace', 'suspended') and due_at <= now())"
    ).fetchone()
    return bool(row and row[0])


@dataclass
class Charging:
    """What the charging slices did: periods charged, seconds spent in calls, each slice's rate."""

    periods: int = 0
    seconds: float = 0.0
    calls: int = 0
    credits: float = 0.0
    slices: list[float] = field(default_factory=list)
    done: bool = False

    def run_slice(self, conns: list[psycopg.Connection[Any]], seconds: float, max_periods: int) -> None:
        """Call the batch from each connection at once, as `mycelium upkeep`'s workers do, until
        `seconds` have passed, or a call finds nothing left to it (the others hold the rest) or
        says it is done."""
        periods, calls, started = [0] * len(conns), [0] * len(conns), time.perf_counter()
        done = [False] * len(conns)

        def call(n: int) -> None:
            while time.perf_counter() - started < seconds:
                answer = charge_batch(conns[n], max_periods)
                calls[n] += 1
                periods[n] += int(answer["periods_charged"])
                done[n] = bool(answer["done"])
                if answer["done"] or not answer["periods_charged"]:
                    return

        threads = [threading.Thread(target=call, args=(n,)) for n in range(len(conns))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        self.done = all(done)
        self.calls += sum(calls)
        self.periods += sum(periods)
        self.seconds += elapsed
        self.slices.append(sum(periods) / elapsed)

    @property
    def per_second(self) -> float:
        return self.periods / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------------
# The reader
# ---------------------------------------------------------------------------------------------

BALANCE = "select balance, held from public.credit_accounts where user_id = %s::uuid"


class Reads:
    """Reads of a random buyer's balance as that buyer, on a connection of their own."""

    def __init__(self, db_url: str, buyers: list[str]) -> None:
        self.conn = psycopg.connect(db_url, autocommit=True)
        self.buyers = buyers
        row = self.conn.execute("select pg_backend_pid()").fetchone()
        self.waits = RunQueueWaits(row[0] if row else None)

    def read(self) -> Read:
        buyer = random.choice(self.buyers)
        claims = json.dumps({"sub": buyer, "role": "authenticated"})
        waited = self.waits.so_far()
        started = time.perf_counter()
        with self.conn.transaction():
            self.conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,), prepare=True)
            self.conn.execute("set local role authenticated")
            self.conn.execute(BALANCE, (buyer,), prepare=True).fetchall()
        seconds = time.perf_counter() - started
        return Read(seconds, self.waits.so_far() - waited)


@dataclass(frozen=True)
class Read:
    """One read's latency, and how much of it the reader and its backend spent waiting for a CPU
    (the reader's waits alone where its backend's process is out of sight; 0 off Linux)."""

    seconds: float
    waiting_for_cpu: float


@dataclass(frozen=True)
class Tail:
    """The slowest 1% of some reads: their mean latency and their mean wait for a CPU."""

    seconds: float
    waiting_for_cpu: float

    @classmethod
    def of(cls, reads: list[Read]) -> Tail:
        slowest = sorted(reads, key=lambda r: r.seconds)[-max(1, len(reads) // 100) :]
        return cls(
            sum(r.seconds for r in slowest) / len(slowest),
            sum(r.waiting_for_cpu for r in slowest) / len(slowest),
        )


class RunQueueWaits:
    """Time this process and the reader's backend have spent runnable but waiting for a CPU (the
    second figure of Linux's /proc/PID/schedstat): on two cores that the batch shares with
    autovacuum and the reader, what sets a read's tail. The backend is watched only where it runs
    on this machine, as a postgres process: a --db-url elsewhere counts the reader alone."""

    def __init__(self, backend_pid: int | None) -> None:
        self.files = [Path("/proc/self/schedstat")]
        backend = Path(f"/proc/{backend_pid}")
        if (
            backend_pid
            and (backend / "comm").exists()
            and (backend / "comm").read_text().strip() == "postgres"
        ):
            self.files.append(backend / "schedstat")
        if not all(file.exists() for file in self.files):
            self.files = []

    def so_far(self) -> float:
        return sum(int(file.read_text().split()[1]) for file in self.files) / 1e9


def read_on_command(db_url: str, buyers: list[str], pipe: Connection) -> None:
    """The reader's process: on "read", reads one after another until told "stop", then sends the
    reads; "warm up" reads a few hundred times; "end" ends it."""
    reads = Reads(db_url, buyers)
    while (command := pipe.recv()) != "end":
        samples = [reads.read() for _ in range(200)] if command == "warm up" else []
        while command == "read" and not pipe.poll():
            samples.append(reads.read())
            time.sleep(READ_PAUSE)
        if command == "read":
            pipe.recv()  # "stop"
        pipe.send(samples)


class Reader:
    """Reads a random buyer's balance as that buyer, one read after another, in a process of its
    own (in a thread, the benchmark's other threads would delay its reads on Python's lock);
    `during` collects the reads made while it runs."""

    def __init__(self, db_url: str, buyers: list[str]) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(
            target=read_on_command, args=(db_url, buyers, child), daemon=True
        )
        self.process.start()

    def during(self, work: Callable[[], None]) -> list[Read]:
        """The reads made while `work` runs."""
        self.pipe.send("read")
        try:
            work()
        finally:
            self.pipe.send("stop")
        samples: list[Read] = self.pipe.recv()
        return samples

    def warm_up(self) -> None:
        self.pipe.send("warm up")
        self.pipe.recv()

    def close(self) -> None:
        self.pipe.send("end")
        self.process.join()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def measure(target: Target, args: argparse.Namespace, results: dict[str, Any]) -> int:
    seconds, count = args.seconds, args.subscriptions
    admin_url = target.superuser_db_url or target.db_url
    buyers_count = max(2, count // SUBSCRIPTIONS_PER_BUYER)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        started = time.perf_counter()
        print(f"setup: {buyers_count:,} buyers, {PROVIDERS} providers, funded", flush=True)
        buyers = create_users(conn, buyers_count)
        providers = create_users(conn, PROVIDERS)
        add_hourly_products(conn, providers)
        fund_all(conn, buyers, "100")
        print(f"setup: {count:,} running subscriptions, one period due each (set-based)", flush=True)
        seed_subscriptions(conn, buyers, count)
        number_users(conn, buyers)
        setup_seconds = time.perf_counter() - started
        print(f"    set up in {setup_seconds:.1f}s", flush=True)

    reader = Reader(target.db_url, buyers)
    chargers = args.chargers
    # The batch by as many callers as `mycelium upkeep` runs; transfers by as many clients (the
    # measure: each side as busy as the other), and by WORKERS (the server's best rate of them).
    charging = Charging()
    transfers: dict[int, list[float]] = {chargers: [], WORKERS: []}
    idle: list[Read] = []
    during: list[Read] = []

    def transfer_slice(clients: int) -> float:
        return sql_rate(target.db_url, "rest_transfer", len(buyers), seconds, clients=clients)

    print(
        f"slices of {seconds}s in turn until all is charged: PostgREST-shaped transfers "
        f"({callers(chargers, 'client')}, then {WORKERS}), the batch ({callers(chargers, 'caller')}, "
        f"{args.max_periods} periods a call) with the reader, the reader alone",
        flush=True,
    )
    conns = [psycopg.connect(target.db_url, autocommit=True) for _ in range(chargers)]
    try:
        reader.warm_up()
        transfer_slice(WORKERS)  # warm-up, unmeasured
        cycle = 0
        while not charging.done and due_left(conns[0]):
            cycle += 1
            for clients, rates in transfers.items():
                rates.append(transfer_slice(clients))
            # The reader's two slices in turns of order: whichever follows the transfers' slices
            # meets what they leave behind (autovacuum's next round, the WAL they wrote).
            reads = [
                (during, lambda: charging.run_slice(conns, seconds, args.max_periods)),
                (idle, lambda: time.sleep(seconds)),
            ]
            for samples, work in reads if cycle % 2 else reversed(reads):
                samples += reader.during(work)
            print(
                f"    cycle {cycle}: {charging.periods:,} periods charged, {charging.slices[-1]:,.0f}/s "
                f"(transfers {transfers[chargers][-1]:,.0f}/s; "
                f"by {WORKERS} clients {transfers[WORKERS][-1]:,.0f}/s)",
                flush=True,
            )
    finally:
        for conn in conns:
            conn.close()
    reader.close()

    with psycopg.connect(admin_url, autocommit=True) as conn:
        left = conn.execute(
            "select count(*) from public.subscriptions where status in ('active', 'grace', 'suspended') "
            "and due_at <= now()"
        ).fetchone()
        renewed = conn.execute(
            "select count(*) from public.subscription_events where event = 'renewed'"
        ).fetchone()
        print("auditing the ledger", flush=True)
        problems = conn.execute("select count(*) from public.audit_ledger()").fetchone()

    # Each cycle's charging slice against its transfer slices (RateRow's range pairs them).
    transfer_rate, server_rate = Rate(tuple(transfers[chargers])), Rate(tuple(transfers[WORKERS]))
    charge_rate = Rate(tuple(charging.slices))
    rows = [
        RateRow(f"PostgREST-shaped transfers ({callers(chargers, 'client')})", transfer_rate),
        RateRow(
            f"charges through the batch ({callers(chargers, 'caller')})",
            charge_rate,
            transfer_rate,
            BATCH_TARGET,
        ),
        RateRow(f"  (PostgREST-shaped transfers, {WORKERS} clients)", server_rate),
        RateRow("  (the batch against them)", charge_rate, server_rate),
    ]
    print()
    missed = print_rates(rows)
    print(
        f"charged {charging.periods:,} periods in {charging.seconds:.1f}s of batch calls "
        f"({charging.calls} calls): {charging.per_second:,.0f} a second overall; "
        f"{left[0] if left else '?'} left due"
    )
    idle_p99, during_p99 = (Percentiles.of([r.seconds for r in reads]) for reads in (idle, during))
    read = LatencyRow(
        "balance read p99: idle -> while charging",
        idle_p99.p99,
        during_p99.p99,
        ratio(during_p99.p99, idle_p99.p99),
        READ_P99_TARGET,
    )
    print()
    missed += print_latencies([read], ("read latency", "idle", "charging"))
    print(
        f"  (p50: {idle_p99.p50 * 1e3:.3f}ms idle, {during_p99.p50 * 1e3:.3f}ms while charging; "
        f"{len(idle):,} and {len(during):,} reads)"
    )
    idle_tail, during_tail = Tail.of(idle), Tail.of(during)
    print(
        f"  (the slowest 1% of reads: {idle_tail.seconds * 1e3:.3f}ms idle and "
        f"{during_tail.seconds * 1e3:.3f}ms while charging on average, of which waiting for a CPU "
        f"{idle_tail.waiting_for_cpu * 1e3:.3f}ms and {during_tail.waiting_for_cpu * 1e3:.3f}ms)"
    )
    print(f"\naudit_ledger(): {problems[0] if problems else '?'} problems")
    missed += bool(problems and problems[0])

    results.update(
        {
            "subscriptions": count,
            "buyers": len(buyers),
            "setup_seconds": setup_seconds,
            "throughput": [row.as_dict() for row in rows],
            "transfers_per_second": transfer_rate.mean,
            "transfers_per_second_most_clients": server_rate.mean,
            "chargers": chargers,
            "charges_per_second": charge_rate.mean,
            "batch_vs_single": rows[1].ratio,
            "batch_vs_most_clients": rows[3].ratio,
            "charge_all_seconds": charging.seconds,
            "periods_charged": charging.periods,
            "renewed": renewed[0] if renewed else None,
            "left_due": left[0] if left else None,
            "batch_calls": charging.calls,
            "max_periods": args.max_periods,
            "read": {
                **read.as_dict(),
                "idle_p50_ms": idle_p99.p50 * 1e3,
                "charging_p50_ms": during_p99.p50 * 1e3,
                "idle_reads": len(idle),
                "charging_reads": len(during),
                "idle_slowest_ms": idle_tail.seconds * 1e3,
                "idle_slowest_cpu_wait_ms": idle_tail.waiting_for_cpu * 1e3,
                "charging_slowest_ms": during_tail.seconds * 1e3,
                "charging_slowest_cpu_wait_ms": during_tail.waiting_for_cpu * 1e3,
            },
            "audit_problems": problems[0] if problems else None,
            "targets_missed": missed,
        }
    )
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_options(parser)
    parser.add_argument(
        "--subscriptions", type=int, default=100_000, help="running subscriptions, each with one period due"
    )
    parser.add_argument("--seconds", type=int, default=2, help="length of one slice")
    parser.add_argument(
        "--max-periods", type=int, default=500, help="periods a batch call charges (its max_periods)"
    )
    parser.add_argument(
        "--chargers",
        type=int,
        default=CHARGING_WORKERS,
        help="batch callers side by side (default: as many as `mycelium upkeep` runs)",
    )

    return run_benchmark(parser, on_target(measure, start_port=46500))


if __name__ == "__main__":
    raise SystemExit(main())
