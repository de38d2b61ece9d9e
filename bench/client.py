"""The Python client's cost, measured in one run on a local stack of its own (or a running one):

1. overhead per call of `credits.balance()` and `credits.transfer()` over raw httpx calls of the
   same PostgREST requests (same connection pool, same headers, JSON read as Decimal too);
   target: under 15 %;
2. throughput of the async client with 32 concurrent transfers (32 distinct senders, so rows do
   not lock each other) versus the sync client doing the same transfers one after the other;
3. latency from COMMIT to the callback of `mycelium_client.feeds.BalanceFeed` (LISTEN/NOTIFY);
4. sign-in then the first balance read through the gateway (`auth.sign_in()`, a POST to
   `/auth/v1/token?grant_type=password`, then `credits.balance()`), p50 and p99, beside a plain
   balance read with a token the client already holds, and how many times that read each takes.
   It needs Supabase Auth behind the gateway's `/auth/v1/`. A local stack has none (the gateway
   answers 503): the benchmark then says the measure is skipped and why, and measures the rest.
   --stack-dir measures a running stack instead, one whose `auth_upstream` (in its stack.json)
   points at a Supabase Auth server that uses its database and JWT secret.

    ./run bench client [--calls 1000] [--transfers 640] [--commits 300] [--sign-ins 200]
    ./run bench client --stack-dir .mycelium    # writes bench users and credits into that stack
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

from bench._percentiles import PercentileRow, Percentiles
from bench._results import run_benchmark
from bench._stack import fresh_stack, running_stack
from cli.dev.stack import LocalStack
from cli.dev.users import create_user
from cli.keys import access_token
from mycelium_client import AsyncMyceliumClient, MyceliumClient
from mycelium_client.feeds import BalanceFeed

CONCURRENCY = 32
OVERHEAD_TARGET = 0.15


def users(
    conn: psycopg.Connection[tuple[object, ...]], secret: str, count: int, funded: int
) -> list[tuple[str, str]]:
    """`count` users holding `funded` credits each, as (id, access token)."""
    made = []
    for _ in range(count):
        user = create_user(conn, f"bench-{uuid.uuid4().hex[:12]}@example.test")
        if funded:
            conn.execute(
                "select public.purchase_credits(%s, %s, %s)", (user.id, funded, f"bench-{uuid.uuid4()}")
            )
        made.append((str(user.id), access_token(secret, user.id, email=user.email)))
    return made


def per_call(action: Callable[[], object], calls: int) -> list[float]:
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return timings


def interleaved(actions: dict[str, Callable[[], object]], calls: int, warm_up: int) -> dict[str, list[float]]:
    """Seconds per call of each action, `calls` each after `warm_up` unmeasured ones (they warm up
    both the paths and the server), in interleaved rounds: drift in the server hits them all alike."""
    for action in actions.values():
        per_call(action, warm_up)
    timings: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(10):
        for name, action in actions.items():
            timings[name] += per_call(action, calls // 10)
    return timings


def overhead(
    stack: LocalStack, conn: psycopg.Connection[tuple[object, ...]], calls: int
) -> list[tuple[str, float, float]]:
    (sender, token), (recipient, _) = users(conn, stack.jwt_secret, 2, funded=10**9)
    http = httpx.Client(timeout=30)
    client = MyceliumClient(stack.api_url, stack.anon_key, access_token=token, http_client=http)
    rest = f"{stack.api_url}/rest/v1"
    headers = {"apikey": stack.anon_key, "Authorization": f"Bearer {token}"}

    def raw_balance() -> object:
        response = http.get(
            f"{rest}/credit_accounts",
            params={"select": "user_id,balance,held,updated_at", "user_id": f"eq.{sender}"},
            headers={**headers, "Accept": "application/vnd.pgrst.object+json"},
        )
        response.raise_for_status()
        return json.loads(response.content, parse_float=Decimal)

    def raw_transfer() -> object:
        body = {"recipient": recipient, "amount": "0.01", "idempotency_key": f"raw-{uuid.uuid4()}"}
        response = http.post(
            f"{rest}/rpc/transfer_credits",
            content=json.dumps(body),
            headers={**headers, "Content-Type": "application/json", "Accept": "application/json"},
        )
        response.raise_for_status()
        return json.loads(response.content, parse_float=Decimal)

    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "balance()": (raw_balance, client.credits.balance),
        "transfer()": (raw_transfer, lambda: client.credits.transfer(recipient, "0.01")),
    }
    results = []
    for name, (raw, typed) in pairs.items():
        times = interleaved({"raw": raw, "client": typed}, calls, warm_up=50)
        results.append((name, statistics.median(times["raw"]), statistics.median(times["client"])))
    client.close()
    http.close()
    return results


def auth_unavailable(response: httpx.Response) -> str | None:
    """Why the gateway serves no Auth, quoting its 503, or None when it answered otherwise."""
    if response.status_code != 503:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return f'the gateway\'s /auth/v1/ answered 503: "{message or response.text.strip()}"'


PLAIN_READ = "balance(), token held"
SIGN_IN_READ = "sign_in(), then first balance()"


def sign_in_latency(
    stack: LocalStack, conn: psycopg.Connection[tuple[object, ...]], samples: int
) -> list[PercentileRow]:
    """The plain balance read and, where the gateway serves Auth, sign-in then the first balance
    read. The user who signs in is made through Auth's admin API, so that its password hash is
    Auth's own: checking it (bcrypt at Auth's cost) is most of what a sign-in costs."""
    [(_, token)] = users(conn, stack.jwt_secret, 1, funded=0)
    with (
        httpx.Client(timeout=30) as http,
        MyceliumClient(stack.api_url, stack.anon_key, http_client=http) as client,
    ):
        reads: dict[str, Callable[[], object]] = {PLAIN_READ: client.as_user(token).credits.balance}
        email, password = f"bench-{uuid.uuid4().hex[:12]}@example.test", secrets.token_urlsafe(18)
        created = http.post(
            f"{stack.api_url}/auth/v1/admin/users",
            json={"email": email, "password": password, "email_confirm": True},
            headers={"apikey": stack.service_role_key, "Authorization": f"Bearer {stack.service_role_key}"},
        )
        skipped = auth_unavailable(created)
        if skipped is None:
            created.raise_for_status()

            def sign_in_then_read() -> object:
                client.auth.sign_in(email, password)
                return client.credits.balance()

            reads[SIGN_IN_READ] = sign_in_then_read
        times = interleaved(reads, samples, warm_up=10)
    plain = Percentiles.of(times[PLAIN_READ])
    signed_in = None if skipped else Percentiles.of(times[SIGN_IN_READ])
    return [PercentileRow(PLAIN_READ, plain), PercentileRow(SIGN_IN_READ, signed_in, plain, skipped)]


def throughput(
    stack: LocalStack, conn: psycopg.Connection[tuple[object, ...]], transfers: int
) -> tuple[float, float]:
    senders = users(conn, stack.jwt_secret, CONCURRENCY, funded=10**6)
    recipients = [user for user, _ in users(conn, stack.jwt_secret, CONCURRENCY, funded=0)]
    rounds = transfers // CONCURRENCY

    with MyceliumClient(stack.api_url, stack.anon_key) as sync:
        acting = [sync.as_user(token) for _, token in senders]
        started = time.perf_counter()
        for _ in range(rounds):
            for client, recipient in zip(acting, recipients, strict=True):
                client.credits.transfer(recipient, "0.5")
        sync_rate = rounds * CONCURRENCY / (time.perf_counter() - started)

    async def concurrent() -> float:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with AsyncMyceliumClient(
            stack.api_url, stack.anon_key, http_client=httpx.AsyncClient(limits=limits)
        ) as client:
            acting = [client.as_user(token) for _, token in senders]

            async def lane(index: int) -> None:
                for _ in range(rounds):
                    await acting[index].credits.transfer(recipients[index], "0.5")

            started = time.perf_counter()
            await asyncio.gather(*(lane(index) for index in range(CONCURRENCY)))
            return rounds * CONCURRENCY / (time.perf_counter() - started)

    return sync_rate, asyncio.run(concurrent())


def feed_latency(
    stack: LocalStack, conn: psycopg.Connection[tuple[object, ...]], commits: int
) -> list[float]:
    [(user, _)] = users(conn, stack.jwt_secret, 1, funded=0)
    delivered: dict[Decimal, float] = {}
    feed = BalanceFeed(stack.db_url, user_ids=[user]).start()

    def read() -> None:
        for change in feed.changes(timeout=5):
            delivered[change.balance] = time.perf_counter()

    reader = threading.Thread(target=read)
    reader.start()
    committed: dict[Decimal, float] = {}
    with psycopg.connect(stack.db_url) as writer:
        for n in range(1, commits + 1):
            writer.execute("select public.grant_credits(%s, 1, 'bench')", (user,))
            committed[Decimal(n)] = time.perf_counter()  # just before COMMIT
            writer.commit()
            time.sleep(0.002)
    reader.join()
    feed.close()
    return [delivered[balance] - at for balance, at in committed.items() if balance in delivered]


def print_sign_in(console: Console, rows: list[PercentileRow]) -> None:
    """The measured rows as a table; a skipped one as a line of its own saying why."""
    table = Table(title="balance read through the gateway (per call)")
    for column in ("read", "p50", "p99", "p50 / plain read", "p99 / plain read"):
        table.add_column(column)
    for row in rows:
        if row.latency is not None:
            at_p50, at_p99 = row.ratios()
            table.add_row(
                row.name,
                f"{row.latency.p50 * 1000:.2f} ms",
                f"{row.latency.p99 * 1000:.2f} ms",
                "" if at_p50 is None else f"x{at_p50:.1f}",
                "" if at_p99 is None else f"x{at_p99:.1f}",
            )
    console.print(table)
    for row in rows:
        if row.skipped is not None:
            # One line, however narrow the terminal; the reason quotes a server's words, whose
            # brackets rich must not read as markup.
            console.print(f"{row.name}: skipped, {row.skipped}", markup=False, soft_wrap=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--transfers", type=int, default=640)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument(
        "--sign-ins",
        type=int,
        default=200,
        help="samples of sign-in then balance read, and of the plain read",
    )
    parser.add_argument(
        "--stack-dir",
        type=Path,
        help="a running local stack to measure (default: a fresh one of its own, removed afterwards)",
    )
    run_benchmark(parser, measure)


def measure(args: argparse.Namespace, results: dict[str, Any]) -> None:
    stack_of_run: AbstractContextManager[LocalStack] = (
        fresh_stack(start_port=44500)
        if args.stack_dir is None
        else nullcontext(running_stack(args.stack_dir))
    )
    console = Console()
    with stack_of_run as stack, psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
        calls = overhead(stack, conn, args.calls)
        sign_in = sign_in_latency(stack, conn, args.sign_ins)
        sync_rate, async_rate = throughput(stack, conn, args.transfers)
        latencies = sorted(feed_latency(stack, conn, args.commits))

    table = Table(title="mycelium_client overhead over raw httpx (median per call)")
    for column in ("call", "raw httpx", "client", "overhead", f"target < {OVERHEAD_TARGET:.0%}"):
        table.add_column(column)
    results["overhead"] = []
    for name, raw, typed in calls:
        ratio = typed / raw - 1
        mark = "ok" if ratio < OVERHEAD_TARGET else "MISSED"
        table.add_row(name, f"{raw * 1000:.2f} ms", f"{typed * 1000:.2f} ms", f"{ratio:+.1%}", mark)
        results["overhead"].append(
            {
                "call": name,
                "raw_ms": raw * 1000,
                "client_ms": typed * 1000,
                "overhead": ratio,
                "target_below": OVERHEAD_TARGET,
                "verdict": mark,
            }
        )
    console.print(table)
    print_sign_in(console, sign_in)
    results["sign_in"] = [row.as_dict() for row in sign_in]
    console.print(
        f"transfers/s: sync sequential {sync_rate:.0f}, async with {CONCURRENCY} concurrent {async_rate:.0f} "
        f"(x{async_rate / sync_rate:.1f})"
    )
    median, p95 = statistics.median(latencies), latencies[int(len(latencies) * 0.95)]
    results["transfers_per_second"] = {
        "sync": sync_rate,
        "async": async_rate,
        "async_concurrency": CONCURRENCY,
    }
    results["feed_latency_ms"] = {
        "commits": len(latencies),
        "median": median * 1000,
        "p95": p95 * 1000,
        "max": latencies[-1] * 1000,
    }
    console.print(
        f"feed latency, COMMIT to callback over {len(latencies)} commits: median {median * 1000:.2f} ms, "
        f"p95 {p95 * 1000:.2f} ms, max {latencies[-1] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
