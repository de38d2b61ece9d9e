"""Ledger benchmark: transfers and purchases per second through direct SQL and through PostgREST,
against pgbench's built-in tpcb-like transactions per second on the same server, plus read
latencies that must not grow with the size of the ledger.

    .venv/bin/python bench/ledger.py                 # brings up its own local stack, then removes it
    .venv/bin/python bench/ledger.py --seconds 5     # shorter phases
    .venv/bin/python bench/ledger.py --db-url postgresql://postgres@127.0.0.1:54322/postgres
                                                     # an existing database: direct SQL and pgbench only

Every figure is measured in this one run. Throughput measures run in rounds that interleave the
pgbench yardstick with them; each keeps its best round (a shared machine's bursts of outside load
then spoil a round, not one side of a ratio). Targets (issue 3):
  spread transfers    >= 0.8 x tpcb-like
  purchases           >= 0.8 x spread transfers
  one hot recipient   >= 0.6 x spread transfers
  PostgREST           >= 0.5 x direct SQL (transfers and purchases)
  balance read        1,000,000 ledger rows / 1,000 ledger rows < 1.2
  history page        at depth 100,000 / first page < 1.5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
WORKERS = 8


@dataclass
class Target:
    db_url: str
    superuser_db_url: str | None = None
    api_url: str | None = None
    anon_key: str | None = None
    service_role_key: str | None = None
    jwt_secret: str | None = None
    postgrest_url: str | None = None  # PostgREST itself, behind no gateway (informational)


# ---------------------------------------------------------------------------------------------
# Workers (separate processes, so the client side is never the bottleneck of one GIL)
# ---------------------------------------------------------------------------------------------


def claims(user_id: str) -> str:
    return json.dumps({"sub": user_id, "role": "authenticated"})


# Direct SQL is driven by pgbench itself (custom scripts, prepared statements, one connection per
# worker): the same C client as the tpcb-like yardstick, so the ratio compares server work, not
# Python. Users are looked up by number in a bench-only table mycelium_bench.users(n, id).
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
    "purchase": """
\\set a random(1, :accounts)
select public.purchase_credits(s.id, 1, 'bench-' || gen_random_uuid())
from mycelium_bench.users s where s.n = :a;
""",
}


def pgbench_args(db_url: str) -> tuple[list[str], dict[str, str]]:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    env = {**os.environ, "PGPASSWORD": str(info.get("password") or "")}
    args = [
        "-h",
        str(info.get("host", "127.0.0.1")),
        "-p",
        str(info.get("port", 5432)),
        "-U",
        str(info["user"]),
    ]
    return args, env


def run_pgbench(db_url: str, database: str, extra: list[str]) -> float:
    base, env = pgbench_args(db_url)
    done = subprocess.run([str(PGBENCH), *base, *extra, database], env=env, capture_output=True, text=True)
    tps = [line for line in done.stdout.splitlines() if line.startswith("tps =")]
    if done.returncode != 0 or not tps:
        raise RuntimeError(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
    failed = [line for line in done.stdout.splitlines() if line.startswith("number of failed")]
    if failed and not failed[0].split(":")[1].strip().startswith("0"):
        print(f"    ({failed[0]})", flush=True)
    return float(tps[-1].split("=")[1].split()[0])


def sql_rate(db_url: str, kind: str, accounts: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(SQL_SCRIPTS[kind])
    try:
        database = str(psycopg.conninfo.conninfo_to_dict(db_url).get("dbname", "postgres"))
        return run_pgbench(
            db_url,
            database,
            [
                "-n",
                "-M",
                "prepared",
                "-c",
                str(WORKERS),
                "-j",
                str(WORKERS),
                "-T",
                str(int(seconds)),
                "-D",
                f"accounts={accounts}",
                "-f",
                script.name,
            ],
        )
    finally:
        os.unlink(script.name)


def http_worker(
    kind: str, target: Target, users: list[tuple[str, str]], seconds: float, seed: int, direct: bool = False
) -> tuple[int, int]:
    """Keep-alive HTTP/1.1 over a raw socket: the client costs little next to the server."""
    assert target.api_url and target.anon_key and target.service_role_key
    rng = random.Random(seed)
    url = urlsplit(target.postgrest_url if direct and target.postgrest_url else target.api_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    prefix = "" if direct else "/rest/v1"
    done = errors = 0
    sock: socket.socket | None = None
    reader: Any = None
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if sock is None:
            sock = socket.create_connection((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = sock.makefile("rb")
        if kind == "purchase":
            user_id, _ = rng.choice(users)
            key = target.service_role_key
            path = f"{prefix}/rpc/purchase_credits"
            payload = {"user_id": user_id, "usd_amount": "1", "payment_reference": f"bench-{uuid.uuid4()}"}
        else:
            (_, key), (recipient, _) = rng.sample(users, 2)
            path = f"{prefix}/rpc/transfer_credits"
            payload = {"recipient": recipient, "amount": "0.01"}
        content = json.dumps(payload).encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\napikey: {target.anon_key}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(content)}\r\n\r\n"
        ).encode() + content
        sock.sendall(request)
        status = int(reader.readline().split()[1])
        length, chunked, close = 0, False, False
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        if chunked:
            while (size := int(reader.readline().strip(), 16)) > 0:
                reader.read(size + 2)
            reader.readline()
        else:
            reader.read(length)
        if status == 200:
            done += 1
        else:
            errors += 1
        if close:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return done, errors


def run_parallel(
    function: Callable[..., tuple[int, int]], args: list[tuple[Any, ...]], seconds: float
) -> float:
    with mp.get_context("fork").Pool(len(args)) as pool:
        started = time.perf_counter()
        results = pool.starmap(function, args)
        elapsed = max(time.perf_counter() - started, seconds)
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    if errors:
        print(f"    ({errors} failed calls)", flush=True)
    return done / elapsed


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def create_users(conn: psycopg.Connection[Any], count: int) -> list[str]:
    rows = conn.execute(
        """
        insert into auth.users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                                created_at, updated_at)
        select '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
               'bench-' || gen_random_uuid() || '@example.test', '{}', '{}', now(), now()
        from generate_series(1, %s)
        returning id::text
        """,
        (count,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def fund(conn: psycopg.Connection[Any], users: list[str], usd: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "select public.purchase_credits(%s::uuid, %s::numeric, %s)",
            [(u, usd, f"bench-fund-{uuid.uuid4()}") for u in users],
        )


def ledger_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from public.credit_transactions").fetchone()
    return int(row[0]) if row else 0


def fill_ledger(
    conn: psycopg.Connection[Any], users: list[str], deep_user: str, total_rows: int, deep_rows: int
) -> None:
    """Add balanced grant transfers (and their entries, lots, balances) until the ledger has
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
            update public.credit_lots l set amount = l.amount + added.n, remaining = l.remaining + added.n
            from added where l.user_id = added.user_id and l.expires_at is null
            """
        )
        conn.execute(
            """
            with added as (select user_id, count(*) as n from fill group by user_id)
            update public.credit_accounts a set balance = a.balance + added.n, updated_at = now()
            from added where a.user_id = added.user_id
            """
        )
    conn.execute("analyze public.credit_transactions")
    conn.execute("analyze mycelium_private.transfers")


def time_reads(
    conn: psycopg.Connection[Any], user: str, query: str, params: tuple[Any, ...], repeat: int
) -> float:
    """Median seconds of `query` run as `user` (RLS applies), after a warm-up."""
    samples = []
    for i in range(repeat + 50):
        with conn.transaction():
            conn.execute("select set_config('request.jwt.claims', %s, true)", (claims(user),))
            conn.execute("set local role authenticated")
            started = time.perf_counter()
            conn.execute(query, params, prepare=True).fetchall()
            elapsed = time.perf_counter() - started
        if i >= 50:
            samples.append(elapsed)
    return statistics.median(samples)


BALANCE = "select balance from public.credit_accounts where user_id = %s::uuid"
HISTORY = "select * from public.credit_history(%s::timestamptz, %s::bigint, 50)"


def read_latencies(conn: psycopg.Connection[Any], user: str, deep_user: str, repeat: int) -> dict[str, float]:
    out = {"balance": time_reads(conn, user, BALANCE, (user,), repeat)}
    rows = ledger_rows(conn)
    out["rows"] = rows
    depth_row = conn.execute(
        "select created_at, id from public.credit_transactions where user_id = %s "
        "order by created_at desc, id desc offset 100000 limit 1",
        (deep_user,),
    ).fetchone()
    out["history_first"] = time_reads(conn, deep_user, HISTORY, (None, None), repeat)
    if depth_row:
        out["history_deep"] = time_reads(conn, deep_user, HISTORY, (depth_row[0], depth_row[1]), repeat)
    return out


# ---------------------------------------------------------------------------------------------
# pgbench yardstick
# ---------------------------------------------------------------------------------------------


@contextmanager
def pgbench_database(db_url: str, scale: int) -> Iterator[str]:
    """A scratch database on the same server, initialised for pgbench's tpcb-like."""
    database = f"mycelium_pgbench_{os.getpid()}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'create database "{database}"')
    try:
        base, env = pgbench_args(db_url)
        subprocess.run(
            [str(PGBENCH), "-i", "-q", "-s", str(scale), *base, database],
            check=True,
            env=env,
            capture_output=True,
        )
        yield database
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{database}" with (force)')


def tpcb_rate(db_url: str, database: str, seconds: float) -> float:
    return run_pgbench(
        db_url, database, ["-c", str(WORKERS), "-j", str(WORKERS), "-T", str(int(seconds)), "-b", "tpcb-like"]
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def verdict(value: float | None, target: float, below: bool = False) -> str:
    if value is None:
        return "n/a"
    good = value < target if below else value >= target
    return "ok" if good else "MISSED"


def measure(target: Target, args: argparse.Namespace) -> int:
    seconds = args.seconds
    results: dict[str, float | None] = {}
    admin_url = target.superuser_db_url or target.db_url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        print(f"setup: {args.accounts} accounts, funded through purchase_credits", flush=True)
        users = create_users(conn, args.accounts)
        deep_user = users[0]
        fund(conn, users, "1000000")
        print("reads with ~1,000 ledger rows", flush=True)
        small = read_latencies(conn, users[1], deep_user, args.repeat)

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("drop schema if exists mycelium_bench cascade")
        conn.execute("create schema mycelium_bench")
        conn.execute("create table mycelium_bench.users (n integer primary key, id uuid not null)")
        with conn.cursor() as cur:
            cur.executemany(
                "insert into mycelium_bench.users values (%s, %s)",
                [(n, u) for n, u in enumerate(users, start=1)],
            )
        conn.execute("grant usage on schema mycelium_bench to postgres")
        conn.execute("grant select on mycelium_bench.users to postgres")

    # Rounds interleave the yardstick and the measures, and each keeps its best round: on a
    # shared machine a burst of outside load then hurts one round, not one side of a ratio.
    samples: dict[str, list[float]] = {"tpcb": [], "sql_transfer": [], "sql_purchase": [], "sql_hot": []}
    with pgbench_database(admin_url, args.pgbench_scale) as yardstick:
        for round_number in range(1, args.rounds + 1):
            print(
                f"round {round_number}/{args.rounds} ({WORKERS} clients, {seconds:.0f}s each): "
                "pgbench tpcb-like, direct SQL transfers (spread), purchases, transfers into one account",
                flush=True,
            )
            samples["tpcb"].append(tpcb_rate(admin_url, yardstick, seconds))
            samples["sql_transfer"].append(sql_rate(target.db_url, "transfer", len(users), seconds))
            samples["sql_purchase"].append(sql_rate(target.db_url, "purchase", len(users), seconds))
            samples["sql_hot"].append(sql_rate(target.db_url, "hot", len(users), seconds))
    for name, values in samples.items():
        results[name] = max(values)
        print(f"    {name}: " + ", ".join(f"{v:,.0f}" for v in values), flush=True)

    if target.api_url and target.jwt_secret:
        from cli.keys import access_token

        tokens = [(u, access_token(target.jwt_secret, uuid.UUID(u), email=None)) for u in users]
        for kind in ("transfer", "purchase"):
            print(f"PostgREST: {kind}s, best of {args.rounds}", flush=True)
            results[f"http_{kind}"] = max(
                run_parallel(
                    http_worker, [(kind, target, tokens, seconds, i) for i in range(WORKERS)], seconds
                )
                for _ in range(args.rounds)
            )
        if target.postgrest_url:
            print("PostgREST without the gateway: transfers", flush=True)
            results["direct_transfer"] = run_parallel(
                http_worker, [("transfer", target, tokens, seconds, i, True) for i in range(WORKERS)], seconds
            )
    else:
        results["http_transfer"] = results["http_purchase"] = None

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

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    tpcb = results["tpcb"]
    rows = [
        ("pgbench tpcb-like (tps)", tpcb, None, None, False),
        (
            "direct SQL transfers, 1,000 accounts",
            results["sql_transfer"],
            ratio(results["sql_transfer"], tpcb),
            0.8,
            False,
        ),
        (
            "direct SQL purchases",
            results["sql_purchase"],
            ratio(results["sql_purchase"], results["sql_transfer"]),
            0.8,
            False,
        ),
        (
            "direct SQL transfers into one account",
            results["sql_hot"],
            ratio(results["sql_hot"], results["sql_transfer"]),
            0.6,
            False,
        ),
        (
            "PostgREST transfers",
            results["http_transfer"],
            ratio(results["http_transfer"], results["sql_transfer"]),
            0.5,
            False,
        ),
        (
            "  (PostgREST transfers, no gateway)",
            results.get("direct_transfer"),
            ratio(results.get("direct_transfer"), results["sql_transfer"]),
            None,
            False,
        ),
        (
            "PostgREST purchases",
            results["http_purchase"],
            ratio(results["http_purchase"], results["sql_purchase"]),
            0.5,
            False,
        ),
    ]
    print()
    print(f"{'measure':44} {'per second':>12} {'ratio':>8} {'target':>8}  verdict")
    missed = 0
    for name, value, rate, goal, below in rows:
        shown = "n/a" if value is None else f"{value:,.0f}"
        ratio_text = "" if rate is None else f"{rate:.2f}"
        goal_text = "" if goal is None else (f"< {goal}" if below else f">= {goal}")
        mark = "" if goal is None else verdict(rate, goal, below)
        missed += mark == "MISSED"
        print(f"{name:44} {shown:>12} {ratio_text:>8} {goal_text:>8}  {mark}")
    print()
    print(f"{'read latency (median)':44} {'small':>12} {'large':>12} {'ratio':>8} {'target':>8}  verdict")
    balance_ratio = ratio(big["balance"], small["balance"])
    label = f"balance, ledger rows {int(small['rows']):,} -> {int(big['rows']):,}"
    print(
        f"{label:44} {small['balance'] * 1e3:>10.3f}ms {big['balance'] * 1e3:>10.3f}ms "
        f"{balance_ratio or 0:>8.2f} {'< 1.2':>8}  {verdict(balance_ratio, 1.2, below=True)}"
    )
    missed += verdict(balance_ratio, 1.2, below=True) == "MISSED"
    deep = big.get("history_deep")
    history_ratio = ratio(deep, big["history_first"])
    print(
        f"{'history page: first -> depth 100,000':44} {big['history_first'] * 1e3:>10.3f}ms "
        f"{(deep or 0) * 1e3:>10.3f}ms {history_ratio or 0:>8.2f} {'< 1.5':>8}  "
        f"{verdict(history_ratio, 1.5, below=True)}"
    )
    missed += verdict(history_ratio, 1.5, below=True) == "MISSED"
    if problems is not None:
        print(f"\naudit_ledger(): {problems[0]} problems")
        missed += bool(problems[0])
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db-url", help="an existing database (role postgres); default: a fresh local stack")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per throughput measure (best is kept)")
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
    args = parser.parse_args()

    if args.db_url:
        return measure(Target(db_url=args.db_url), args)

    from cli.dev.processes import free_port_base
    from cli.dev.stack import LocalStack

    folder = Path(tempfile.mkdtemp(prefix="mycelium-bench-"))
    folder.chmod(0o755)
    stack = LocalStack(folder / "stack")
    print("bringing up a local stack", flush=True)
    stack.up(port_base=free_port_base(start=47000))
    try:
        target = Target(
            db_url=stack.db_url,
            superuser_db_url=stack.superuser_db_url,
            api_url=stack.api_url,
            anon_key=stack.anon_key,
            service_role_key=stack.service_role_key,
            jwt_secret=stack.jwt_secret,
            postgrest_url=f"http://127.0.0.1:{stack.postgrest.port}",
        )
        return measure(target, args)
    finally:
        stack.destroy()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
