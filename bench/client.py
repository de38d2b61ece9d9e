"""The Python client's cost, measured in one run on a local stack of its own:

1. overhead per call of `credits.balance()` and `credits.transfer()` over raw httpx calls of the
   same PostgREST requests (same connection pool, same headers, JSON read as Decimal too);
   target: under 15 %;
2. throughput of the async client with 32 concurrent transfers (32 distinct senders, so rows do
   not lock each other) versus the sync client doing the same transfers one after the other;
3. latency from COMMIT to the callback of `mycelium_client.feeds.BalanceFeed` (LISTEN/NOTIFY).

    ./run bench client [--calls 1000] [--transfers 640] [--commits 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
from _common import add_json_option, results_for_scripts
from rich.console import Console
from rich.table import Table

from cli.dev.processes import free_port_base
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
        per_call(raw, 50)  # warm up both paths and the server
        per_call(typed, 50)
        raw_times: list[float] = []
        typed_times: list[float] = []
        for _ in range(10):  # interleaved rounds: drift in the server hits both sides alike
            raw_times += per_call(raw, calls // 10)
            typed_times += per_call(typed, calls // 10)
        results.append((name, statistics.median(raw_times), statistics.median(typed_times)))
    client.close()
    http.close()
    return results


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--transfers", type=int, default=640)
    parser.add_argument("--commits", type=int, default=300)
    add_json_option(parser)
    args = parser.parse_args()
    with results_for_scripts(args.json) as results:
        measure(args, results)


def measure(args: argparse.Namespace, results: dict[str, Any]) -> None:

    folder = Path(tempfile.mkdtemp(prefix="mycelium-bench-client-"))
    folder.chmod(0o755)
    stack = LocalStack(folder / "stack")
    console = Console()
    try:
        stack.up(port_base=free_port_base(start=44500))
        with psycopg.connect(stack.superuser_db_url, autocommit=True) as conn:
            calls = overhead(stack, conn, args.calls)
            sync_rate, async_rate = throughput(stack, conn, args.transfers)
            latencies = sorted(feed_latency(stack, conn, args.commits))
    finally:
        stack.destroy()
        shutil.rmtree(folder, ignore_errors=True)

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
