"""Flood benchmark (issue 18): does a flood from other clients leave a signed-in user's balance read
fast? Measured in one run, on a local stack of its own with a catalogue of 10,000 products.

A victim reads its balance through the gateway 40 times a second (a dashboard's pace, under its
own rate limit), while nothing else runs and while two clients flood the gateway (wrk, loopback
only, each connection pacing itself to 100 requests a second, for a few seconds at a time):

  anon       `GET /rest/v1/products?or=(...)` with the anon key, from 32 connections;
  attacker   a signed-in user's cheap read (its own balance), from 32 connections.

Three floods, each beside the attacker: the issue's query (300 `ilike` terms, which held a database
connection for the whole anon statement timeout), the longest `or=` of such terms within the
anonymous query allowance (`Limits.anon_query_bytes`; about 95 terms, which the gateway now refuses
as `filter_too_complex`), and the costliest filter it still lets an anonymous caller send: as many
`ilike` terms as `Limits.anon_pattern_terms` allows, sharing the wildcards anon may send
(`Limits.anon_wildcards`), their patterns filling what such a query may hold
(`Limits.anon_pattern_query_bytes`). Idle and flood windows alternate, several rounds, each
round in the reverse order of the one before, so that the machine's own noise falls on all of
them alike. Target: the victim's p99 under a flood / its p99 idle < 3.

    ./run bench flood [--rounds 3] [--seconds 4] [--products 10000]
"""

from __future__ import annotations

import argparse
import random
import string
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from bench._catalogue import add_products
from bench._load import lua_locals, wrk_command
from bench._percentiles import PercentileRow, Percentiles
from bench._results import run_benchmark
from bench._stack import fresh_stack
from bench._users import create_users, fund
from bench._verdicts import verdict
from cli.dev.gateway import Limits
from cli.dev.stack import LocalStack
from cli.keys import access_token

TARGET = 3.0
IDLE = "idle"
ISSUE_QUERY = "anon: the issue's or= (300 ilike terms)"
ALLOWANCE_QUERY = "anon: the longest or= of ilike terms"
COSTLIEST_QUERY = "anon: the costliest filter allowed anon"
VICTIM_READS_PER_SECOND = 40
FLOOD_CONNECTIONS = 32
FLOOD_PACE_MS = 10
PROVIDERS = 20
ISSUE_TERMS = 300


@dataclass(frozen=True)
class FloodRow:
    """The victim's reads during one kind of flood against its reads while idle, and what the
    flooders were answered (by status class)."""

    flood: str
    idle: Percentiles
    under_flood: Percentiles | None
    flooders: dict[str, int]

    @property
    def percentiles(self) -> PercentileRow:
        skipped = None if self.under_flood else "no read was timed under this flood"
        return PercentileRow(self.flood, self.under_flood, self.idle, skipped)

    @property
    def flood_vs_idle_p99(self) -> float | None:
        return self.percentiles.ratios()[1]

    @property
    def verdict(self) -> str:
        return verdict(self.flood_vs_idle_p99, TARGET, below=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.percentiles.as_dict(),
            "idle_p50_ms": self.idle.p50 * 1e3,
            "idle_p99_ms": self.idle.p99 * 1e3,
            "flood_vs_idle_p99": self.flood_vs_idle_p99,
            "target_below": TARGET,
            "verdict": self.verdict,
            "flooders": self.flooders,
        }


def print_rows(rows: list[FloodRow]) -> int:
    """The table of floods; returns how many missed the target."""
    print(
        f"{'flood (beside a signed-in attacker)':42} {'idle p50/p99':>16} {'flood p50/p99':>16} "
        f"{'p99 ratio':>9} {'target':>7}  verdict"
    )
    for row in rows:
        flood = "n/a" if row.under_flood is None else _ms(row.under_flood)
        ratio = row.flood_vs_idle_p99
        shown = "n/a" if ratio is None else f"{ratio:.2f}"
        print(
            f"{row.flood:42} {_ms(row.idle):>16} {flood:>16} {shown:>9} {f'< {TARGET:g}':>7}  {row.verdict}"
        )
        print(f"{'':42} flooders got: " + ", ".join(f"{k} {v:,}" for k, v in sorted(row.flooders.items())))
    return sum(row.verdict == "MISSED" for row in rows)


def _ms(latency: Percentiles) -> str:
    return f"{latency.p50 * 1e3:.1f}/{latency.p99 * 1e3:.1f} ms"


# ---------------------------------------------------------------------------------------------
# The flooders: wrk, each connection pacing itself, counting what it is answered
# ---------------------------------------------------------------------------------------------

# After bench/_load.py's prelude: each thread counts its answers by status class; done() adds the
# threads' counts up and prints them.
FLOOD_SCRIPT = """
wrk.headers["apikey"] = APIKEY
wrk.headers["Authorization"] = "Bearer " .. TOKEN
local sent = 0
ok, rate_limited, refused, failed = 0, 0, 0, 0
function request()
  sent = sent + 1
  return wrk.format("GET", PATHS[(sent % #PATHS) + 1])
end
function delay()
  return PACE_MS
end
function response(status)
  if status < 300 then ok = ok + 1
  elseif status == 429 then rate_limited = rate_limited + 1
  elseif status < 500 then refused = refused + 1
  else failed = failed + 1 end
end
function done()
  local totals = {ok = 0, rate_limited = 0, refused = 0, failed = 0}
  for _, thread in ipairs(threads) do
    for name in pairs(totals) do totals[name] = totals[name] + thread:get(name) end
  end
  for name, count in pairs(totals) do print("answered " .. name .. ": " .. count) end
end
"""


def flood_script(apikey: str, token: str, paths: list[str]) -> str:
    return (
        lua_locals(APIKEY=apikey, TOKEN=token, PATHS=paths)
        + f"local PACE_MS = {FLOOD_PACE_MS}\n"
        + FLOOD_SCRIPT
    )


@contextmanager
def flooding(url: str, scripts: list[str], seconds: float) -> Iterator[Counter[str]]:
    """Every script run by wrk for `seconds` (and a little more, to cover the window); yields the
    flooders' answers, counted once they have all stopped."""
    answered: Counter[str] = Counter()
    with ExitStack() as stack:
        floods = []
        for script in scripts:
            command = stack.enter_context(
                wrk_command(url, script, seconds + 1, connections=FLOOD_CONNECTIONS, threads=1)
            )
            floods.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        try:
            time.sleep(0.5)  # every connection open and sending
            yield answered
        finally:
            for flood in floods:
                out, _ = flood.communicate(timeout=seconds + 30)
                for line in out.splitlines():
                    if line.startswith("answered "):
                        name, count = line.removeprefix("answered ").split(": ")
                        answered[name] += int(count)


def or_query(terms: int) -> str:
    """`select=id&or=(...)` of `terms` ilike terms on the product's name, each a random word."""
    words = ("".join(random.choices(string.ascii_lowercase, k=6)) for _ in range(terms))
    return "select=id&or=(" + ",".join(f"name.ilike.*{word}*" for word in words) + ")"


def longest_allowed_or(limit: int) -> str:
    terms = 1
    while len(or_query(terms + 1)) <= limit:
        terms += 1
    return or_query(terms)


def costliest_allowed_filter(limits: Limits) -> str:
    """As many ilike terms on the product's name as `limits.anon_pattern_terms` allows, sharing
    the wildcards anon may send between letters (`*u*e*`), their patterns growing together up to
    what an anonymous query holding patterns may hold."""
    per_pattern = limits.anon_wildcards // limits.anon_pattern_terms

    def query(letters: int) -> str:
        pattern = "*" + "*".join(["u" * letters] * (per_pattern - 1)) + "*"
        return "select=id&or=(" + ",".join([f"name.ilike.{pattern}"] * limits.anon_pattern_terms) + ")"

    letters = 1
    while len(query(letters + 1)) <= limits.anon_pattern_query_bytes:
        letters += 1
    return query(letters)


# ---------------------------------------------------------------------------------------------
# The victim
# ---------------------------------------------------------------------------------------------


class Victim:
    """A signed-in user reading its balance through the gateway at a steady pace."""

    def __init__(self, stack: LocalStack, token: str) -> None:
        self.http = httpx.Client(
            base_url=f"{stack.api_url}/rest/v1",
            headers={"apikey": stack.anon_key, "Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def read(self) -> float:
        started = time.perf_counter()
        response = self.http.get("/credit_accounts", params={"select": "balance,held"})
        response.raise_for_status()
        return time.perf_counter() - started

    def reads_for(self, seconds: float) -> list[float]:
        """Seconds per read, one read every 1/VICTIM_READS_PER_SECOND s for `seconds`."""
        timings = []
        due = time.perf_counter()
        end = due + seconds
        while due < end:
            time.sleep(max(0.0, due - time.perf_counter()))
            timings.append(self.read())
            due += 1 / VICTIM_READS_PER_SECOND
        return timings

    def close(self) -> None:
        self.http.close()


def settle(conn: psycopg.Connection[Any]) -> None:
    """Wait (5 s at most) for the queries a flood left running to end: the next window must not
    pay for them."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = conn.execute(
            "select count(*) from pg_stat_activity"
            " where usename = 'authenticator' and state = 'active' and pid <> pg_backend_pid()"
        ).fetchone()
        if row == (0,):
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of idle and flood windows")
    parser.add_argument("--seconds", type=float, default=4, help="length of one window")
    parser.add_argument("--products", type=int, default=10_000, help="the catalogue's size")
    run_benchmark(parser, measure)


def setup(conn: psycopg.Connection[Any], stack: LocalStack, products: int) -> tuple[str, str]:
    """The catalogue, and the access tokens of a funded victim and of an attacker."""
    print(f"setup: {products:,} products, a victim and an attacker", flush=True)
    providers = create_users(conn, PROVIDERS)
    conn.execute(
        "insert into public.user_roles (user_id, role) select unnest(%s::uuid[]), 'farmer'", (providers,)
    )
    add_products(conn, providers, products)
    victim, attacker = create_users(conn, 2)
    fund(conn, [victim], "100")
    return access_token(stack.jwt_secret, victim), access_token(stack.jwt_secret, attacker)


def windows(
    stack: LocalStack, conn: psycopg.Connection[Any], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, Counter[str]]]:
    """The victim's read times in every window kind, and what each flood's flooders were answered."""
    victim_token, attacker_token = setup(conn, stack, args.products)
    attacker = flood_script(stack.anon_key, attacker_token, ["/rest/v1/credit_accounts?select=balance"])
    anon = {
        ISSUE_QUERY: or_query(ISSUE_TERMS),
        ALLOWANCE_QUERY: longest_allowed_or(stack.settings.limits.anon_query_bytes),
        COSTLIEST_QUERY: costliest_allowed_filter(stack.settings.limits),
    }
    kinds = [IDLE, *anon]
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    answered: dict[str, Counter[str]] = {kind: Counter() for kind in anon}
    victim = Victim(stack, victim_token)
    try:
        victim.reads_for(1)  # warm-up: connections, caches
        print(f"{args.rounds} rounds of {args.seconds:g}s windows: " + ", ".join(kinds), flush=True)
        for round_number in range(args.rounds):
            for kind in kinds if round_number % 2 == 0 else kinds[::-1]:
                if kind == IDLE:
                    samples[kind] += victim.reads_for(args.seconds)
                    continue
                flooder = flood_script(stack.anon_key, stack.anon_key, [f"/rest/v1/products?{anon[kind]}"])
                with flooding(stack.api_url, [flooder, attacker], args.seconds) as got:
                    samples[kind] += victim.reads_for(args.seconds)
                answered[kind] += got
                settle(conn)
            print(f"    round {round_number + 1} done", flush=True)
    finally:
        victim.close()
    return samples, answered


def measure(args: argparse.Namespace, results: dict[str, Any]) -> None:
    print("bringing up a local stack", flush=True)
    with (
        fresh_stack(start_port=45500) as stack,
        psycopg.connect(stack.superuser_db_url, autocommit=True) as conn,
    ):
        allowance = stack.settings.limits.anon_query_bytes
        samples, answered = windows(stack, conn, args)

    idle = Percentiles.of(samples[IDLE])
    rows = [
        FloodRow(kind, idle, Percentiles.of(samples[kind]) if samples[kind] else None, dict(answered[kind]))
        for kind in answered
    ]
    print(
        f"the victim: {VICTIM_READS_PER_SECOND} balance reads a second, {len(samples[IDLE])} idle; "
        f"anon query allowance: {allowance} bytes"
    )
    print_rows(rows)
    results["products"] = args.products
    results["anon_query_bytes"] = allowance
    results["floods"] = [row.as_dict() for row in rows]


if __name__ == "__main__":
    main()
